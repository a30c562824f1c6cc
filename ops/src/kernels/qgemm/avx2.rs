//! AVX2 kernels (also used by the depthwise kernel for the output stage).
use super::{OutTile, MR, NR, QR};
use std::arch::x86_64::*;

/// The DNNLOWP output stage on 8 accumulators: `clamp(lrint(f32(acc + off) · m) + zp,
/// lo, 255)` as i32 lanes. Products beyond ±65536 are clamped first (any such value
/// saturates the same way after the final clamp, and `cvtps` would return 0x80000000
/// out of range); a NaN product becomes 0, as `f32 as i64` does in the scalar path.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn requant8(
    acc: __m256i,
    off: __m256i,
    m: __m256,
    zp: __m256i,
    lo: __m256i,
) -> __m256i {
    let raw = _mm256_add_epi32(acc, off);
    let f = _mm256_mul_ps(_mm256_cvtepi32_ps(raw), m);
    let f = _mm256_and_ps(f, _mm256_cmp_ps::<_CMP_ORD_Q>(f, f));
    let f = _mm256_min_ps(
        _mm256_max_ps(f, _mm256_set1_ps(-65536.0)),
        _mm256_set1_ps(65536.0),
    );
    // Round half to even: the default MXCSR mode, which Rust never changes.
    let i = _mm256_add_epi32(_mm256_cvtps_epi32(f), zp);
    _mm256_min_epi32(_mm256_max_epi32(i, lo), _mm256_set1_epi32(255))
}

/// The output stage of one row of 16 channels for finite multipliers, `v0`/`v1` the
/// accumulators of channels 0–7 / 8–15 (with `NATURAL`; without it, of channels
/// `[0–3, 8–11]` / `[4–7, 12–15]`, the depthwise lane order, which the i16 pack puts
/// back in order by itself): the same values as [`requant8`] + [`narrow16`] with fewer
/// steps. Without NaN only the upper side needs a float clamp (`cvtps` maps
/// anything below −2^31 to 0x80000000, which is negative as it should be); adding `z_y`
/// cannot overflow, and the saturating packs to i16 and then u8 clamp to [0, 255]
/// before the lower bound `lo8` (16 copies of `lo`) is applied.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn requant16_finite<const NATURAL: bool>(
    v0: __m256i,
    v1: __m256i,
    off0: __m256i,
    off1: __m256i,
    m0: __m256,
    m1: __m256,
    zp: __m256i,
    lo8: __m128i,
) -> __m128i {
    let top = _mm256_set1_ps(65536.0);
    let r = |v, off, m| {
        let f = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(v, off)), m);
        _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_min_ps(f, top)), zp)
    };
    let (a, b) = (r(v0, off0, m0), r(v1, off1, m1));
    let mut p = _mm256_packs_epi32(a, b);
    if NATURAL {
        p = _mm256_permute4x64_epi64::<0b11_01_10_00>(p);
    }
    let bytes = _mm_packus_epi16(_mm256_castsi256_si128(p), _mm256_extracti128_si256::<1>(p));
    _mm_max_epu8(bytes, lo8)
}

/// Narrows two vectors of codes already in [0, 255] (channels 0–7 and 8–15) to 16 bytes
/// in channel order.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn narrow16(v0: __m256i, v1: __m256i) -> __m128i {
    // packs: [v0 0-3, v1 0-3 | v0 4-7, v1 4-7] → permute 64-bit units to 0, 2, 1, 3.
    let p = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(v0, v1));
    _mm_packus_epi16(_mm256_castsi256_si128(p), _mm256_extracti128_si256::<1>(p))
}

