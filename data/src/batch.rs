//! Batches of preprocessed images from an LMDB database.
//!
//! Records are selected by position in key order: first `skip` records are passed over, the
//! next `limit` (all if `None`) form the *window*, and with `sample = Some(n)` a seeded random
//! subset of `n` distinct positions of the window is taken (all of it if the window is not
//! larger). Selected records are always delivered in key order.
//!
//! One thread reads records sequentially from LMDB; decoding and preprocessing of a batch run
//! in parallel on the rayon pool. Only the current batch's records are held in memory.
//! [`Batches::prefetch`] moves the whole pipeline to a background thread so the next batch is
//! prepared while the caller works on the current one.
//!
//! Labels: integer labels are delivered in [`Batch::labels`]; FLOAT labels (Caffe2
//! `TensorProtos` with a FLOAT label tensor) are rounded to the nearest integer there, and the
//! batch additionally carries every label as `f32` in [`Batch::float_labels`].
//!
//! Bad records (malformed protobuf, unsupported record, undecodable image, preprocessing
//! failure): by default the first one, in key order, is returned as an error naming its key
//! and the iterator ends. With `skip_bad` they are skipped, recorded (see
//! [`Batches::skipped`]), and the batch is filled from the following records. Positions
//! count bad records too (`limit`, `skip` and sampling are about records, not good images).

use std::collections::HashSet;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rayon::prelude::*;

use crate::image::{Image, WindowFn};
use crate::lmdb::{Lmdb, Start};
use crate::preprocess::Preprocess;
use crate::record::{detect_format, parse_record, Label, RecordFormat};
use crate::{DataError, DataResult};

/// How to read batches from a database.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOptions {
    /// Images per batch (> 0). The last batch may be shorter.
    pub batch_size: usize,
    /// Size of the window of records after `skip` (all remaining if `None`).
    pub limit: Option<usize>,
    /// Records passed over at the start (in key order).
    pub skip: usize,
    /// Take a seeded random sample of this many distinct records of the window.
    pub sample: Option<usize>,
    /// Seed of the sample.
    pub seed: u64,
    /// Skip (and record) bad records instead of failing on the first one.
    pub skip_bad: bool,
    /// Record format; detected from the first records if `None`.
    pub format: Option<RecordFormat>,
    /// Preprocessing of each image.
    pub preprocess: Preprocess,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            batch_size: 1,
            limit: None,
            skip: 0,
            sample: None,
            seed: 0,
            skip_bad: false,
            format: None,
            preprocess: Preprocess::default(),
        }
    }
}

/// A batch of preprocessed images.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `n * image_len` floats, NCHW or NHWC per the preprocessing layout.
    pub images: Vec<f32>,
    /// Number of images.
    pub n: usize,
    /// Labels as integers (FLOAT labels rounded to nearest).
    pub labels: Vec<i64>,
    /// Every label as `f32`, present only when at least one record of the batch has a FLOAT
    /// label.
    pub float_labels: Option<Vec<f32>>,
    /// LMDB keys of the images (lossy UTF-8).
    pub keys: Vec<String>,
}

/// A record skipped in `skip_bad` mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Its LMDB key (lossy UTF-8).
    pub key: String,
    /// Why it was skipped.
    pub reason: String,
}

/// A deterministic 64-bit PRNG: SplitMix64 (Steele, Lea, Flood 2014). The state advances
/// by the golden-ratio increment `0x9E3779B97F4A7C15`; each output is the state passed
/// through the finalizer `z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27;
/// z *= 0x94D049BB133111EB; z ^= z >> 31`.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..bound` (`bound > 0`), without modulo bias (rejection of
    /// the top partial range). Returns 0 for `bound == 0`.
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        // Largest multiple of `bound` that fits: values at or above it are rejected.
        let zone = u64::MAX - (u64::MAX % bound);
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % bound;
            }
        }
    }
}

