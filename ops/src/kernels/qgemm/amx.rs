//! The AMX GEMM of the [`QLayout::Tiles`](super::QLayout::Tiles) layout: `tdpbusd` on
//! 16 × 64-byte tiles, written over a few tile primitives ([`Tiles`]).
//!
//! One `tdpbusd` multiplies a 16-row × 64-byte u8 tile of A (16 rows, 64 consecutive k) by a
//! 16 × 64-byte s8 tile of B (16 quads of k × 16 channels, exactly one 16-quad slice of a
//! packed panel) into a 16 × 16 i32 tile, exact and wrapping like `vpdpbusd`: 16 384
//! multiply-adds per instruction. The driver keeps a 2 × 2 block of accumulator tiles
//! (32 rows × 32 channels: tmm0–3), two A tiles (tmm4–5) and two B tiles (tmm6–7); per 64 k it
//! loads four tiles and issues four `tdpbusd`, so each loaded tile feeds two products. The
//! accumulators are stored to an L1 scratch after the last k and pass through the output
//! stage of [`Lanes`] row by row (AVX-512 on AMX CPUs).
//!
//! Two implementations of the primitives: [`Amx`] (the instructions, through `asm!`: stable
//! Rust has no AMX intrinsics) and [`Emulated`] (plain arrays), with which the tests run the
//! same driver, edges and all, on any CPU and compare it with the portable kernels.
//!
//! Rows past the end of A are never read: a 16-row tile that would extend beyond the matrix
//! is gathered into zero-padded scratch. Missing halves of the 2 × 2 block (an odd last row
//! tile or panel) repeat a valid tile; their results are not stored.

use super::pack::PackedQWeights;
use super::vnni::{stage_mode, Lanes, VStage, MODE_CORR, MODE_SUM};
use super::{QEpilogue, QLhs, SumStage, NR};
use crate::kernels::aligned::{AVec, ALIGN};

/// Rows (and channels) of one tile.
pub const TR: usize = 16;
/// Bytes of k per tile row.
const TK: usize = 64;
/// How many k steps ahead the weight tiles are prefetched.
const PF: usize = 2;

/// The tile primitives the AMX driver uses (tile numbers are compile-time constants, as the
/// instructions encode them).
///
/// # Safety
/// [`Amx`] needs a CPU with AMX-TILE/AMX-INT8 and the OS permission (`Isa::Amx`); all
/// pointers must be valid for the 16 rows × 64 bytes a tile reads or writes.
pub(super) trait Tiles {
    /// Sets every tile to 16 rows × 64 bytes (palette 1); zeroes all tiles.
    unsafe fn configure(&mut self);
    /// Zeroes tile `T`.
    unsafe fn zero<const T: usize>(&mut self);
    /// Loads tile `T` from 16 rows at `p`, `stride` bytes apart.
    unsafe fn load<const T: usize>(&mut self, p: *const u8, stride: usize);
    /// `C += A · B` (u8 × s8 dot products of 4, into i32).
    unsafe fn dpbusd<const C: usize, const A: usize, const B: usize>(&mut self);
    /// Stores tile `T` (16 rows of 16 i32) to `p`, rows 64 bytes apart.
    unsafe fn store<const T: usize>(&mut self, p: *mut i32);
    /// Returns the tile state to its initial configuration.
    unsafe fn release(&mut self);
    /// Hints that the 1 KiB at `p` will be read soon (may point anywhere: never faults).
    fn prefetch_tile(&mut self, p: *const u8);
}

/// The AMX instructions.
pub(super) struct Amx;

#[cfg(target_arch = "x86_64")]
impl Tiles for Amx {
    #[inline(always)]
    unsafe fn configure(&mut self) {
        // Palette 1, start row 0, then 16 column byte counts (u16) and 16 row counts (u8).
        let mut cfg = [0u8; 64];
        cfg[0] = 1;
        for t in 0..8 {
            cfg[16 + 2 * t..18 + 2 * t].copy_from_slice(&(TK as u16).to_le_bytes());
            cfg[48 + t] = TR as u8;
        }
        // SAFETY: AMX present and permitted (caller); `cfg` is a valid 64-byte config.
        unsafe {
            std::arch::asm!("ldtilecfg [{}]", in(reg) cfg.as_ptr(), options(nostack, readonly));
        }
    }

