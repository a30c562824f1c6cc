//! Read-only access to an LMDB database (the unnamed main database), as Caffe and Caffe2
//! write them: iteration in key order, seeking, counting and single-key lookups.
//!
//! The environment is opened with `READ_ONLY | NO_LOCK` (what Caffe2's own reader uses), so
//! no lock file is taken or created and databases on read-only folders can be read. The
//! caller must not modify a database while it is open here.
//!
//! Reads happen in short read transactions: [`Lmdb::scan`] hands out borrowed key/value
//! slices from the memory map for the duration of one call, [`Entries`] copies records out
//! in bounded chunks and re-seeks after the last key it returned.

use std::collections::{HashMap, VecDeque};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};

use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvFlags, EnvOpenOptions, WithoutTls};

use crate::{DataError, DataResult};

/// Where a scan starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start<'a> {
    /// At the first key of the database.
    First,
    /// At the first key that is `>=` the given key.
    AtOrAfter(&'a [u8]),
    /// At the first key that is `>` the given key.
    After(&'a [u8]),
}

/// One open environment, shared by every [`Lmdb`] handle on the same file in this process
/// (heed refuses to open the same environment twice at the same time).
struct Shared {
    /// `Some` until dropped; taken in `Drop` so closing happens under the registry lock.
    env: Option<Env<WithoutTls>>,
    /// The unnamed main database.
    db: Database<'static, Bytes, Bytes>,
    /// Registry key (canonical path + sub-dir mode).
    reg_key: (PathBuf, bool),
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Close the environment while holding the registry lock, so that a concurrent
        // `open` of the same path cannot observe heed's "already opened" state.
        let mut reg = registry();
        self.env.take();
        if let Some(w) = reg.get(&self.reg_key) {
            if w.strong_count() == 0 {
                reg.remove(&self.reg_key);
            }
        }
    }
}

type Registry = HashMap<(PathBuf, bool), Weak<Shared>>;

fn registry() -> MutexGuard<'static, Registry> {
    static REG: LazyLock<Mutex<Registry>> = LazyLock::new(|| Mutex::new(HashMap::new()));
    // A panic while holding this lock cannot leave the map inconsistent (every update is
    // a single insert/remove), so a poisoned lock is still usable.
    REG.lock().unwrap_or_else(|e| e.into_inner())
}

/// A read-only handle on an LMDB database. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Lmdb {
    shared: Arc<Shared>,
    path: PathBuf,
}

impl std::fmt::Debug for Lmdb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lmdb").field("path", &self.path).finish()
    }
}

/// Checks that the LMDB data file at `file` holds every page its newest meta page uses, so
/// that a truncated file is an error instead of a fault when a page past its end is read.
/// The two meta pages are pages 0 and 1; on 64-bit builds each is a 16-byte page header,
/// then `mm_magic` (u32 0xBEEFC0DE), `mm_version`, the map address and size, two 48-byte
/// database records (the first one's leading u32 is the page size), `mm_last_pg` (u64,
/// byte 136 of the page) and `mm_txnid` (u64, byte 144); the meta with the larger
/// transaction id is the current one, and the file needs `(mm_last_pg + 1) · page size`
/// bytes. A file that does not start with that magic is left to liblmdb to refuse.
fn check_size(file: &Path) -> Result<(), String> {
    use std::io::{Read, Seek, SeekFrom};
    const MAGIC: u32 = 0xBEEF_C0DE;
    let mut f = std::fs::File::open(file).map_err(|e| format!("cannot open: {e}"))?;
    let len = f
        .metadata()
        .map_err(|e| format!("cannot read its size: {e}"))?
        .len();
    let mut meta = |at: u64| -> Result<Option<(u64, u64, u32)>, String> {
        let mut b = [0u8; 152];
        if at + b.len() as u64 > len {
            return Ok(None);
        }
        f.seek(SeekFrom::Start(at))
            .and_then(|_| f.read_exact(&mut b))
            .map_err(|e| format!("cannot read a meta page: {e}"))?;
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(w)
        };
        Ok((u32_at(16) == MAGIC).then(|| (u64_at(136), u64_at(144), u32_at(40))))
    };
    let Some((last0, txn0, psize)) = meta(0)? else {
        // Not an LMDB file we can read the meta of (or shorter than a meta page): liblmdb
        // refuses those with its own error before mapping pages.
        if len < 4096 {
            return Err(format!(
                "the file has {len} bytes, less than one LMDB page: truncated or not an LMDB database"
            ));
        }
        return Ok(());
    };
    if !psize.is_power_of_two() || !(512..=1 << 20).contains(&psize) {
        return Err(format!(
            "invalid LMDB page size {psize} in its first meta page"
        ));
    }
    let psize = u64::from(psize);
    let last = match meta(psize)? {
        Some((last1, txn1, _)) if txn1 > txn0 => last1,
        Some(_) => last0,
        None => {
            return Err(format!(
                "truncated: the file has {len} bytes, less than its two {psize}-byte meta pages"
            ))
        }
    };
    let need = last
        .checked_add(1)
        .and_then(|p| p.checked_mul(psize))
        .ok_or_else(|| format!("invalid last page number {last} in its meta page"))?;
    if len < need {
        return Err(format!(
            "truncated: the database uses {need} bytes ({} pages of {psize}), the file has {len}",
            need / psize
        ));
    }
    Ok(())
}

