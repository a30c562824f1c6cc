//! The AVX-512 depthwise kernel (layout in the module docs of [`super`]).
//!
//! One task computes a group of `R` output rows of one image, block of 64 channels by block,
//! and each block in strips of about [`STRIP_COLS`] input columns (so that a strip's
//! transposed columns are still in L1 when they are read):
//!
//! 1. **Columns.** For every unit (4 or 2 input rows) and every input column of the strip
//!    (padding columns included), the rows' codes are loaded and transposed in 128-bit
//!    lanes, so that dword `4L + i` of vector `k` holds the unit's taps of channel
//!    `16L + 4k + i`: u8 quads (`vpunpck[lh]bw`, then `vpunpck[lh]wd`) or u8 values
//!    zero-extended to i16 pairs (`vpunpck[lh]bw` twice). The 4 vectors go to the thread's
//!    scratch, column after column. Padding rows read a row of `z_x`, padding columns are
//!    stored as constants, slots past the group's rows are not loaded at all (their
//!    weights are 0).
//! 2. **Pixels.** For 4 output pixels at a time, the accumulators start at the output
//!    offsets; per unit holding taps of the row and per kernel column, the 4 weight vectors
//!    are multiplied into all 4 pixels' 4 accumulators (`vpdpbusd`, `vpdpwssd`, or
//!    `vpmaddwd` + `vpaddd`), reading the scratch at column `ox·s_w + kx·d_w`; no bounds
//!    checks. For 3-wide kernels without dilation whose neighbouring pixels are 1 or 2
//!    columns apart ([`row3`]: 3×3 with stride 1 or 2) the weights are loaded once per row
//!    and every scratch column once per tile, for all pixels that read it.
//! 3. **Output stage.** `cvtdq2ps`, `mulps`, (`minps` at 65536 unless the products are
//!    provably small; NaN lanes zeroed for non-finite multipliers), `cvtps2dq`, then
//!    `vpackssdw` / `vpaddsw` (zero point) / `vpackuswb` / `vpmaxub` (lower clamp): the
//!    in-lane packs put the 4 accumulators' channels back into natural order, and the
//!    saturations are the clamps of the scalar `requantize` (see [`out_stage`]).
//!
//! Blocks with 2 or 4 pixels per zmm ([`super::Block`]) load each pixel's 32 or 16 channels
//! into its own lanes (the column `ix` of the scratch then holds columns `ix + l·s_w`) and
//! store each pixel's lanes separately; partial blocks use masked loads and stores.

use std::arch::x86_64::*;
use std::cell::RefCell;

use rayon::prelude::*;

use super::{Block, DwShape, Enc, Mode, Tables, ZStage, Z};
use crate::kernels::isa::Isa;

/// Zmm rows of accumulators (pixels, or groups of 2 or 4 pixels) per step.
const P: usize = 4;

/// Scratch columns per strip and unit, about (48 × 256 bytes: the strip stays in L1
/// between being built and being read).
const STRIP_COLS: usize = 48;

/// [`Mode`] as a const parameter.
const BOUNDED: u8 = 0;
const FINITE: u8 = 1;
const NON_FINITE: u8 = 2;

thread_local! {
    /// Per-thread scratch rows of transposed columns.
    static SCRATCH: RefCell<Vec<Z>> = const { RefCell::new(Vec::new()) };
}

/// What every row-group task of one call shares.
struct Job<'a> {
    x: &'a [u8],
    zx: u8,
    s: &'a DwShape,
    t: &'a Tables,
    st: &'a ZStage,
    /// `w·c` codes `z_x`: the row read where the window leaves the image above or below.
    zrow: Vec<u8>,
}

/// One task: image `n`, row group `g`, its output rows `y`, the thread's scratch.
type TaskFn = unsafe fn(&Job<'_>, usize, usize, &mut [u8], &mut Vec<Z>);

/// Runs the convolution (shapes already checked by the caller: `x` is `[n, h, w, c]`, `y`
/// is `[n, oh, ow, c]` and not empty, `t` and `st` were built for these weights and shape)
/// with the kernels of `level`, which must be an AVX-512 level this CPU supports.
pub(super) fn run(
    level: Isa,
    x: &[u8],
    zx: u8,
    s: &DwShape,
    t: &Tables,
    st: &ZStage,
    y: &mut [u8],
) {
    assert!(
        level.has_avx512() && level.supported(),
        "{level} on this CPU"
    );
    assert_eq!(t.blocks, super::blocks(s.c));
    assert!(t.plan.r >= 1 && t.key.kw == s.kw && t.key.kh == s.kh);
    let kern: TaskFn = match (t.key.enc, level >= Isa::Avx512Vnni) {
        (Enc::Quads, true) => task_quads,
        (Enc::Pairs, true) => task_pairs_vnni,
        (Enc::Pairs, false) => task_pairs,
        (Enc::Quads, false) => panic!("u8 × i8 quads need AVX512-VNNI"),
    };
    let job = Job {
        x,
        zx,
        s,
        t,
        st,
        zrow: vec![zx; s.w * s.c],
    };
    let mut tasks: Vec<(usize, usize, &mut [u8])> = Vec::new();
    for (n, yimg) in y.chunks_mut(s.oh * s.ow * s.c).enumerate() {
        for (g, yg) in yimg.chunks_mut(t.plan.r * s.ow * s.c).enumerate() {
            tasks.push((n, g, yg));
        }
    }
    tasks.into_par_iter().for_each(|(n, g, yg)| {
        SCRATCH.with(|sc| {
            let mut sc = sc.borrow_mut();
            // SAFETY: `kern` needs AVX-512 F/BW/VL/DQ, and VNNI for the VNNI variants, which
            // `level` (asserted supported above) guarantees; it checks its slices itself.
            unsafe { kern(&job, n, g, yg, &mut sc) };
        });
    });
}

/// # Safety
/// The CPU must support AVX-512 F/BW/VL/DQ.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn task_pairs(j: &Job<'_>, n: usize, g: usize, y: &mut [u8], sc: &mut Vec<Z>) {
    // SAFETY: features enabled on this function.
    unsafe { task::<Pairs>(j, n, g, y, sc) }
}