/// Picks `n` distinct indices of `0..m` uniformly with seed `seed` (Floyd's algorithm driven
/// by [`SplitMix64`]) and returns them sorted. All of `0..m` if `n >= m`.
pub fn sample_indices(n: usize, m: usize, seed: u64) -> Vec<usize> {
    if n >= m {
        return (0..m).collect();
    }
    let mut rng = SplitMix64::new(seed);
    let mut chosen: HashSet<usize> = HashSet::with_capacity(n);
    for j in (m - n)..m {
        let t = rng.below(j as u64 + 1) as usize;
        if !chosen.insert(t) {
            chosen.insert(j);
        }
    }
    let mut v: Vec<usize> = chosen.into_iter().collect();
    v.sort_unstable();
    v
}

/// Detects the record format of a database from its first records: the first of the first
/// 16 records whose wire structure is recognised decides. An empty database is reported as
/// `Datum`. If none of them is recognised, the first one's error is returned.
pub fn detect_db_format(db: &Lmdb) -> DataResult<RecordFormat> {
    // A vote over the first 16 records, so that one odd record (say a TensorProtos among
    // Datums) does not decide the format of the whole database.
    let mut votes: Vec<(RecordFormat, usize)> = Vec::new();
    let mut first_err: Option<DataError> = None;
    let mut seen = 0usize;
    db.scan(Start::First, |k, v| {
        seen += 1;
        match detect_format(v, &String::from_utf8_lossy(k)) {
            Ok(f) => match votes.iter_mut().find(|(g, _)| *g == f) {
                Some((_, n)) => *n += 1,
                None => votes.push((f, 1)),
            },
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
        Ok(seen < 16)
    })?;
    // Most votes; a tie goes to the format seen first.
    let best = votes
        .iter()
        .enumerate()
        .max_by(|(i, (_, a)), (j, (_, b))| a.cmp(b).then(j.cmp(i)))
        .map(|(_, (f, _))| *f);
    match (best, first_err) {
        (Some(f), _) => Ok(f),
        (None, Some(e)) => Err(e),
        (None, None) => Ok(RecordFormat::Datum),
    }
}

/// Which record positions are selected.
#[derive(Debug, Clone)]
enum Plan {
    /// Every position in `start..end`.
    Window { start: usize, end: usize },
    /// The given sorted absolute positions; `next` indexes the next one to deliver.
    Sample { positions: Vec<usize>, next: usize },
}

/// Sequential reader of the selected raw records, in key order.
#[derive(Debug)]
pub struct Selection {
    db: Lmdb,
    plan: Plan,
    /// Last key scanned (resume after it), `None` before the first scan.
    pos: Option<Vec<u8>>,
    /// Position (index in key order) of the next record to scan.
    index: usize,
    /// Number of positions selected in total.
    planned: usize,
    exhausted: bool,
}

impl Selection {
    /// Plans the selection of `skip` / `limit` / `sample` / `seed` (see the module docs).
    pub fn new(
        db: Lmdb,
        skip: usize,
        limit: Option<usize>,
        sample: Option<usize>,
        seed: u64,
    ) -> DataResult<Selection> {
        let count = db.len()?;
        let start = skip.min(count);
        let end = match limit {
            Some(l) => start.saturating_add(l).min(count),
            None => count,
        };
        let plan = match sample {
            Some(n) if n < end - start => Plan::Sample {
                positions: sample_indices(n, end - start, seed)
                    .into_iter()
                    .map(|i| i + start)
                    .collect(),
                next: 0,
            },
            _ => Plan::Window { start, end },
        };
        let planned = match &plan {
            Plan::Window { start, end } => end - start,
            Plan::Sample { positions, .. } => positions.len(),
        };
        Ok(Selection {
            db,
            plan,
            pos: None,
            index: 0,
            planned,
            exhausted: planned == 0,
        })
    }

    /// Total number of records selected.
    pub fn planned(&self) -> usize {
        self.planned
    }

    /// Reads up to `n` further selected records as `(key, value)`; fewer (possibly none)
    /// at the end. Records are copied out of the database.
    pub fn next_records(&mut self, n: usize) -> DataResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if self.exhausted || n == 0 {
            return Ok(out);
        }
        let start = match &self.pos {
            None => Start::First,
            Some(k) => Start::After(k),
        };
        let mut last: Option<Vec<u8>> = None;
        let mut index = self.index;
        let plan = &mut self.plan;
        let mut finished = false;
        self.db.scan(start, |k, v| {
            let i = index;
            index += 1;
            let (selected, past_end) = match plan {
                Plan::Window { start, end } => (i >= *start && i < *end, i + 1 >= *end),
                Plan::Sample { positions, next } => {
                    let sel = positions.get(*next) == Some(&i);
                    if sel {
                        *next += 1;
                    }
                    (sel, *next >= positions.len())
                }
            };
            if selected {
                out.push((k.to_vec(), v.to_vec()));
            }
            if past_end {
                finished = true;
                return Ok(false);
            }
            if out.len() >= n {
                last = Some(k.to_vec());
                return Ok(false);
            }
            Ok(true)
        })?;
        if finished || last.is_none() {
            // Either the plan is complete or the database ended.
            self.exhausted = true;
        }
        self.pos = last;
        self.index = index;
        Ok(out)
    }
}