/// AVX2 micro-kernel (see `MicroFn`): 6 × 16 i32 accumulators, B panel in 2 ymm per k
/// pair, A broadcast as an i16 pair, `vpmaddwd` + `vpaddd`.
///
/// # Safety
/// The CPU must support AVX2 and FMA. (Slice lengths are checked here.)
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn micro(
    kp: usize,
    a: &[i32],
    b: &[i32],
    acc: &mut [i32],
    load: bool,
    out: Option<OutTile<'_>>,
) {
    assert!(a.len() >= kp * MR && b.len() >= kp * NR && acc.len() >= MR * NR);
    // SAFETY: the assert above bounds every pointer below: `a` is read at [0, kp·MR),
    // `b` at [0, kp·NR), `acc` (in `start`/`finish`) at [0, MR·NR). All loads are
    // unaligned.
    unsafe {
        let mut c = start::<MR>(acc, load);
        let mut ap = a.as_ptr();
        let mut bp = b.as_ptr() as *const __m256i;
        for _ in 0..kp {
            let b0 = _mm256_loadu_si256(bp);
            let b1 = _mm256_loadu_si256(bp.add(1));
            for (r, row) in c.iter_mut().enumerate() {
                let av = _mm256_set1_epi32(*ap.add(r));
                row[0] = _mm256_add_epi32(row[0], _mm256_madd_epi16(av, b0));
                row[1] = _mm256_add_epi32(row[1], _mm256_madd_epi16(av, b1));
            }
            ap = ap.add(MR);
            bp = bp.add(2);
        }
        finish(&c, acc, out);
    }
}

/// AVX2 quad micro-kernel (see `MicroFn`, `kq` even): per two quads and row, two
/// `vpmaddubsw` (u8 activations × i8 weights, i16 sums of two products), one `vpaddw`,
/// one `vpmaddwd` by ones to widen to i32 and one `vpaddd`: three multiply-pipe µops per
/// 64 multiply-adds instead of four. Exact because the packed weights keep every i16
/// lane within ±255·128 (see `PackedQWeights::pack_quads`).
///
/// # Safety
/// The CPU must support AVX2 and FMA. (Slice lengths are checked here.)
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn micro_quads(
    kq: usize,
    a: &[i32],
    b: &[i32],
    acc: &mut [i32],
    load: bool,
    out: Option<OutTile<'_>>,
) {
    assert!(kq.is_multiple_of(2));
    assert!(a.len() >= kq * QR && b.len() >= kq * NR && acc.len() >= QR * NR);
    // SAFETY: the asserts above bound every pointer below: `a` is read at [0, kq·QR),
    // `b` at [0, kq·NR), `acc` (in `start`/`finish`) at [0, QR·NR). All loads are
    // unaligned.
    unsafe {
        let mut c = start::<QR>(acc, load);
        let ones = _mm256_set1_epi16(1);
        let mut ap = a.as_ptr();
        let mut bp = b.as_ptr() as *const __m256i;
        for _ in 0..kq / 2 {
            // Row by row, the B vectors loaded where they are used (volatile reads, so
            // the compiler neither keeps all four in registers nor spills accumulators):
            // 8 accumulators, two broadcasts, two products and `ones` fit the 16 ymm.
            for (r, row) in c.iter_mut().enumerate() {
                let a0 = _mm256_set1_epi32(*ap.add(r));
                let a1 = _mm256_set1_epi32(*ap.add(QR + r));
                for (h, acc) in row.iter_mut().enumerate() {
                    let s = _mm256_add_epi16(
                        _mm256_maddubs_epi16(a0, load_volatile(bp.add(h))),
                        _mm256_maddubs_epi16(a1, load_volatile(bp.add(2 + h))),
                    );
                    *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(s, ones));
                }
            }
            ap = ap.add(2 * QR);
            bp = bp.add(4);
        }
        finish(&c, acc, out);
    }
}