/// # Safety
/// The CPU must support AVX-512 F/BW/VL/DQ and AVX512-VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn task_pairs_vnni(j: &Job<'_>, n: usize, g: usize, y: &mut [u8], sc: &mut Vec<Z>) {
    // SAFETY: features enabled on this function.
    unsafe { task::<PairsVnni>(j, n, g, y, sc) }
}

/// # Safety
/// The CPU must support AVX-512 F/BW/VL/DQ and AVX512-VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
unsafe fn task_quads(j: &Job<'_>, n: usize, g: usize, y: &mut [u8], sc: &mut Vec<Z>) {
    // SAFETY: features enabled on this function.
    unsafe { task::<Quads>(j, n, g, y, sc) }
}

/// How a unit's rows are transposed and multiplied.
///
/// # Safety
/// The functions use AVX-512 F/BW (and VNNI for the VNNI variants): call them only from
/// code compiled for, and running on, such a CPU.
trait Variant {
    /// Rows per unit.
    const UNIT: usize;
    /// The unit's rows `r[..UNIT]` (64 codes each) as 4 vectors of tap groups: dword
    /// `4L + i` of vector `k` holds the taps of channel `16L + 4k + i`.
    unsafe fn transpose(r: &[__m512i; 4]) -> [__m512i; 4];
    /// `acc + Σ_slots a · w` per dword (exact, wrapping).
    unsafe fn madd(acc: __m512i, a: __m512i, w: __m512i) -> __m512i;
}

/// u8 quads × i8 quads with `vpdpbusd`.
struct Quads;
/// i16 pairs × i16 pairs with `vpmaddwd` + `vpaddd`.
struct Pairs;
/// i16 pairs × i16 pairs with `vpdpwssd`.
struct PairsVnni;

impl Variant for Quads {
    const UNIT: usize = 4;

    #[inline(always)]
    unsafe fn transpose(r: &[__m512i; 4]) -> [__m512i; 4] {
        // SAFETY: AVX-512 BW present (caller).
        unsafe {
            let p01l = _mm512_unpacklo_epi8(r[0], r[1]);
            let p01h = _mm512_unpackhi_epi8(r[0], r[1]);
            let p23l = _mm512_unpacklo_epi8(r[2], r[3]);
            let p23h = _mm512_unpackhi_epi8(r[2], r[3]);
            [
                _mm512_unpacklo_epi16(p01l, p23l),
                _mm512_unpackhi_epi16(p01l, p23l),
                _mm512_unpacklo_epi16(p01h, p23h),
                _mm512_unpackhi_epi16(p01h, p23h),
            ]
        }
    }

    #[inline(always)]
    unsafe fn madd(acc: __m512i, a: __m512i, w: __m512i) -> __m512i {
        // SAFETY: AVX512-VNNI present (caller).
        unsafe { _mm512_dpbusd_epi32(acc, a, w) }
    }
}

/// The pair transposition shared by both pair variants.
///
/// # Safety
/// AVX-512 BW must be present.
#[inline(always)]
unsafe fn transpose_pairs(r: &[__m512i; 4]) -> [__m512i; 4] {
    // SAFETY: AVX-512 BW present (caller).
    unsafe {
        let z = _mm512_setzero_si512();
        let pl = _mm512_unpacklo_epi8(r[0], r[1]);
        let ph = _mm512_unpackhi_epi8(r[0], r[1]);
        [
            _mm512_unpacklo_epi8(pl, z),
            _mm512_unpackhi_epi8(pl, z),
            _mm512_unpacklo_epi8(ph, z),
            _mm512_unpackhi_epi8(ph, z),
        ]
    }
}

impl Variant for Pairs {
    const UNIT: usize = 2;

    #[inline(always)]
    unsafe fn transpose(r: &[__m512i; 4]) -> [__m512i; 4] {
        // SAFETY: AVX-512 BW present (caller).
        unsafe { transpose_pairs(r) }
    }