    #[inline(always)]
    unsafe fn zero<const T: usize>(&mut self) {
        // SAFETY: AMX configured (caller).
        unsafe { std::arch::asm!("tilezero tmm{t}", t = const T, options(nostack, nomem)) }
    }

    #[inline(always)]
    unsafe fn load<const T: usize>(&mut self, p: *const u8, stride: usize) {
        // SAFETY: 16 rows of 64 bytes readable at `p` + r·stride (caller).
        unsafe {
            std::arch::asm!(
                "tileloadd tmm{t}, [{p} + {s}*1]",
                t = const T,
                p = in(reg) p,
                s = in(reg) stride,
                options(nostack, readonly)
            )
        }
    }

    #[inline(always)]
    unsafe fn dpbusd<const C: usize, const A: usize, const B: usize>(&mut self) {
        // SAFETY: AMX configured (caller).
        unsafe {
            std::arch::asm!(
                "tdpbusd tmm{c}, tmm{a}, tmm{b}",
                c = const C,
                a = const A,
                b = const B,
                options(nostack, nomem)
            )
        }
    }

    #[inline(always)]
    unsafe fn store<const T: usize>(&mut self, p: *mut i32) {
        // SAFETY: 16 rows of 64 bytes writable at `p` (caller).
        unsafe {
            std::arch::asm!(
                "tilestored [{p} + {s}*1], tmm{t}",
                t = const T,
                p = in(reg) p,
                s = in(reg) TK,
                options(nostack)
            )
        }
    }

    #[inline(always)]
    unsafe fn release(&mut self) {
        // SAFETY: AMX present (caller).
        unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) }
    }

    #[inline(always)]
    fn prefetch_tile(&mut self, p: *const u8) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        for l in 0..TR {
            // SAFETY: SSE is part of x86-64; a prefetch never faults, whatever the address
            // (`wrapping_add` keeps the arithmetic defined past the end of an allocation).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(l * TK) as *const i8) };
        }
    }
}

/// The tile primitives on arrays (any CPU): eight tiles of 16 × 64 bytes.
pub(super) struct Emulated {
    t: Box<[[[u8; TK]; TR]; 8]>,
}

impl Default for Emulated {
    fn default() -> Self {
        Emulated {
            t: Box::new([[[0; TK]; TR]; 8]),
        }
    }
}

impl Tiles for Emulated {
    unsafe fn configure(&mut self) {
        *self.t = [[[0; TK]; TR]; 8];
    }

    unsafe fn zero<const T: usize>(&mut self) {
        self.t[T] = [[0; TK]; TR];
    }

    unsafe fn load<const T: usize>(&mut self, p: *const u8, stride: usize) {
        for (r, row) in self.t[T].iter_mut().enumerate() {
            // SAFETY: 64 readable bytes at each row (caller).
            unsafe { std::ptr::copy_nonoverlapping(p.add(r * stride), row.as_mut_ptr(), TK) };
        }
    }

    unsafe fn dpbusd<const C: usize, const A: usize, const B: usize>(&mut self) {
        let (a, b) = (self.t[A], self.t[B]);
        for (m, crow) in self.t[C].iter_mut().enumerate() {
            for n in 0..TR {
                let mut acc = i32::from_le_bytes(crow[4 * n..4 * n + 4].try_into().unwrap());
                for (q, brow) in b.iter().enumerate() {
                    for j in 0..4 {
                        let x = i32::from(a[m][4 * q + j]);
                        let w = i32::from(brow[4 * n + j] as i8);
                        acc = acc.wrapping_add(x * w);
                    }
                }
                crow[4 * n..4 * n + 4].copy_from_slice(&acc.to_le_bytes());
            }
        }
    }