/// AVX2 outlier products (see `OutlierFn`), eight row tiles at a time: per outlier, the
/// 32 rows' codes of its k are picked out of their quads with `vpshufb`, multiplied by
/// the weight with `vpmaddwd` (code and weight both fit i16, the other halves are 0) and
/// summed per lane in registers; the lane sums are then transposed into the row-major
/// tiles.
///
/// # Safety
/// The CPU must support AVX2. (Lengths are checked here.)
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn outlier_tile(
    outl: super::OutlierPanel<'_>,
    apack: &[i32],
    units: usize,
    tiles: usize,
    corr: &mut [i32],
    stride: usize,
) {
    /// Row tiles per pass (two per vector).
    const G: usize = 8;
    if tiles == 0 || units == 0 {
        return;
    }
    assert!(apack.len() >= tiles * units * QR);
    assert!(corr.len() >= (tiles - 1) * stride + QR * NR);
    // The last quad of a tile panel: every load offset is clamped to it, so a bad `k`
    // cannot read outside the panel.
    let last = (units - 1) * QR;
    // Byte j of every i32 lane moved to the lane's low byte, the rest zeroed.
    let sel: [__m256i; 4] = std::array::from_fn(|j| {
        let j = j as i8;
        let z = -1i8;
        _mm256_setr_epi8(
            j,
            z,
            z,
            z,
            4 + j,
            z,
            z,
            z,
            8 + j,
            z,
            z,
            z,
            12 + j,
            z,
            z,
            z,
            j,
            z,
            z,
            z,
            4 + j,
            z,
            z,
            z,
            8 + j,
            z,
            z,
            z,
            12 + j,
            z,
            z,
            z,
        )
    });
    for t in (0..tiles).step_by(G) {
        // G tiles at a time (the last one repeated past the end).
        let p: [&[i32]; G] = std::array::from_fn(|i| {
            let ti = (t + i).min(tiles - 1);
            &apack[ti * units * QR..(ti + 1) * units * QR]
        });
        // sums[lane][h]: lanes 0–3 rows of tile 2h, lanes 4–7 rows of tile 2h + 1.
        let sums: [[__m256i; G / 2]; NR] = std::array::from_fn(|lane| {
            let mut s = [_mm256_setzero_si256(); G / 2];
            for o in outl.lane(lane) {
                let k = o.k as usize;
                let at = ((k / 4) * QR).min(last);
                let d = _mm256_set1_epi32(o.dpair);
                let m = sel[k % 4];
                for (h, acc) in s.iter_mut().enumerate() {
                    // SAFETY: `at + 4 <= units·QR`, the length of every panel in `p`.
                    let q = unsafe {
                        let ld = |i: usize| _mm_loadu_si128(p[i].as_ptr().add(at) as *const _);
                        _mm256_inserti128_si256::<1>(
                            _mm256_castsi128_si256(ld(2 * h)),
                            ld(2 * h + 1),
                        )
                    };
                    *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(_mm256_shuffle_epi8(q, m), d));
                }
            }
            s
        });
        // Transpose 8 × 8 blocks (8 lanes × 8 rows of two tiles) into the tiles.
        #[allow(clippy::needless_range_loop)]
        for h in 0..G / 2 {
            for lb in 0..NR / 8 {
                let w = transpose8(std::array::from_fn(|i| sums[8 * lb + i][h]));
                for (r, wr) in w.iter().enumerate() {
                    let ti = t + 2 * h + r / QR;
                    if ti < tiles {
                        let at = ti * stride + (r % QR) * NR + 8 * lb;
                        let dst = &mut corr[at..at + 8];
                        // SAFETY: `dst` holds 8 i32.
                        unsafe { _mm256_storeu_si256(dst.as_mut_ptr() as *mut __m256i, *wr) };
                    }
                }
            }
        }
    }
}

/// Transposes an 8 × 8 block of i32: lane `j` of result `r` is lane `r` of `v[j]`.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn transpose8(v: [__m256i; 8]) -> [__m256i; 8] {
    let lo = transpose4(v[0], v[1], v[2], v[3]);
    let hi = transpose4(v[4], v[5], v[6], v[7]);
    // lo[j] = [lane j of v0–v3 | lane j + 4 of v0–v3], hi likewise for v4–v7.
    std::array::from_fn(|r| {
        let (a, b) = (lo[r % 4], hi[r % 4]);
        if r < 4 {
            _mm256_permute2x128_si256::<0x20>(a, b)
        } else {
            _mm256_permute2x128_si256::<0x31>(a, b)
        }
    })
}

/// An unaligned 32-byte vector, for [`load_volatile`].
#[derive(Clone, Copy)]
#[repr(C, packed)]
struct Unaligned(__m256i);

/// An unaligned load the compiler keeps at its place (neither hoisted nor merged).
///
/// # Safety
/// `p` must be valid for reading 32 bytes (any alignment).
#[inline(always)]
unsafe fn load_volatile(p: *const __m256i) -> __m256i {
    // SAFETY: the caller guarantees 32 readable bytes; `Unaligned` has alignment 1.
    unsafe { (p as *const Unaligned).read_volatile().0 }
}