    #[inline(always)]
    unsafe fn madd(acc: __m512i, a: __m512i, w: __m512i) -> __m512i {
        // SAFETY: AVX-512 BW present (caller). Products are at most 255·255, pair sums
        // exact in i32; the accumulation wraps like the reference.
        unsafe { _mm512_add_epi32(acc, _mm512_madd_epi16(a, w)) }
    }
}

impl Variant for PairsVnni {
    const UNIT: usize = 2;

    #[inline(always)]
    unsafe fn transpose(r: &[__m512i; 4]) -> [__m512i; 4] {
        // SAFETY: AVX-512 BW present (caller).
        unsafe { transpose_pairs(r) }
    }

    #[inline(always)]
    unsafe fn madd(acc: __m512i, a: __m512i, w: __m512i) -> __m512i {
        // SAFETY: AVX512-VNNI present (caller).
        unsafe { _mm512_dpwssd_epi32(acc, a, w) }
    }
}

/// The lane masks of a block: bytes `0..nch` of the 64 / 32 / 16 loaded per pixel.
#[derive(Clone, Copy)]
struct Masks {
    m64: u64,
    m32: u32,
    m16: u16,
}

impl Masks {
    fn new(nch: usize) -> Masks {
        let m64 = if nch >= 64 { !0 } else { (1u64 << nch) - 1 };
        Masks {
            m64,
            m32: m64 as u32,
            m16: m64 as u16,
        }
    }
}

/// The task body (see the module docs).
///
/// # Safety
/// `V`'s CPU features must be present. (Slices are checked here.)
#[inline(always)]
unsafe fn task<V: Variant>(j: &Job<'_>, n: usize, g: usize, y: &mut [u8], sc: &mut Vec<Z>) {
    let s = j.s;
    let (c, kw) = (s.c, s.kw);
    let plan = &j.t.plan;
    assert_eq!(plan.unit, V::UNIT);
    let r0 = g * plan.r;
    let rows = plan.r.min(s.oh - r0);
    assert_eq!(y.len(), rows * s.ow * c);
    let image = s.h * s.w * c;
    let img = &j.x[n * image..(n + 1) * image];
    // The input row of every slot of the group's units (`None`: padding or no row).
    let base_row = (r0 * s.stride_h) as isize - s.pad_t as isize;
    let slot_rows: Vec<Option<usize>> = (0..plan.nunits * plan.unit)
        .map(|i| {
            let iy = base_row + *plan.uoff.get(i)? as isize;
            (0..s.h as isize).contains(&iy).then_some(iy as usize)
        })
        .collect();
    let per_block = j.t.per_block();
    let per_row = plan.nunits * kw * 4;
    assert!(j.t.w.len() >= j.t.blocks.len() * per_block);
    assert!(j.st.off.len() >= j.t.blocks.len() * 4 && j.st.mult.len() >= j.t.blocks.len() * 4);
    for (bi, blk) in j.t.blocks.iter().enumerate() {
        let ppv = blk.ppv();
        let nv = s.ow.div_ceil(ppv);
        let per = ppv * s.stride_w;
        let span = (kw - 1) * s.dil_w;
        // Strips of `sv` zmm rows of pixels (a multiple of `P` where possible) whose
        // columns, about 48 per unit, stay in L1 between being built and being read.
        let sv = match STRIP_COLS.saturating_sub(span) / per {
            0 => 1,
            n if n < P => n,
            n => n / P * P,
        };
        let need = plan.nunits * ((sv - 1) * per + span + 1) * 4;
        if sc.len() < need {
            sc.resize(need, Z::default());
        }
        let masks = Masks::new(blk.nch);
        let wblk = &j.t.w[bi * per_block..(bi + 1) * per_block];
        // SAFETY: AVX-512 present (caller); 4 stage vectors per block (asserted above),
        // 64-byte aligned (`Z`, `ZF`).
        let (off, mult, zp16, lo8) = unsafe {
            let o = j.st.off[bi * 4..].as_ptr() as *const __m512i;
            let m = j.st.mult[bi * 4..].as_ptr() as *const __m512;
            (
                [
                    _mm512_load_si512(o),
                    _mm512_load_si512(o.add(1)),
                    _mm512_load_si512(o.add(2)),
                    _mm512_load_si512(o.add(3)),
                ],
                [
                    _mm512_load_ps(m as *const f32),
                    _mm512_load_ps(m.add(1) as *const f32),
                    _mm512_load_ps(m.add(2) as *const f32),
                    _mm512_load_ps(m.add(3) as *const f32),
                ],
                _mm512_set1_epi16(j.st.zero_point as i16),
                _mm512_set1_epi8(j.st.lo as u8 as i8),
            )
        };
        for va in (0..nv).step_by(sv) {
            let vb = (va + sv).min(nv);
            let cols = va * per..(vb - 1) * per + span + 1;
            let ncols = cols.len();
            // SAFETY: CPU features as required (caller); `sc` holds `nunits · ncols · 4`
            // zmm (`ncols` at most the strip size reserved above), the rows of
            // `slot_rows` lie in `img`.
            unsafe {
                build::<V>(
                    img,
                    &j.zrow,
                    s,
                    blk,
                    &slot_rows,
                    plan.uoff.len(),
                    plan.nunits,
                    cols,
                    j.zx,
                    masks,
                    &mut sc[..plan.nunits * ncols * 4],
                )
            };
            for rr in 0..rows {
                let r = RowArgs {
                    sc: sc.as_ptr() as *const __m512i,
                    ncols,
                    used: &plan.used[rr],
                    w: wblk[rr * per_row..(rr + 1) * per_row].as_ptr() as *const __m512i,
                    kw,
                    dw: s.dil_w,
                    step: per * 4,
                    blk: *blk,
                    ppv,
                    masks,
                    va,
                    vb,
                    ow: s.ow,
                    c,
                    off,
                    mult,
                    zp16,
                    lo8,
                    y: y[rr * s.ow * c..(rr + 1) * s.ow * c].as_mut_ptr(),
                };
                // SAFETY: CPU features as required (caller); the scratch holds the strip's
                // columns built above, `w` the row's `nunits · kw · 4` weight vectors
                // (sliced), `y` the row's `ow · c` codes (sliced); `used` lists units below
                // `nunits`.
                unsafe {
                    match j.st.mode {
                        Mode::Bounded => row::<V, BOUNDED>(&r),
                        Mode::Finite => row::<V, FINITE>(&r),
                        Mode::NonFinite => row::<V, NON_FINITE>(&r),
                    }
                }
            }
        }
    }
}