    unsafe fn store<const T: usize>(&mut self, p: *mut i32) {
        for (r, row) in self.t[T].iter().enumerate() {
            // SAFETY: 64 writable bytes at each row (caller).
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), (p as *mut u8).add(r * TK), TK) };
        }
    }

    unsafe fn release(&mut self) {}

    fn prefetch_tile(&mut self, _p: *const u8) {}
}

/// Per-thread scratch of the AMX driver.
#[derive(Default)]
struct TScratch {
    block: AVec<u8>,
    tail: AVec<u8>,
    row: Vec<u8>,
    rowsums: Vec<i32>,
    /// Per call: tile bases, tile rows and k offsets (kept to avoid allocating per call).
    bases: Vec<(usize, usize)>,
    tile_rows: Vec<(usize, usize)>,
    koff: Vec<usize>,
}

thread_local! {
    static TSCRATCH: std::cell::RefCell<TScratch> = std::cell::RefCell::new(TScratch::default());
}

/// Accumulator tiles of two blocks stored for the output stage, 64-byte aligned.
#[repr(C, align(64))]
struct CBuf([[[i32; TR * TR]; 4]; 2]);

/// What the output stage of a block needs from its call.
struct StageBlock<'a> {
    stage: &'a VStage<'a>,
    /// The stage's mode bits (`vnni::stage_mode`).
    mode: u8,
    /// Per tile of A: its first output row (relative to the call) and its valid rows.
    tiles: &'a [(usize, usize)],
    /// The other summand of a fused sum (laid out like the output), else empty.
    other: &'a [u8],
    rowsums: &'a [i32],
    c0: usize,
    cols: usize,
    ldo: usize,
    ocol: usize,
}

/// The output stage of the stored 32 × 32 block at channel `g0`, row tiles `tp, tp + 1`:
/// tile (row half h, panel half v) is `c[2h + v]`.
///
/// # Safety
/// `L`'s CPU features must be present.
#[inline(always)]
unsafe fn stage_block<L: Lanes>(
    b: &StageBlock<'_>,
    c: &[[i32; TR * TR]; 4],
    g0: usize,
    tp: usize,
    out: &mut [u8],
) {
    // SAFETY: forwarded contract.
    unsafe {
        match b.mode {
            0 => stage_block_m::<L, 0>(b, c, g0, tp, out),
            1 => stage_block_m::<L, 1>(b, c, g0, tp, out),
            2 => stage_block_m::<L, 2>(b, c, g0, tp, out),
            3 => stage_block_m::<L, 3>(b, c, g0, tp, out),
            4 => stage_block_m::<L, 4>(b, c, g0, tp, out),
            5 => stage_block_m::<L, 5>(b, c, g0, tp, out),
            6 => stage_block_m::<L, 6>(b, c, g0, tp, out),
            _ => stage_block_m::<L, 7>(b, c, g0, tp, out),
        }
    }
}