/// A conversion of one decoded BGR image into its floats (`image_len` of them).
pub type Converter = dyn Fn(&Image, &mut [f32]) -> DataResult<()> + Send + Sync;

/// An iterator of batches (see the module docs). `Send`, so it can be moved to a thread.
pub struct Batches {
    sel: Selection,
    format: RecordFormat,
    batch_size: usize,
    skip_bad: bool,
    image_len: usize,
    convert: Arc<Converter>,
    /// Where the conversion reads (only for the built-in preprocessing).
    window: Option<Arc<WindowFn<'static>>>,
    skipped: Arc<Mutex<Vec<Skipped>>>,
    done: bool,
}

impl std::fmt::Debug for Batches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batches")
            .field("sel", &self.sel)
            .field("format", &self.format)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

fn lock_log(m: &Mutex<Vec<Skipped>>) -> std::sync::MutexGuard<'_, Vec<Skipped>> {
    // Entries are only pushed; a poisoned lock still holds a consistent list.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Batches {
    /// Opens the database at `path` and plans the batches.
    pub fn open(path: impl AsRef<Path>, opts: BatchOptions) -> DataResult<Batches> {
        Batches::new(Lmdb::open(path)?, opts)
    }

    /// Plans batches over an open database, preprocessing with `opts.preprocess`.
    pub fn new(db: Lmdb, opts: BatchOptions) -> DataResult<Batches> {
        opts.preprocess.validate()?;
        let pre = opts.preprocess.clone();
        let len = pre.image_len();
        let win = pre.clone();
        let mut b = Batches::with_converter(
            db,
            &opts,
            len,
            Arc::new(move |img: &Image, out: &mut [f32]| pre.apply(img, out)),
        )?;
        b.window = Some(Arc::new(move |h, w| win.source_window(h, w)));
        Ok(b)
    }

    /// Like [`Batches::new`] but with a custom conversion of each decoded BGR image into
    /// `image_len` floats (`opts.preprocess` is ignored).
    pub fn with_converter(
        db: Lmdb,
        opts: &BatchOptions,
        image_len: usize,
        convert: Arc<Converter>,
    ) -> DataResult<Batches> {
        if opts.batch_size == 0 {
            return Err(DataError::Config("batch size must be positive".into()));
        }
        // The batch buffer is allocated from these two numbers: check them first.
        ops::limits::check_tensor(
            "a batch of preprocessed images (--batch x image floats, e.g. 3 x crop x crop)",
            &[opts.batch_size, image_len],
            4,
        )
        .map_err(|e| DataError::Config(e.to_string()))?;
        let format = match opts.format {
            Some(f) => f,
            None => detect_db_format(&db)?,
        };
        let sel = Selection::new(db, opts.skip, opts.limit, opts.sample, opts.seed)?;
        Ok(Batches {
            sel,
            format,
            batch_size: opts.batch_size,
            skip_bad: opts.skip_bad,
            image_len,
            convert,
            window: None,
            skipped: Arc::new(Mutex::new(Vec::new())),
            done: false,
        })
    }

    /// The record format in use (given or detected).
    pub fn format(&self) -> RecordFormat {
        self.format
    }

    /// Number of records selected (good and bad), e.g. for a progress bar.
    pub fn planned(&self) -> usize {
        self.sel.planned()
    }

    /// Floats per image.
    pub fn image_len(&self) -> usize {
        self.image_len
    }

    /// Records skipped so far in `skip_bad` mode, with reasons, in key order.
    pub fn skipped(&self) -> Vec<Skipped> {
        lock_log(&self.skipped).clone()
    }

    /// Runs the iterator on a background thread that keeps up to `depth` (at least 1)
    /// finished batches ready.
    pub fn prefetch(self, depth: usize) -> DataResult<Prefetch> {
        self.prefetch_with(depth, DecodePriority::Normal)
    }

    /// [`Batches::prefetch`] with the decode thread at `priority`.
    pub fn prefetch_with(self, depth: usize, priority: DecodePriority) -> DataResult<Prefetch> {
        let (tx, rx) = sync_channel(depth.max(1));
        let skipped = Arc::clone(&self.skipped);
        let planned = self.planned();
        let format = self.format;
        let image_len = self.image_len;
        let path = self.sel.db.path().to_path_buf();
        let handle = std::thread::Builder::new()
            .name("c2q-batches".into())
            .spawn(move || {
                // Decode on this one thread (its own 1-thread pool), not on the global pool:
                // the consumer (inference) keeps the other cores, and its parallel ops are not
                // slowed down by decode work interleaved on their threads.
                let run = || {
                    // On the thread that decodes (the pool's worker).
                    if priority == DecodePriority::Idle {
                        lower_to_idle_priority();
                    }
                    for item in self {
                        if tx.send(item).is_err() {
                            break;
                        }
                    }
                };
                match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
                    Ok(pool) => pool.install(run),
                    Err(_) => run(),
                }
            })
            .map_err(|e| DataError::Lmdb {
                path,
                msg: format!("cannot start the prefetch thread: {e}"),
            })?;
        Ok(Prefetch {
            rx: Some(rx),
            handle: Some(handle),
            skipped,
            planned,
            format,
            image_len,
        })
    }

    /// Parses, decodes and converts `raws` into `images[start..]`; returns per-record label
    /// or error, in order.
    fn convert_all(
        &self,
        raws: &[(Vec<u8>, Vec<u8>)],
        out: &mut [f32],
    ) -> Vec<(String, DataResult<Label>)> {
        let format = self.format;
        let convert = &*self.convert;
        let window = self.window.as_deref();
        let len = self.image_len;
        let work = |(k, v): &(Vec<u8>, Vec<u8>), slot: &mut [f32]| {
            let key = String::from_utf8_lossy(k).into_owned();
            let res = convert_one(&key, v, format, convert, window, slot);
            (key, res)
        };
        if len == 0 {
            // Zero-sized images: nothing to write, but records still need checking.
            return raws.par_iter().map(|r| work(r, &mut [])).collect();
        }
        out.par_chunks_mut(len)
            .zip(raws.par_iter())
            .map(|(slot, r)| work(r, slot))
            .collect()
    }
}