/// Fills the scratch with the transposed scratch columns `cols` (input column `col − p_l`)
/// of every unit of block `blk`: unit `u`, column `col` at zmm
/// `(u·ncols + col − cols.start)·4 ..+4`. Slots without an input row (padding above or
/// below, or past the group's rows) read `zrow`. Columns whose pixels all lie inside the
/// image take a branch-free loop; the others are all `z_x` (one pixel per zmm) or assembled
/// lane by lane.
///
/// # Safety
/// AVX-512 F/BW/VL must be present; `sc` must hold `nunits · cols.len() · 4` vectors and
/// every row in `slot_rows` must be below `s.h`, `img` being one `[h, w, c]` image;
/// `slot_rows` is `None` from slot `plan_slots` on (slots without a row of the group).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn build<V: Variant>(
    img: &[u8],
    zrow: &[u8],
    s: &DwShape,
    blk: &Block,
    slot_rows: &[Option<usize>],
    plan_slots: usize,
    nunits: usize,
    cols: std::ops::Range<usize>,
    zx: u8,
    masks: Masks,
    sc: &mut [Z],
) {
    let c = s.c;
    let ppv = blk.ppv();
    let row_len = s.w * c;
    let ncols = cols.len();
    assert!(sc.len() >= nunits * ncols * 4 && slot_rows.len() >= nunits * V::UNIT);
    assert!(img.len() >= s.h * row_len && zrow.len() >= row_len && blk.base + blk.nch <= c);
    // Scratch columns `inner` read only image columns `ix + l·s_w` inside `0..w`.
    let span = (ppv - 1) * s.stride_w;
    let first = s.pad_l.clamp(cols.start, cols.end);
    let inner = first..(s.pad_l + s.w.saturating_sub(span)).clamp(first, cols.end);
    let zbuf = [zx; 64];
    // SAFETY: AVX-512 present (caller). Row pointers start rows of `img` (rows below `h`)
    // or `zrow`, both `w·c` codes long; the loads of `interior` and `load_lanes` stay in
    // such a row (see there). Stores: vector `(u·ncols + col − cols.start)·4 + k` with
    // `u < nunits`, `col` in `cols`, `k < 4`: inside `sc` (asserted), which is 64-byte
    // aligned (`Z`).
    unsafe {
        let zsplat = _mm512_set1_epi8(zx as i8);
        let zt = V::transpose(&[zsplat; 4]);
        for u in 0..nunits {
            let mut rows = [zrow.as_ptr(); 4];
            for (sl, r) in rows.iter_mut().enumerate().take(V::UNIT) {
                if let Some(iy) = slot_rows[u * V::UNIT + sl] {
                    *r = img.as_ptr().add(iy * row_len);
                }
            }
            // Slots past the group's rows (weights 0) need no loads, unless the unit also
            // has a padding row (then every slot reads its row pointer).
            let unit_slots = &slot_rows[u * V::UNIT..(u + 1) * V::UNIT];
            let in_plan = plan_slots.saturating_sub(u * V::UNIT).min(V::UNIT);
            let ns = if unit_slots[..in_plan].iter().all(|r| r.is_some()) {
                in_plan.max(1)
            } else {
                V::UNIT
            };
            // Column `col` of the unit goes to `dst + (col − cols.start)·4`.
            let dst = (sc.as_mut_ptr() as *mut __m512i).add(u * ncols * 4);
            let args = (&rows, inner.clone(), cols.start, s, blk, masks, dst);
            match ns {
                1 => interior_l::<V, 1>(args),
                2 => interior_l::<V, 2>(args),
                3 => interior_l::<V, 3>(args),
                _ => interior_l::<V, 4>(args),
            }
            for col in (cols.start..inner.start).chain(inner.end..cols.end) {
                let t = if ppv == 1 {
                    zt
                } else {
                    let ix = col as isize - s.pad_l as isize;
                    let mut r = [zsplat; 4];
                    for (v, &p) in r.iter_mut().zip(&rows).take(V::UNIT) {
                        *v = load_lanes(p, ix, s, blk, masks, zbuf.as_ptr());
                    }
                    V::transpose(&r)
                };
                for (k, v) in t.into_iter().enumerate() {
                    _mm512_store_si512(dst.add((col - cols.start) * 4 + k), v);
                }
            }
        }
    }
}