/// [`stage_block`] for stage mode `M` (see `vnni::Lanes::requant_store`).
///
/// # Safety
/// `L`'s CPU features must be present.
#[inline(always)]
unsafe fn stage_block_m<L: Lanes, const M: u8>(
    b: &StageBlock<'_>,
    c: &[[i32; TR * TR]; 4],
    g0: usize,
    tp: usize,
    out: &mut [u8],
) {
    let sum = M & MODE_SUM != 0;
    // Channels of this block (1 to 32) and its output columns.
    let width = (b.c0 + b.cols - g0).min(2 * NR);
    let panels = width.div_ceil(NR);
    let col = b.ocol + (g0 - b.c0);
    for h in 0..2 {
        let Some(&(t0, valid)) = b.tiles.get(tp + h) else {
            continue;
        };
        if valid == 0 {
            continue;
        }
        // One bounds check per tile: rows t0..t0+valid of `out` (and of the summand) at
        // columns col..col+width.
        let last = (t0 + valid - 1) * b.ldo + col + width;
        assert!(last <= out.len() && (!sum || last <= b.other.len()));
        let (ca, cb) = (&c[2 * h], &c[2 * h + 1]);
        // SAFETY: `L`'s features are present (caller); row r's `width` codes at
        // (t0 + r)·ldo + col lie below `last`, checked above for `out` and the summand.
        unsafe {
            let s0 = L::stage(b.stage, g0);
            let st = [
                s0,
                if panels == 2 {
                    L::stage(b.stage, g0 + NR)
                } else {
                    s0
                },
            ];
            let y0 = out.as_mut_ptr().add(t0 * b.ldo + col);
            let o0 = if sum {
                b.other.as_ptr().add(t0 * b.ldo + col)
            } else {
                std::ptr::null()
            };
            let rs = |r: usize| {
                if M & MODE_CORR != 0 {
                    b.rowsums[t0 + r]
                } else {
                    0
                }
            };
            let mut r = 0;
            if width == 2 * NR {
                // Both panels whole: rows in pairs through the 2 × 32 block form.
                while r + 2 <= valid {
                    let acc = [
                        L::load_b(ca[r * TR..].as_ptr()),
                        L::load_b(cb[r * TR..].as_ptr()),
                        L::load_b(ca[(r + 1) * TR..].as_ptr()),
                        L::load_b(cb[(r + 1) * TR..].as_ptr()),
                    ];
                    L::requant_store_2x32::<M>(
                        acc,
                        [&st[0], &st[1]],
                        [rs(r), rs(r + 1)],
                        o0.wrapping_add(r * b.ldo),
                        y0.add(r * b.ldo),
                        b.ldo,
                    );
                    r += 2;
                }
            }
            // The rest (an odd last row, a partial panel) 16 lanes at a time.
            for r in r..valid {
                for (v, cv) in [ca, cb].into_iter().enumerate().take(panels) {
                    let at = r * b.ldo + v * NR;
                    L::requant_store::<M>(
                        L::load_b(cv[r * TR..].as_ptr()),
                        &st[v],
                        rs(r),
                        o0.wrapping_add(at),
                        y0.add(at),
                        NR.min(width - v * NR),
                    );
                }
            }
        }
    }
}