fn convert_one(
    key: &str,
    value: &[u8],
    format: RecordFormat,
    convert: &Converter,
    window: Option<&WindowFn<'_>>,
    out: &mut [f32],
) -> DataResult<Label> {
    let rec = parse_record(value, format, key)?;
    let label = rec.label;
    let img = match window {
        Some(w) => rec.into_image_window(key, w)?,
        None => rec.into_image(key)?,
    };
    convert(&img, out).map_err(|e| match e {
        e @ (DataError::Record { .. } | DataError::Decode { .. }) => e,
        other => DataError::Decode {
            key: key.to_string(),
            msg: format!("preprocessing failed: {other}"),
        },
    })?;
    Ok(label)
}

impl Iterator for Batches {
    type Item = DataResult<Batch>;

    fn next(&mut self) -> Option<DataResult<Batch>> {
        if self.done {
            return None;
        }
        let len = self.image_len;
        let mut images: Vec<f32> = Vec::new();
        let mut labels: Vec<Label> = Vec::new();
        let mut keys: Vec<String> = Vec::new();
        while keys.len() < self.batch_size {
            let need = self.batch_size - keys.len();
            let raws = match self.sel.next_records(need) {
                Ok(r) => r,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            if raws.is_empty() {
                break;
            }
            let start = images.len();
            images.resize(start + raws.len() * len, 0.0);
            let results = self.convert_all(&raws, &mut images[start..]);
            let mut good = 0usize;
            for (i, (key, res)) in results.into_iter().enumerate() {
                match res {
                    Ok(label) => {
                        if good != i && len > 0 {
                            let from = start + i * len;
                            images.copy_within(from..from + len, start + good * len);
                        }
                        good += 1;
                        labels.push(label);
                        keys.push(key);
                    }
                    Err(e) if self.skip_bad => lock_log(&self.skipped).push(Skipped {
                        key,
                        reason: e.to_string(),
                    }),
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
            images.truncate(start + good * len);
        }
        if keys.is_empty() {
            self.done = true;
            return None;
        }
        let float_labels = labels
            .iter()
            .any(|l| matches!(l, Label::Float(_)))
            .then(|| labels.iter().map(|l| l.as_f32()).collect());
        Some(Ok(Batch {
            images,
            n: keys.len(),
            labels: labels.iter().map(|l| l.as_i64()).collect(),
            float_labels,
            keys,
        }))
    }
}

/// How a prefetch thread competes for the CPU with the threads that consume its batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecodePriority {
    /// Like any other thread: right when a core is left free for decoding.
    #[default]
    Normal,
    /// Only on CPU time no other thread wants (Linux `SCHED_IDLE`; elsewhere `Normal`).
    /// When the consumer runs on every core, decoding then fills the moments its threads
    /// wait (the end of a parallel part, joins, top-k) instead of preempting them; when
    /// the consumer waits for a batch, its cores are idle and decoding runs at full speed.
    Idle,
}

/// Puts the calling thread in Linux's `SCHED_IDLE` class (no effect elsewhere). Failure
/// leaves the thread at normal priority, which is still correct, only less polite.
fn lower_to_idle_priority() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: FFI call on the calling thread (pid 0) with a valid, initialised
        // `sched_param` that outlives the call; SCHED_IDLE requires priority 0.
        let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    }
}