/// The arguments of [`interior`].
type InteriorArgs<'a> = (
    &'a [*const u8; 4],
    std::ops::Range<usize>,
    usize,
    &'a DwShape,
    &'a Block,
    Masks,
    *mut __m512i,
);

/// [`interior`] for the block's load kind.
///
/// # Safety
/// As [`interior`].
#[inline(always)]
unsafe fn interior_l<V: Variant, const NS: usize>(a: InteriorArgs<'_>) {
    // SAFETY: forwarded contract.
    unsafe {
        match (a.4.lp, a.4.nch) {
            (4, 64) => interior::<V, 0, NS>(a),
            (4, _) => interior::<V, 1, NS>(a),
            (2, 32) => interior::<V, 2, NS>(a),
            (2, _) => interior::<V, 3, NS>(a),
            (_, 16) => interior::<V, 4, NS>(a),
            _ => interior::<V, 5, NS>(a),
        }
    }
}

/// Transposed scratch columns `cols` of one unit, all of whose pixels lie inside the image:
/// `L` = 0 (64 channels), 1 (fewer, masked), 2 / 3 (2 pixels of 32 / fewer channels, masked),
/// 4 / 5 (4 pixels of 16 / fewer, masked). Unmasked loads fold into `vinserti*`. Only
/// slots `0..NS` are loaded; the others are 0 (slots whose weights are all 0).
///
/// # Safety
/// AVX-512 F/BW/VL must be present; `rows` start rows of `w·c` codes; every `col` in
/// `cols` has `col − p_l ≥ 0`, `col − p_l + (4/lp − 1)·s_w < w` and `col ≥ col0`; `dst`
/// holds vectors `(col − col0)·4 .. +4` for every `col` in `cols`, 64-byte aligned.
#[inline(always)]
unsafe fn interior<V: Variant, const L: u8, const NS: usize>(
    (rows, cols, col0, s, blk, masks, dst): InteriorArgs<'_>,
) {
    let c = s.c;
    let lane = s.stride_w * c;
    // SAFETY: AVX-512 present (caller). Column `ix = col − p_l` of a row is read at
    // `ix·c + base` for at most `nch ≤ c − base` codes (unmasked loads for `L` = 0, 2, 4
    // read exactly `nch` = 64, 32, 16), and with 2 or 4 pixels per zmm also at the columns
    // `ix + l·s_w < w` (caller); masked-off bytes are not accessed. Stores as the caller
    // guarantees.
    unsafe {
        for col in cols {
            let at = (col - s.pad_l) * c + blk.base;
            let mut r = [_mm512_setzero_si512(); 4];
            for (v, &row) in r.iter_mut().zip(rows).take(NS.min(V::UNIT)) {
                let p = row.add(at);
                *v = match L {
                    0 => _mm512_loadu_si512(p as *const __m512i),
                    1 => _mm512_maskz_loadu_epi8(masks.m64, p as *const i8),
                    2 => {
                        let lo = _mm256_loadu_si256(p as *const __m256i);
                        let hi = _mm256_loadu_si256(p.add(lane) as *const __m256i);
                        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
                    }
                    3 => {
                        let lo = _mm256_maskz_loadu_epi8(masks.m32, p as *const i8);
                        let hi = _mm256_maskz_loadu_epi8(masks.m32, p.add(lane) as *const i8);
                        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
                    }
                    4 => {
                        let l0 = _mm_loadu_si128(p as *const __m128i);
                        let l1 = _mm_loadu_si128(p.add(lane) as *const __m128i);
                        let l2 = _mm_loadu_si128(p.add(2 * lane) as *const __m128i);
                        let l3 = _mm_loadu_si128(p.add(3 * lane) as *const __m128i);
                        let v = _mm512_inserti32x4::<1>(_mm512_castsi128_si512(l0), l1);
                        let v = _mm512_inserti32x4::<2>(v, l2);
                        _mm512_inserti32x4::<3>(v, l3)
                    }
                    _ => {
                        let m = masks.m16;
                        let l0 = _mm_maskz_loadu_epi8(m, p as *const i8);
                        let l1 = _mm_maskz_loadu_epi8(m, p.add(lane) as *const i8);
                        let l2 = _mm_maskz_loadu_epi8(m, p.add(2 * lane) as *const i8);
                        let l3 = _mm_maskz_loadu_epi8(m, p.add(3 * lane) as *const i8);
                        let v = _mm512_inserti32x4::<1>(_mm512_castsi128_si512(l0), l1);
                        let v = _mm512_inserti32x4::<2>(v, l2);
                        _mm512_inserti32x4::<3>(v, l3)
                    }
                };
            }
            let t = V::transpose(&r);
            for (k, v) in t.into_iter().enumerate() {
                _mm512_store_si512(dst.add((col - col0) * 4 + k), v);
            }
        }
    }
}