/// Resolves a user path to (environment path, sub-dir mode).
fn resolve(path: &Path) -> DataResult<(PathBuf, bool)> {
    let err = |msg: String| DataError::Lmdb {
        path: path.to_path_buf(),
        msg,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot open: {e}")))?;
    if meta.is_dir() {
        let data = path.join("data.mdb");
        if !data.is_file() {
            return Err(err("folder contains no data.mdb".into()));
        }
        let canon = path
            .canonicalize()
            .map_err(|e| err(format!("cannot resolve path: {e}")))?;
        Ok((canon, true))
    } else {
        let canon = path
            .canonicalize()
            .map_err(|e| err(format!("cannot resolve path: {e}")))?;
        if canon.file_name().is_some_and(|n| n == "data.mdb") {
            match canon.parent() {
                Some(dir) => Ok((dir.to_path_buf(), true)),
                None => Ok((canon, false)),
            }
        } else {
            // Any other file name: a single-file environment (MDB_NOSUBDIR).
            Ok((canon, false))
        }
    }
}

impl Lmdb {
    /// Opens the database at `path`: the folder containing `data.mdb`, `data.mdb` itself,
    /// or any other single LMDB file. Read-only, without a lock file.
    ///
    /// Handles on the same file share one environment while any of them is alive, so a
    /// database replaced on disk (e.g. by `make_db` with `overwrite`) is only seen after
    /// every handle on the old one has been dropped.
    pub fn open(path: impl AsRef<Path>) -> DataResult<Lmdb> {
        let path = path.as_ref();
        let (env_path, subdir) = resolve(path)?;
        let reg_key = (env_path.clone(), subdir);
        let mut reg = loop {
            let reg = registry();
            match reg.get(&reg_key) {
                None => break reg,
                Some(w) => {
                    if let Some(shared) = w.upgrade() {
                        return Ok(Lmdb {
                            shared,
                            path: path.to_path_buf(),
                        });
                    }
                }
            }
            // The last handle is being dropped on another thread and will close the
            // environment and remove the entry under the lock: wait for it.
            drop(reg);
            std::thread::yield_now();
        };
        let lmdb_err = |msg: String| DataError::Lmdb {
            path: path.to_path_buf(),
            msg,
        };
        // liblmdb maps the file and trusts its meta page: pages past the end of a truncated
        // file fault (SIGBUS) on first touch. Check the size first.
        check_size(&if subdir {
            env_path.join("data.mdb")
        } else {
            env_path.clone()
        })
        .map_err(lmdb_err)?;
        let mut opts = EnvOpenOptions::new().read_txn_without_tls();
        let mut flags = EnvFlags::READ_ONLY | EnvFlags::NO_LOCK;
        if !subdir {
            flags |= EnvFlags::NO_SUB_DIR;
        }
        // SAFETY: READ_ONLY | NO_LOCK is the mode Caffe2's own LMDB reader uses. NO_LOCK is
        // sound as long as nobody writes the database while we read it, which this module
        // documents as a requirement; we never write through this environment.
        unsafe {
            opts.flags(flags);
        }
        // SAFETY: the memory map is only read; the same-process double-open hazard is
        // excluded by the registry (one environment per canonical path, opened and closed
        // under its lock). Modification by another process is excluded by contract.
        let env = unsafe { opts.open(&env_path) }.map_err(|e| lmdb_err(e.to_string()))?;
        let rtxn = env.read_txn().map_err(|e| lmdb_err(e.to_string()))?;
        let opened = env
            .open_databases_and_commit(rtxn, |dbo, rtxn| {
                dbo.open_database::<Bytes, Bytes>(rtxn, None)
                    .map(CommitOrAbort::<_, ()>::Commit)
            })
            .map_err(|e: heed::Error| lmdb_err(e.to_string()))?;
        let db = match opened {
            CommitOrAbort::Commit(Some(db)) => db,
            _ => return Err(lmdb_err("the main database cannot be opened".into())),
        };
        let shared = Arc::new(Shared {
            env: Some(env),
            db,
            reg_key: reg_key.clone(),
        });
        reg.insert(reg_key, Arc::downgrade(&shared));
        Ok(Lmdb {
            shared,
            path: path.to_path_buf(),
        })
    }

    /// The path this database was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl std::fmt::Display) -> DataError {
        DataError::Lmdb {
            path: self.path.clone(),
            msg: e.to_string(),
        }
    }

    fn env(&self) -> DataResult<&Env<WithoutTls>> {
        self.shared
            .env
            .as_ref()
            .ok_or_else(|| self.err("environment already closed"))
    }

    /// Number of records (from the database statistics, O(1)).
    pub fn len(&self) -> DataResult<usize> {
        let env = self.env()?;
        let rtxn = env.read_txn().map_err(|e| self.err(e))?;
        let n = self.shared.db.len(&rtxn).map_err(|e| self.err(e))?;
        usize::try_from(n).map_err(|e| self.err(e))
    }

    /// Whether the database holds no record.
    pub fn is_empty(&self) -> DataResult<bool> {
        Ok(self.len()? == 0)
    }

    /// The value stored under `key`, copied out, or `None`.
    pub fn get(&self, key: &[u8]) -> DataResult<Option<Vec<u8>>> {
        let env = self.env()?;
        let rtxn = env.read_txn().map_err(|e| self.err(e))?;
        let v = self.shared.db.get(&rtxn, key).map_err(|e| self.err(e))?;
        Ok(v.map(<[u8]>::to_vec))
    }

    /// Visits records in key order from `start`, inside one read transaction, handing out
    /// slices of the memory map. `f` returns `Ok(true)` to continue, `Ok(false)` to stop;
    /// an error from `f` stops the scan and is returned.
    pub fn scan<F>(&self, start: Start<'_>, mut f: F) -> DataResult<()>
    where
        F: FnMut(&[u8], &[u8]) -> DataResult<bool>,
    {
        let env = self.env()?;
        let rtxn = env.read_txn().map_err(|e| self.err(e))?;
        let range: (Bound<&[u8]>, Bound<&[u8]>) = match start {
            Start::First => (Bound::Unbounded, Bound::Unbounded),
            Start::AtOrAfter(k) => (Bound::Included(k), Bound::Unbounded),
            Start::After(k) => (Bound::Excluded(k), Bound::Unbounded),
        };
        let iter = self
            .shared
            .db
            .range(&rtxn, &range)
            .map_err(|e| self.err(e))?;
        for item in iter {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if !f(k, v)? {
                break;
            }
        }
        Ok(())
    }

    /// All keys in order (copies every key; values are not touched).
    pub fn keys(&self) -> DataResult<Vec<Vec<u8>>> {
        let mut keys = Vec::new();
        self.scan(Start::First, |k, _| {
            keys.push(k.to_vec());
            Ok(true)
        })?;
        Ok(keys)
    }

    /// An iterator over owned `(key, value)` records in key order, from the first key.
    pub fn iter(&self) -> Entries {
        Entries::new(self.clone(), None, true)
    }

    /// An iterator over owned records starting at the first key `>= key` (seek).
    pub fn iter_from(&self, key: &[u8]) -> Entries {
        Entries::new(self.clone(), Some(key.to_vec()), true)
    }
}

/// Maximum records copied per read transaction by [`Entries`].
const CHUNK_RECORDS: usize = 64;
/// Maximum value bytes copied per read transaction by [`Entries`] (at least one record).
const CHUNK_BYTES: usize = 16 << 20;

/// Owned records in key order, read in bounded chunks (see [`Lmdb::iter`]).
#[derive(Debug)]
pub struct Entries {
    db: Lmdb,
    /// Position: the key to resume from.
    pos: Option<Vec<u8>>,
    /// Whether `pos` itself is still to be returned (seek) or was already returned.
    inclusive: bool,
    buf: VecDeque<(Vec<u8>, Vec<u8>)>,
    done: bool,
}

impl Entries {
    fn new(db: Lmdb, pos: Option<Vec<u8>>, inclusive: bool) -> Entries {
        Entries {
            db,
            pos,
            inclusive,
            buf: VecDeque::new(),
            done: false,
        }
    }

    fn fill(&mut self) -> DataResult<()> {
        let start = match (&self.pos, self.inclusive) {
            (None, _) => Start::First,
            (Some(k), true) => Start::AtOrAfter(k),
            (Some(k), false) => Start::After(k),
        };
        let mut bytes = 0usize;
        let buf = &mut self.buf;
        self.db.scan(start, |k, v| {
            buf.push_back((k.to_vec(), v.to_vec()));
            bytes += v.len();
            Ok(buf.len() < CHUNK_RECORDS && bytes < CHUNK_BYTES)
        })?;
        match self.buf.back() {
            Some((k, _)) => {
                self.pos = Some(k.clone());
                self.inclusive = false;
            }
            None => self.done = true,
        }
        Ok(())
    }
}

impl Iterator for Entries {
    type Item = DataResult<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() && !self.done {
            if let Err(e) = self.fill() {
                self.done = true;
                return Some(Err(e));
            }
        }
        self.buf.pop_front().map(Ok)
    }
}