/// The initial accumulators of an R-row tile: zero, or (with `load`) the tile in `acc`.
///
/// # Safety
/// The CPU must support AVX2. (The length of `acc` is checked here.)
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn start<const R: usize>(acc: &[i32], load: bool) -> [[__m256i; 2]; R] {
    let mut c = [[_mm256_setzero_si256(); 2]; R];
    if load {
        assert!(acc.len() >= R * NR);
        for (r, row) in c.iter_mut().enumerate() {
            // SAFETY: r·NR + 16 ≤ R·NR ≤ acc.len() (asserted).
            unsafe {
                let p = acc.as_ptr().add(r * NR) as *const __m256i;
                row[0] = _mm256_loadu_si256(p);
                row[1] = _mm256_loadu_si256(p.add(1));
            }
        }
    }
    c
}

/// Stores the accumulators to `acc` (no output tile) or through the output stage.
///
/// # Safety
/// The CPU must support AVX2 and FMA. (Slice lengths are checked here.)
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn finish<const R: usize>(c: &[[__m256i; 2]; R], acc: &mut [i32], out: Option<OutTile<'_>>) {
    assert!(acc.len() >= R * NR);
    if let Some(o) = &out {
        assert!(o.offsets.len() >= NR && o.mults.len() >= NR);
        assert!(o.y.len() >= (R - 1) * o.ldy + NR);
    }
    // SAFETY: the asserts above bound the pointers: `acc` is written at [0, R·NR),
    // `y` at r·ldy + [0, NR) for r < R, the stage vectors read at [0, NR).
    unsafe {
        match out {
            None => {
                for (r, row) in c.iter().enumerate() {
                    let p = acc.as_mut_ptr().add(r * NR) as *mut __m256i;
                    _mm256_storeu_si256(p, row[0]);
                    _mm256_storeu_si256(p.add(1), row[1]);
                }
            }
            Some(o) => {
                let off0 = _mm256_loadu_si256(o.offsets.as_ptr() as *const __m256i);
                let off1 = _mm256_loadu_si256(o.offsets.as_ptr().add(8) as *const __m256i);
                let m0 = _mm256_loadu_ps(o.mults.as_ptr());
                let m1 = _mm256_loadu_ps(o.mults.as_ptr().add(8));
                let zp = _mm256_set1_epi32(o.zero_point);
                let y = o.y.as_mut_ptr();
                if o.finite {
                    let lo8 = _mm_set1_epi8(o.lo as u8 as i8);
                    for (r, row) in c.iter().enumerate() {
                        let bytes =
                            requant16_finite::<true>(row[0], row[1], off0, off1, m0, m1, zp, lo8);
                        _mm_storeu_si128(y.add(r * o.ldy) as *mut __m128i, bytes);
                    }
                } else {
                    let lo = _mm256_set1_epi32(o.lo);
                    for (r, row) in c.iter().enumerate() {
                        let v0 = requant8(row[0], off0, m0, zp, lo);
                        let v1 = requant8(row[1], off1, m1, zp, lo);
                        let bytes = narrow16(v0, v1);
                        _mm_storeu_si128(y.add(r * o.ldy) as *mut __m128i, bytes);
                    }
                }
            }
        }
    }
}