/// The codes of row `p` for scratch column `ix` of a block with 2 or 4 pixels per zmm: 32
/// or 16 channels of columns `ix + l·s_w` in lanes `l`; channels past the block and
/// columns outside the image read as 0 / `z_x`.
///
/// # Safety
/// AVX-512 F/BW/VL must be present; `p` starts an image row of `w·c` codes, `zbuf` holds 64
/// readable bytes, `blk.base + blk.nch ≤ c`, `blk.lp < 4`.
#[inline(always)]
unsafe fn load_lanes(
    p: *const u8,
    ix: isize,
    s: &DwShape,
    blk: &Block,
    masks: Masks,
    zbuf: *const u8,
) -> __m512i {
    let src = |l: usize| -> *const u8 {
        let col = ix + (l * s.stride_w) as isize;
        if (0..s.w as isize).contains(&col) {
            p.wrapping_add(col as usize * s.c + blk.base)
        } else {
            zbuf
        }
    };
    // SAFETY: AVX-512 present (caller); each pointer from `src` is inside the row with at
    // most `nch` bytes read before `c` ends (masked), or is `zbuf` (at most 32 bytes read).
    unsafe {
        if blk.lp == 2 {
            let lo = _mm256_maskz_loadu_epi8(masks.m32, src(0) as *const i8);
            let hi = _mm256_maskz_loadu_epi8(masks.m32, src(1) as *const i8);
            _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
        } else {
            let m = masks.m16;
            let v = _mm512_castsi128_si512(_mm_maskz_loadu_epi8(m, src(0) as *const i8));
            let v = _mm512_inserti32x4::<1>(v, _mm_maskz_loadu_epi8(m, src(1) as *const i8));
            let v = _mm512_inserti32x4::<2>(v, _mm_maskz_loadu_epi8(m, src(2) as *const i8));
            _mm512_inserti32x4::<3>(v, _mm_maskz_loadu_epi8(m, src(3) as *const i8))
        }
    }
}

/// The pixel pass of one output row and block.
struct RowArgs<'a> {
    /// Scratch columns (see [`build`]).
    sc: *const __m512i,
    /// Columns per unit in the scratch.
    ncols: usize,
    /// Units with taps of this row.
    used: &'a [usize],
    /// The row's weights: unit `u`, kernel column `kx`, vector `k` at `(u·kw + kx)·4 + k`.
    w: *const __m512i,
    kw: usize,
    dw: usize,
    /// Scratch vectors from one zmm row of pixels to the next.
    step: usize,
    blk: Block,
    /// Pixels per zmm.
    ppv: usize,
    masks: Masks,
    /// The strip: zmm rows of pixels `va..vb` of the output row; the scratch starts at
    /// `va`'s first column.
    va: usize,
    vb: usize,
    ow: usize,
    c: usize,
    off: [__m512i; 4],
    mult: [__m512; 4],
    zp16: __m512i,
    lo8: __m512i,
    /// The output row (`ow · c` codes).
    y: *mut u8,
}

/// # Safety
/// `V`'s CPU features must be present; the pointers of `r` as documented on [`RowArgs`]
/// (the scratch holds every column `(v − va)·step/4 + kx·dw` for `v` in `va..vb`,
/// `kx < kw`).
#[inline(always)]
unsafe fn row<V: Variant, const MODE: u8>(r: &RowArgs<'_>) {
    // SAFETY: forwarded contract.
    unsafe {
        // Three-wide kernels with neighbouring pixels `step/4 ≤ 2` columns apart share
        // columns: the specialized tile loads each column once.
        if r.kw == 3 && r.dw == 1 {
            match (r.step / 4, r.used.len()) {
                (1, 1) => return row3::<V, MODE, 1, 1>(r),
                (1, 2) => return row3::<V, MODE, 1, 2>(r),
                (2, 1) => return row3::<V, MODE, 2, 1>(r),
                (2, 2) => return row3::<V, MODE, 2, 2>(r),
                _ => {}
            }
        }
        let mut v = r.va;
        while v + P <= r.vb {
            tile::<V, MODE, P>(r, v);
            v += P;
        }
        match r.vb - v {
            3 => tile::<V, MODE, 3>(r, v),
            2 => tile::<V, MODE, 2>(r, v),
            1 => tile::<V, MODE, 1>(r, v),
            _ => {}
        }
    }
}

