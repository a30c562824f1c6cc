//! `y[i] = table[x[i]]` over uint8 codes: any function of one Int8 code, applied as a
//! 256-entry table (`Int8Lut`, the fused Int8Dequantize → Clip/Relu → Int8Quantize chains).
//!
//! AVX-512 VBMI: `vpermi2b` looks up 64 codes at once in a 128-entry table held in two zmm
//! registers; two lookups (entries 0–127 and 128–255) and a blend on each code's top bit give
//! the full table, about four instructions per 64 codes. Elsewhere a plain loop.

use super::isa::Isa;

/// Maps every code of `x` through `table` into `y` (same length).
pub fn map(x: &[u8], table: &[u8; 256], y: &mut [u8]) {
    assert_eq!(x.len(), y.len(), "lut: input and output lengths differ");
    #[cfg(target_arch = "x86_64")]
    if vbmi() {
        // SAFETY: `vbmi` checked AVX-512 F/BW (the level in use) and VBMI on this CPU.
        unsafe { map_vbmi(x, table, y) };
        return;
    }
    map_portable(x, table, y);
}

/// [`map`] over `rows` rows of `len` codes: row `r` of `x` starts at `r·ldx`, its image in `y`
/// at `r·ldy` (the table is loaded once for all rows: an Int8Concat maps many short row
/// segments).
pub fn map_rows(
    x: &[u8],
    ldx: usize,
    table: &[u8; 256],
    y: &mut [u8],
    ldy: usize,
    len: usize,
    rows: usize,
) {
    if rows == 0 || len == 0 {
        return;
    }
    assert!(
        len <= ldx && len <= ldy,
        "lut: rows longer than their stride"
    );
    assert!(
        (rows - 1) * ldx + len <= x.len() && (rows - 1) * ldy + len <= y.len(),
        "lut: rows out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    if vbmi() {
        // SAFETY: `vbmi` checked AVX-512 F/BW (the level in use) and VBMI on this CPU; the
        // rows lie within `x` and `y` (asserted above).
        unsafe { map_rows_vbmi(x, ldx, table, y, ldy, len, rows) };
        return;
    }
    for r in 0..rows {
        map_portable(
            &x[r * ldx..r * ldx + len],
            table,
            &mut y[r * ldy..r * ldy + len],
        );
    }
}

/// Maps every code of `y` through `table` in place (through a small stack buffer, 4 KiB
/// at a time, so that the vector path reads and writes distinct slices).
pub fn map_in_place(y: &mut [u8], table: &[u8; 256]) {
    let mut tmp = [0u8; 4096];
    for piece in y.chunks_mut(tmp.len()) {
        let t = &mut tmp[..piece.len()];
        t.copy_from_slice(piece);
        map(t, table, piece);
    }
}

/// The portable loop (the definition).
pub fn map_portable(x: &[u8], table: &[u8; 256], y: &mut [u8]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = table[usize::from(v)];
    }
}

/// True when the VBMI path may run: the level in use has AVX-512 and the CPU has VBMI.
#[cfg(target_arch = "x86_64")]
pub fn vbmi() -> bool {
    Isa::current().has_avx512() && std::is_x86_feature_detected!("avx512vbmi")
}

/// True when the VBMI path may run (never on this architecture).
#[cfg(not(target_arch = "x86_64"))]
pub fn vbmi() -> bool {
    let _ = Isa::current();
    false
}