/// AVX2 pair panel packing ([`MR`] rows): 16 codes of each row at a time,
/// zero-extended to i16 pairs and transposed (rows 0–3 with a 4 × 4 transpose of i32
/// lanes, rows 4–5 interleaved).
///
/// # Safety
/// The CPU must support AVX2. (Lengths are checked here.)
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn pack(rows: &[&[u8]], k: usize, dst: &mut [i32]) {
    let kpairs = k.div_ceil(2);
    assert!(rows.len() == MR && rows.iter().all(|r| r.len() >= k));
    assert!(dst.len() >= kpairs * MR);
    let groups = k / 16;
    // SAFETY: row loads read bytes [16g, 16g + 16) ⊂ [0, k); stores write pairs
    // p = 8g..8g+8 < kpairs at dst[p·MR..p·MR + MR] (xmm at +0, 8 bytes at +4).
    unsafe {
        let d = dst.as_mut_ptr();
        for g in 0..groups {
            let ld = |i: usize| {
                _mm256_cvtepu8_epi16(_mm_loadu_si128(
                    rows[i].as_ptr().add(16 * g) as *const __m128i
                ))
            };
            let (r0, r1, r2, r3, r4, r5) = (ld(0), ld(1), ld(2), ld(3), ld(4), ld(5));
            let u = transpose4(r0, r1, r2, r3);
            // v: [pairs 0, 1 | 4, 5] of rows 4-5, w: [2, 3 | 6, 7].
            let v = _mm256_unpacklo_epi32(r4, r5);
            let w = _mm256_unpackhi_epi32(r4, r5);
            let p0 = 8 * g;
            for (j, uj) in u.iter().enumerate() {
                _mm_storeu_si128(
                    d.add((p0 + j) * MR) as *mut __m128i,
                    _mm256_castsi256_si128(*uj),
                );
                _mm_storeu_si128(
                    d.add((p0 + j + 4) * MR) as *mut __m128i,
                    _mm256_extracti128_si256::<1>(*uj),
                );
            }
            for (half, x) in [
                (0, _mm256_castsi256_si128(v)),
                (4, _mm256_extracti128_si256::<1>(v)),
                (2, _mm256_castsi256_si128(w)),
                (6, _mm256_extracti128_si256::<1>(w)),
            ] {
                let lo = _mm_cvtsi128_si64(x);
                let hi = _mm_extract_epi64::<1>(x);
                (d.add((p0 + half) * MR + 4) as *mut i64).write_unaligned(lo);
                (d.add((p0 + half + 1) * MR + 4) as *mut i64).write_unaligned(hi);
            }
        }
    }
    for (i, row) in rows.iter().enumerate() {
        super::generic::pack_row_scalar(&row[16 * groups..k], i, &mut dst[8 * groups * MR..]);
    }
}

/// AVX2 quad panel packing ([`QR`] rows): 32 codes (8 quads) of each row at a time,
/// transposed as i32 lanes; the quads past `k` up to an even count are zeroed.
///
/// # Safety
/// The CPU must support AVX2. (Lengths are checked here.)
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn pack_quads(rows: &[&[u8]], k: usize, dst: &mut [i32]) {
    let kq = k.div_ceil(8) * 2;
    assert!(rows.len() == QR && rows.iter().all(|r| r.len() >= k));
    assert!(dst.len() >= kq * QR);
    let groups = k / 32;
    // SAFETY: row loads read bytes [32g, 32g + 32) ⊂ [0, k); stores write quads
    // q = 8g..8g+8 ≤ kq at dst[q·QR..q·QR + QR].
    unsafe {
        let d = dst.as_mut_ptr();
        for g in 0..groups {
            let ld = |i: usize| _mm256_loadu_si256(rows[i].as_ptr().add(32 * g) as *const _);
            let u = transpose4(ld(0), ld(1), ld(2), ld(3));
            let q0 = 8 * g;
            for (j, uj) in u.iter().enumerate() {
                _mm_storeu_si128(
                    d.add((q0 + j) * QR) as *mut __m128i,
                    _mm256_castsi256_si128(*uj),
                );
                _mm_storeu_si128(
                    d.add((q0 + j + 4) * QR) as *mut __m128i,
                    _mm256_extracti128_si256::<1>(*uj),
                );
            }
        }
    }
    let rest = &mut dst[8 * groups * QR..kq * QR];
    rest.fill(0);
    for (i, row) in rows.iter().enumerate() {
        super::generic::pack_quad_row_scalar(&row[32 * groups..k], i, rest);
    }
}

/// Transposes the i32 lanes of four rows: result `j` holds lane `j` of rows 0–3 in its
/// low half and lane `j + 4` in its high half.
///
/// # Safety
/// The CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn transpose4(r0: __m256i, r1: __m256i, r2: __m256i, r3: __m256i) -> [__m256i; 4] {
    let t0 = _mm256_unpacklo_epi32(r0, r1);
    let t1 = _mm256_unpackhi_epi32(r0, r1);
    let t2 = _mm256_unpacklo_epi32(r2, r3);
    let t3 = _mm256_unpackhi_epi32(r2, r3);
    [
        _mm256_unpacklo_epi64(t0, t2),
        _mm256_unpackhi_epi64(t0, t2),
        _mm256_unpacklo_epi64(t1, t3),
        _mm256_unpackhi_epi64(t1, t3),
    ]
}