/// [`row`] for `kw = 3`, `dw = 1`, `NU` used units and neighbouring zmm rows of pixels `PS`
/// columns apart: the row's weights are loaded once, and each tile ([`tile3`]) loads each
/// of its columns once for all pixels that read it.
///
/// # Safety
/// As [`row`], with `kw = 3`, `dw = 1`, `step = 4·PS`, `used.len() = NU`.
#[inline(always)]
unsafe fn row3<V: Variant, const MODE: u8, const PS: usize, const NU: usize>(r: &RowArgs<'_>) {
    // SAFETY: weight reads at `(u·3 + kx)·4 + k` for used units `u`, inside the row's
    // table (see `RowArgs`); the tiles cover `va..vb` (contract of `tile3`).
    unsafe {
        let mut w = [[[_mm512_setzero_si512(); 4]; 3]; NU];
        for (wu, &u) in w.iter_mut().zip(r.used) {
            for (kx, wk) in wu.iter_mut().enumerate() {
                for (k, v) in wk.iter_mut().enumerate() {
                    *v = _mm512_load_si512(r.w.add((u * 3 + kx) * 4 + k));
                }
            }
        }
        let mut v0 = r.va;
        while v0 + P <= r.vb {
            tile3::<V, MODE, PS, NU, P>(r, v0, &w);
            v0 += P;
        }
        match r.vb - v0 {
            3 => tile3::<V, MODE, PS, NU, 3>(r, v0, &w),
            2 => tile3::<V, MODE, PS, NU, 2>(r, v0, &w),
            1 => tile3::<V, MODE, PS, NU, 1>(r, v0, &w),
            _ => {}
        }
    }
}

/// Zmm rows of pixels `v0 .. v0 + Q` of a [`row3`] row: column `j` of the tile (`j <
/// (Q − 1)·PS + 3`) is loaded once and multiplied into every pixel `p` with
/// `kx = j − p·PS` in `0..3`.
///
/// # Safety
/// As [`row3`], with `va ≤ v0` and `v0 + Q ≤ vb`.
#[inline(always)]
unsafe fn tile3<V: Variant, const MODE: u8, const PS: usize, const NU: usize, const Q: usize>(
    r: &RowArgs<'_>,
    v0: usize,
    w: &[[[__m512i; 4]; 3]; NU],
) {
    // SAFETY: scratch reads at unit `u`, column `(v0 − va)·PS + j` with
    // `j < (Q − 1)·PS + 3`, i.e. at most `(vb − 1 − va)·PS + 2 < ncols`, 64-byte aligned;
    // stores: see `store`.
    unsafe {
        let mut acc = [r.off; Q];
        for (wu, &u) in w.iter().zip(r.used) {
            let su = r.sc.add(u * r.ncols * 4 + (v0 - r.va) * PS * 4);
            for j in 0..(Q - 1) * PS + 3 {
                let col = [
                    _mm512_load_si512(su.add(j * 4)),
                    _mm512_load_si512(su.add(j * 4 + 1)),
                    _mm512_load_si512(su.add(j * 4 + 2)),
                    _mm512_load_si512(su.add(j * 4 + 3)),
                ];
                for (p, accp) in acc.iter_mut().enumerate() {
                    let Some(kx) = j.checked_sub(p * PS).filter(|&kx| kx < 3) else {
                        continue;
                    };
                    for ((ak, &ck), &wk) in accp.iter_mut().zip(&col).zip(&wu[kx]) {
                        *ak = V::madd(*ak, ck, wk);
                    }
                }
            }
        }
        for (p, accp) in acc.iter().enumerate() {
            let bytes = out_stage::<MODE>(accp, &r.mult, r.zp16, r.lo8);
            store(r, (v0 + p) * r.ppv, bytes);
        }
    }
}

/// Zmm rows of pixels `v0 .. v0 + Q` of one output row.
///
/// # Safety
/// As [`row`], with `va ≤ v0` and `v0 + Q ≤ vb`.
#[inline(always)]
unsafe fn tile<V: Variant, const MODE: u8, const Q: usize>(r: &RowArgs<'_>, v0: usize) {
    // SAFETY: scratch reads at unit `u < nunits`, column `(v0 + p − va)·step/4 + kx·dw ≤
    // (vb − 1 − va)·step/4 + (kw − 1)·dw < ncols`, vector `k < 4`; weight reads at
    // `(u·kw + kx)·4 + k` inside the row's table; all 64-byte aligned. Stores: see `store`.
    unsafe {
        let mut acc = [r.off; Q];
        for &u in r.used {
            let su = r.sc.add(u * r.ncols * 4 + (v0 - r.va) * r.step);
            let wu = r.w.add(u * r.kw * 4);
            for kx in 0..r.kw {
                let wp = wu.add(kx * 4);
                let w = [
                    _mm512_load_si512(wp),
                    _mm512_load_si512(wp.add(1)),
                    _mm512_load_si512(wp.add(2)),
                    _mm512_load_si512(wp.add(3)),
                ];
                let a = su.add(kx * r.dw * 4);
                for (p, accp) in acc.iter_mut().enumerate() {
                    let ap = a.add(p * r.step);
                    for (k, (ak, wk)) in accp.iter_mut().zip(w).enumerate() {
                        *ak = V::madd(*ak, _mm512_load_si512(ap.add(k)), wk);
                    }
                }
            }
        }
        for (p, accp) in acc.iter().enumerate() {
            let bytes = out_stage::<MODE>(accp, &r.mult, r.zp16, r.lo8);
            store(r, (v0 + p) * r.ppv, bytes);
        }
    }
}