/// [`map_rows`] with `vpermi2b`: the table loaded once into four registers, then 64 codes
/// per step, each row's tail through a masked load and store.
///
/// # Safety
/// The CPU must support AVX-512 F/BW and VBMI; `rows` rows of `len` codes at strides `ldx`
/// and `ldy` must lie within `x` and `y`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
#[allow(clippy::too_many_arguments)]
unsafe fn map_rows_vbmi(
    x: &[u8],
    ldx: usize,
    table: &[u8; 256],
    y: &mut [u8],
    ldy: usize,
    len: usize,
    rows: usize,
) {
    use std::arch::x86_64::*;
    // SAFETY: the table loads read its 256 bytes; row r's loads and stores cover
    // `r·ld .. r·ld + len` (full chunks of 64, then a tail masked to its length), inside `x`
    // and `y` by the caller's contract.
    unsafe {
        let t = table.as_ptr() as *const __m512i;
        let (t0, t1) = (_mm512_loadu_si512(t), _mm512_loadu_si512(t.add(1)));
        let (t2, t3) = (_mm512_loadu_si512(t.add(2)), _mm512_loadu_si512(t.add(3)));
        let look = |i: __m512i| -> __m512i {
            let lo = _mm512_permutex2var_epi8(t0, i, t1);
            let hi = _mm512_permutex2var_epi8(t2, i, t3);
            _mm512_mask_blend_epi8(_mm512_movepi8_mask(i), lo, hi)
        };
        let full = len / 64 * 64;
        let m: __mmask64 = if full < len {
            (1u64 << (len - full)) - 1
        } else {
            0
        };
        for r in 0..rows {
            let (xr, yr) = (x.as_ptr().add(r * ldx), y.as_mut_ptr().add(r * ldy));
            for at in (0..full).step_by(64) {
                let i = _mm512_loadu_si512(xr.add(at) as *const __m512i);
                _mm512_storeu_si512(yr.add(at) as *mut __m512i, look(i));
            }
            if m != 0 {
                let i = _mm512_maskz_loadu_epi8(m, xr.add(full) as *const i8);
                _mm512_mask_storeu_epi8(yr.add(full) as *mut i8, m, look(i));
            }
        }
    }
}

/// [`map`] with `vpermi2b`: one row of [`map_rows_vbmi`].
///
/// # Safety
/// The CPU must support AVX-512 F/BW and VBMI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
pub unsafe fn map_vbmi(x: &[u8], table: &[u8; 256], y: &mut [u8]) {
    assert_eq!(x.len(), y.len());
    let n = x.len();
    // SAFETY: VBMI and AVX-512 F/BW present (caller); one row of `n` codes lies within `x`
    // and `y` (equal lengths, asserted above).
    unsafe { map_rows_vbmi(x, n, table, y, n, n, 1) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_rows_maps_each_row_and_nothing_else() {
        // Rows of 0..=130 codes at strides with slack on both sides: each row equals the
        // table applied to its source, the gaps between rows keep their old bytes (on the
        // VBMI path where the CPU has it, else the portable loop).
        let table: [u8; 256] = std::array::from_fn(|i| (i as u8).wrapping_mul(73) ^ 0x33);
        for len in [0usize, 1, 5, 63, 64, 65, 127, 128, 130] {
            let (ldx, ldy, rows) = (len + 3, len + 7, 5);
            let x: Vec<u8> = (0..rows * ldx).map(|i| (i * 31 % 256) as u8).collect();
            let mut y = vec![0xEEu8; rows * ldy];
            map_rows(&x, ldx, &table, &mut y, ldy, len, rows);
            for r in 0..rows {
                for c in 0..ldy {
                    let want = if c < len {
                        table[usize::from(x[r * ldx + c])]
                    } else {
                        0xEE
                    };
                    assert_eq!(y[r * ldy + c], want, "len {len}, row {r}, col {c}");
                }
            }
        }
    }

    #[test]
    fn vbmi_matches_the_loop_at_every_length() {
        #[cfg(target_arch = "x86_64")]
        {
            if !std::is_x86_feature_detected!("avx512vbmi") || !Isa::Avx512.supported() {
                eprintln!("skipping the VBMI check: this CPU has no AVX-512 VBMI");
                return;
            }
            let table: [u8; 256] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0x5a);
            let x: Vec<u8> = (0..300u32).map(|i| (i * 97 % 256) as u8).collect();
            for n in 0..=300 {
                let mut want = vec![0u8; n];
                map_portable(&x[..n], &table, &mut want);
                let mut got = vec![0xEEu8; n + 1];
                // SAFETY: VBMI and AVX-512 checked above.
                unsafe { map_vbmi(&x[..n], &table, &mut got[..n]) };
                assert_eq!(&got[..n], &want[..], "n = {n}");
                assert_eq!(got[n], 0xEE, "wrote past the end, n = {n}");
                assert!(want
                    .iter()
                    .zip(&x)
                    .all(|(&w, &v)| w == table[usize::from(v)]));
            }
        }
    }
}