/// Rows `r0..r0+rows` of A times channels `c0..c0+cols` of W (`c0 % 16 == 0`, `w` in the
/// tile layout) into `out` (`rows` rows of `ldo`) at columns `ocol..`, with tile primitives
/// `T` and the output stage of lanes `L`.
///
/// # Safety
/// The CPU must have what `T` and `L` need.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) unsafe fn run_tiles<T: Tiles, L: Lanes, A: QLhs + ?Sized>(
    t: &mut T,
    a: &A,
    r0: usize,
    rows: usize,
    w: &PackedQWeights,
    c0: usize,
    cols: usize,
    ep: &QEpilogue,
    sum: Option<(&SumStage, &[u8])>,
    out: &mut [u8],
    ldo: usize,
    ocol: usize,
) {
    debug_assert_eq!(c0 % NR, 0);
    debug_assert_eq!(w.kunits % TR, 0);
    if let Some((_, other)) = sum {
        assert_eq!(
            other.len(),
            out.len(),
            "fused sum: summand and output sizes differ"
        );
    }
    let kq = w.kunits;
    let kpad = 4 * kq;
    let ksteps = kpad / TK;
    let mut stage_all = VStage::new(ep, w);
    stage_all.sum = sum.map(|(st, _)| *st);
    let other: &[u8] = sum.map_or(&[], |(_, o)| o);
    let mut s = TSCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    let mut block = std::mem::take(&mut s.block);
    let mut cbuf = CBuf([[[0; TR * TR]; 4]; 2]);
    {
        // Each 16-row tile of A as (base, row stride), its output rows (first, valid), and
        // one byte offset per 64-byte k step, shared by all tiles: rows read in place
        // (offsets 64·j), gathered into `block` as whole tiles (`[tile][k step][16][64]`,
        // offsets 1024·j: every tile load reads 1 KiB of consecutive bytes), or read from a
        // convolution's padded input as implicit im2col rows (one tile = up to 16 pixels of
        // one output row; offsets = each tap's displacement, see `ImplicitA`).
        let mut tail = std::mem::take(&mut s.tail);
        // The bases are stored as addresses (`usize`) so that the kept vector holds no
        // pointer between calls.
        let mut bases = std::mem::take(&mut s.bases);
        let mut tile_rows = std::mem::take(&mut s.tile_rows);
        let mut koff = std::mem::take(&mut s.koff);
        bases.clear();
        tile_rows.clear();
        koff.clear();
        // In place when every tile row starts on a cache line (a 64-byte tile row that
        // straddles two lines makes each tile load several times slower: with a row stride
        // that is a multiple of 64 but a misaligned start, copying the rows pays), and also
        // whenever the row stride is not a multiple of 64, where no copy could align the
        // source and reading it as it is still beats gathering (K = 16/32 layers of
        // MobileNetV2, 112×112: 0.26 → 0.10 ms and 0.45 → 0.27 ms). A row shorter than the
        // padded K reads on into the next row's codes, which meet the zero weights of the
        // padding.
        let in_place = match a.strided() {
            Some((data, offset, ld))
                if offset + (r0 + rows - 1) * ld + kpad <= data.len()
                    && (!ld.is_multiple_of(ALIGN)
                        || (data[offset + r0 * ld..].as_ptr() as usize).is_multiple_of(ALIGN)) =>
            {
                Some((data, offset, ld))
            }
            _ => None,
        };
        let implicit = a.implicit().filter(|im| im.fits(kpad, r0 + rows));
        if let Some(im) = &implicit {
            koff.extend((0..ksteps).map(|j| im.k_offset(j * TK)));
            let mut p = r0;
            while p < r0 + rows {
                let (base, stride, len) = im.tile(p, (r0 + rows - p).min(TR));
                bases.push((base as usize, stride));
                tile_rows.push((p - r0, len));
                p += len;
            }
            if w.needs_rowsum {
                s.row.resize(kpad, 0);
                s.rowsums.clear();
                for i in 0..rows {
                    a.copy_row(r0 + i, &mut s.row);
                    s.rowsums
                        .push(s.row[..w.k].iter().map(|&v| i32::from(v)).sum());
                }
            }
        } else if let Some((data, offset, ld)) = in_place {
            koff.extend((0..ksteps).map(|j| j * TK));
            if w.needs_rowsum {
                s.rowsums.clear();
                for i in 0..rows {
                    let row = &data[offset + (r0 + i) * ld..][..w.k];
                    s.rowsums.push(row.iter().map(|&v| i32::from(v)).sum());
                }
            }
            for ti in 0..rows.div_ceil(TR) {
                let first = offset + (r0 + ti * TR) * ld;
                let valid = TR.min(rows - ti * TR);
                tile_rows.push((ti * TR, valid));
                if first + (TR - 1) * ld + kpad <= data.len() {
                    bases.push((data[first..].as_ptr() as usize, ld));
                } else {
                    // The last tile would read past the matrix: its valid rows, zero padded.
                    tail.resize(TR * kpad, 0);
                    tail.fill(0);
                    for i in 0..valid {
                        let row = &data[first + i * ld..][..kpad];
                        tail[i * kpad..(i + 1) * kpad].copy_from_slice(row);
                    }
                    bases.push((tail.as_ptr() as usize, kpad));
                }
            }
        } else {
            let tiles = rows.div_ceil(TR);
            koff.extend((0..ksteps).map(|j| j * TR * TK));
            // Every byte of the rows is written below; only the padding rows of the last
            // tile need zeros (no memset of the whole block; the buffer only grows).
            if block.len() < tiles * TR * kpad {
                block.resize(tiles * TR * kpad, 0);
            }
            for i in rows..tiles * TR {
                let (t, r) = (i / TR, i % TR);
                for j in 0..ksteps {
                    let at = ((t * ksteps + j) * TR + r) * TK;
                    block[at..at + TK].fill(0);
                }
            }
            s.row.resize(kpad, 0);
            s.rowsums.clear();
            for i in 0..rows {
                a.copy_row(r0 + i, &mut s.row);
                s.row[w.k..].fill(0);
                if w.needs_rowsum {
                    s.rowsums
                        .push(s.row[..w.k].iter().map(|&v| i32::from(v)).sum());
                }
                let (t, r) = (i / TR, i % TR);
                for (j, chunk) in s.row.chunks_exact(TK).enumerate() {
                    let at = ((t * ksteps + j) * TR + r) * TK;
                    block[at..at + TK].copy_from_slice(chunk);
                }
            }
            for ti in 0..tiles {
                bases.push((block[ti * ksteps * TR * TK..].as_ptr() as usize, TK));
                tile_rows.push((ti * TR, TR.min(rows - ti * TR)));
            }
        }
        let tiles = bases.len();
        let panel = |p: usize| w.data[p * kq * NR..].as_ptr() as *const u8;
        // The 32 × 32 blocks in order: panel pairs outside, row tile pairs inside.
        let pairs = (cols.div_ceil(NR)).div_ceil(2);
        let blocks = pairs * tiles.div_ceil(2);
        let block_at = |i: usize| {
            (
                c0 + (i / tiles.div_ceil(2)) * 2 * NR,
                2 * (i % tiles.div_ceil(2)),
            )
        };
        t.configure();
        // Software pipeline: the tile products of block i are issued before the (vector)
        // output stage of block i − 1 runs from its stored copy, so the two overlap.
        for i in 0..blocks {
            let (g0, tp) = block_at(i);
            let p0 = g0 / NR;
            let p1 = if g0 + NR < c0 + cols { p0 + 1 } else { p0 };
            let (b0, b1) = (panel(p0), panel(p1));
            let (a0, s0) = bases[tp];
            let (a1, s1) = bases[(tp + 1).min(tiles - 1)];
            let (a0, a1) = (a0 as *const u8, a1 as *const u8);
            t.zero::<0>();
            t.zero::<1>();
            t.zero::<2>();
            t.zero::<3>();
            for (j, &ko) in koff.iter().enumerate() {
                // The weights are read once per panel pair and usually come from memory:
                // fetch two k steps ahead.
                t.prefetch_tile(b0.wrapping_add((j + PF) * TR * TK));
                t.prefetch_tile(b1.wrapping_add((j + PF) * TR * TK));
                t.load::<4>(a0.add(ko), s0);
                t.load::<6>(b0.add(j * TR * TK), TK);
                t.dpbusd::<0, 4, 6>();
                t.load::<7>(b1.add(j * TR * TK), TK);
                t.dpbusd::<1, 4, 7>();
                t.load::<5>(a1.add(ko), s1);
                t.dpbusd::<2, 5, 6>();
                t.dpbusd::<3, 5, 7>();
            }
            if i > 0 {
                let (pg, pt) = block_at(i - 1);
                let sb = StageBlock {
                    stage: &stage_all,
                    mode: stage_mode(&stage_all),
                    other,
                    rowsums: &s.rowsums,
                    tiles: &tile_rows,
                    c0,
                    cols,
                    ldo,
                    ocol,
                };
                stage_block::<L>(&sb, &cbuf.0[(i - 1) % 2], pg, pt, out);
            }
            let c = &mut cbuf.0[i % 2];
            t.store::<0>(c[0].as_mut_ptr());
            t.store::<1>(c[1].as_mut_ptr());
            t.store::<2>(c[2].as_mut_ptr());
            t.store::<3>(c[3].as_mut_ptr());
        }
        if blocks > 0 {
            let (pg, pt) = block_at(blocks - 1);
            let sb = StageBlock {
                stage: &stage_all,
                mode: stage_mode(&stage_all),
                other,
                rowsums: &s.rowsums,
                tiles: &tile_rows,
                c0,
                cols,
                ldo,
                ocol,
            };
            stage_block::<L>(&sb, &cbuf.0[(blocks - 1) % 2], pg, pt, out);
        }
        t.release();
        s.tail = tail;
        s.bases = bases;
        s.tile_rows = tile_rows;
        s.koff = koff;
    }
    s.block = block;
    TSCRATCH.with(|c| *c.borrow_mut() = s);
}