/// The DNNLOWP output stage of 64 lanes (4 accumulators in the block's lane order),
/// returned as 64 codes in natural channel order within each 128-bit lane:
/// `clamp(lrint(f32(raw) · M) + z_y, lo, 255)` as the scalar `requantize` computes it.
///
/// `cvtps2dq` rounds half to even (default MXCSR). Its input is below 2^31 in magnitude
/// (`BOUNDED`: proven by the caller), or clamped at 65536 from above (anything that large
/// gives 255 anyway); products below −2^31, −∞ included, convert to `i32::MIN`, which
/// saturates to code `lo` as it should. With non-finite multipliers NaN lanes convert to
/// 0, as `as i64` does. `vpackssdw` saturates to i16 (values beyond ±32767 are past the
/// clamps in either direction), `vpaddsw` adds the zero point (saturating, same argument),
/// `vpackuswb` clamps to [0, 255] and `vpmaxub` applies `lo`. The packs interleave
/// accumulators `k` per 128-bit lane, which restores channel order `16L + 4k + i`.
///
/// # Safety
/// AVX-512 F/BW must be present.
#[inline(always)]
unsafe fn out_stage<const MODE: u8>(
    acc: &[__m512i; 4],
    mult: &[__m512; 4],
    zp16: __m512i,
    lo8: __m512i,
) -> __m512i {
    // SAFETY: AVX-512 F/BW present (caller).
    unsafe {
        let cap = _mm512_set1_ps(65536.0);
        let mut v = [_mm512_setzero_si512(); 4];
        for ((vk, &ak), &mk) in v.iter_mut().zip(acc).zip(mult) {
            let f = _mm512_mul_ps(_mm512_cvtepi32_ps(ak), mk);
            *vk = match MODE {
                BOUNDED => _mm512_cvtps_epi32(f),
                FINITE => _mm512_cvtps_epi32(_mm512_min_ps(f, cap)),
                _ => {
                    let ord = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(f, f);
                    _mm512_maskz_cvtps_epi32(ord, _mm512_min_ps(f, cap))
                }
            };
        }
        let a = _mm512_adds_epi16(_mm512_packs_epi32(v[0], v[1]), zp16);
        let b = _mm512_adds_epi16(_mm512_packs_epi32(v[2], v[3]), zp16);
        _mm512_max_epu8(_mm512_packus_epi16(a, b), lo8)
    }
}

/// Stores the codes of the zmm row of pixels starting at pixel `ox0` (pixels at or past
/// `ow` are dropped).
///
/// # Safety
/// AVX-512 F/BW/VL must be present; `r.y` must hold `ow · c` codes.
#[inline(always)]
unsafe fn store(r: &RowArgs<'_>, ox0: usize, bytes: __m512i) {
    let b = &r.blk;
    let at = |ox: usize| r.y.wrapping_add(ox * r.c + b.base) as *mut i8;
    // SAFETY: AVX-512 present (caller); each store writes at most `nch` bytes (masked, or
    // a full 64-byte block) from channel `base` of a pixel `ox < ow`, and `base + nch ≤ c`.
    unsafe {
        match b.lp {
            4 => {
                if b.nch == 64 {
                    _mm512_storeu_si512(at(ox0) as *mut __m512i, bytes);
                } else {
                    _mm512_mask_storeu_epi8(at(ox0), r.masks.m64, bytes);
                }
            }
            2 => {
                _mm256_mask_storeu_epi8(at(ox0), r.masks.m32, _mm512_castsi512_si256(bytes));
                if ox0 + 1 < r.ow {
                    let hi = _mm512_extracti64x4_epi64::<1>(bytes);
                    _mm256_mask_storeu_epi8(at(ox0 + 1), r.masks.m32, hi);
                }
            }
            _ => {
                let m = r.masks.m16;
                _mm_mask_storeu_epi8(at(ox0), m, _mm512_castsi512_si128(bytes));
                if ox0 + 1 < r.ow {
                    _mm_mask_storeu_epi8(at(ox0 + 1), m, _mm512_extracti32x4_epi32::<1>(bytes));
                }
                if ox0 + 2 < r.ow {
                    _mm_mask_storeu_epi8(at(ox0 + 2), m, _mm512_extracti32x4_epi32::<2>(bytes));
                }
                if ox0 + 3 < r.ow {
                    _mm_mask_storeu_epi8(at(ox0 + 3), m, _mm512_extracti32x4_epi32::<3>(bytes));
                }
            }
        }
    }
}