/// True if the calling thread runs in Linux's `SCHED_IDLE` class (tests).
#[doc(hidden)]
pub fn current_thread_is_idle_priority() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: FFI call without pointers, on the calling thread (pid 0).
        unsafe { libc::sched_getscheduler(0) == libc::SCHED_IDLE }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Batches produced on a background thread (see [`Batches::prefetch`]).
#[derive(Debug)]
pub struct Prefetch {
    rx: Option<Receiver<DataResult<Batch>>>,
    handle: Option<JoinHandle<()>>,
    skipped: Arc<Mutex<Vec<Skipped>>>,
    planned: usize,
    format: RecordFormat,
    image_len: usize,
}

impl Prefetch {
    /// Records skipped so far in `skip_bad` mode (complete once the iterator has ended).
    pub fn skipped(&self) -> Vec<Skipped> {
        lock_log(&self.skipped).clone()
    }

    /// Number of records selected (good and bad).
    pub fn planned(&self) -> usize {
        self.planned
    }

    /// The record format in use.
    pub fn format(&self) -> RecordFormat {
        self.format
    }

    /// Floats per image.
    pub fn image_len(&self) -> usize {
        self.image_len
    }
}

impl Iterator for Prefetch {
    type Item = DataResult<Batch>;

    fn next(&mut self) -> Option<DataResult<Batch>> {
        let rx = self.rx.as_ref()?;
        match rx.recv() {
            Ok(item) => Some(item),
            Err(_) => {
                // The producer finished (or died): report a panic once, then end.
                self.rx = None;
                match self.handle.take().map(JoinHandle::join) {
                    Some(Err(_)) => Some(Err(DataError::Config(
                        "the batch reader thread panicked".into(),
                    ))),
                    _ => None,
                }
            }
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        // Disconnect first so a producer blocked on a full channel wakes up and stops.
        self.rx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
