//! Single-precision GEMM: `C = epilogue(A · B)` with strided operands.
//!
//! Operators call [`sgemm`] (one thread) or [`sgemm_par`] (tiles of C spread over the
//! current rayon pool); the backend behind them can be swapped without touching the ops.
//! The left operand is either a strided view ([`MatRef`]) or weights packed once ahead of
//! time ([`PackedLhs`], used by operators from `prepare`). Packed operands always run on the
//! packed kernel of [`super::packed`] (AVX2+FMA when the CPU has it, else scalar); views run
//! on [`default_backend`]. [`sgemm_src_par`] takes a right operand that packs itself
//! ([`RhsSource`]), which convolutions use to gather im2col panels without materializing
//! the im2col matrix.
//!
//! **Determinism.** [`sgemm_par`] only splits the rows and columns of C, never the
//! reduction dimension K, and each element of C is computed by the same sequence of
//! floating-point operations whatever tile it lands in. Results are therefore bitwise
//! identical for any number of threads.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use super::isa::Isa;

use rayon::prelude::*;

use super::packed::{gemm_packed, PackedRhs};
pub use super::packed::{Kernel, PackedLhs, RhsSource, MR, NR};

/// A read-only strided view of an `rows × cols` f32 matrix: element `(i, j)` is
/// `data[i * rs + j * cs]`.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> MatRef<'a> {
    /// A view with explicit row and column strides. Panics if the view reaches past
    /// `data` (a programming error: callers derive sizes from validated shapes).
    pub fn new(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * rs + (cols - 1) * cs;
            assert!(
                last < data.len(),
                "matrix view {rows}x{cols} (strides {rs},{cs}) exceeds buffer of {}",
                data.len()
            );
        }
        MatRef {
            data,
            rows,
            cols,
            rs,
            cs,
        }
    }

    /// A row-major view with leading dimension `ld` (distance between rows).
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize, ld: usize) -> Self {
        Self::new(data, rows, cols, ld, 1)
    }

    /// The transposed view (no copy).
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Element `(i, j)`.
    pub fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }

    /// Distance between consecutive columns.
    pub fn col_stride(&self) -> usize {
        self.cs
    }

    /// `len` consecutive elements of row `i` from column `j` (needs `col_stride() == 1`).
    pub fn row_slice(&self, i: usize, j: usize, len: usize) -> &'a [f32] {
        debug_assert_eq!(self.cs, 1);
        let s = i * self.rs + j;
        &self.data[s..s + len]
    }

    /// The sub-matrix of rows `r0..r0+nr` and columns `c0..c0+nc`.
    fn sub(&self, r0: usize, nr: usize, c0: usize, nc: usize) -> MatRef<'a> {
        debug_assert!(r0 + nr <= self.rows && c0 + nc <= self.cols);
        if nr == 0 || nc == 0 {
            return MatRef {
                data: &[],
                rows: nr,
                cols: nc,
                rs: self.rs,
                cs: self.cs,
            };
        }
        let off = r0 * self.rs + c0 * self.cs;
        MatRef {
            data: &self.data[off..],
            rows: nr,
            cols: nc,
            rs: self.rs,
            cs: self.cs,
        }
    }
}

/// The left operand of a product.
#[derive(Debug, Clone, Copy)]
pub enum Lhs<'a> {
    /// A strided view.
    Mat(MatRef<'a>),
    /// Pre-packed panels.
    Packed(&'a PackedLhs),
}

impl<'a> From<MatRef<'a>> for Lhs<'a> {
    fn from(m: MatRef<'a>) -> Self {
        Lhs::Mat(m)
    }
}

impl<'a> From<&'a PackedLhs> for Lhs<'a> {
    fn from(p: &'a PackedLhs) -> Self {
        Lhs::Packed(p)
    }
}

impl Lhs<'_> {
    fn rows(&self) -> usize {
        match self {
            Lhs::Mat(m) => m.rows,
            Lhs::Packed(p) => p.rows(),
        }
    }
    fn cols(&self) -> usize {
        match self {
            Lhs::Mat(m) => m.cols,
            Lhs::Packed(p) => p.cols(),
        }
    }
}

/// Which implementation multiplies unpacked operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The `matrixmultiply` crate.
    MatrixMultiply,
    /// Pack A on the fly, then the packed kernel.
    Packed(Kernel),
}

/// Backend override: 0 = automatic, 1 = matrixmultiply, 2 = packed.
static OVERRIDE: AtomicU8 = AtomicU8::new(0);

/// Forces the backend for all later products in this process (`None` = automatic).
/// For benchmarks and comparisons; results stay correct either way.
pub fn set_backend_override(backend: Option<Backend>) {
    let v = match backend {
        None => 0,
        Some(Backend::MatrixMultiply) => 1,
        Some(Backend::Packed(_)) => 2,
    };
    OVERRIDE.store(v, Ordering::Relaxed);
}

/// The backend used for unpacked operands: the packed kernel when the CPU has AVX2 and
/// FMA (and [`Isa::current`] allows it: `C2Q_ISA=scalar` does not), otherwise
/// `matrixmultiply`. The environment variable `C2Q_GEMM_BACKEND=matrixmultiply` (or
/// [`set_backend_override`]) forces `matrixmultiply` and turns weight prepacking and
/// implicit im2col off.
pub fn default_backend() -> Backend {
    static FORCED_MM: OnceLock<bool> = OnceLock::new();
    match OVERRIDE.load(Ordering::Relaxed) {
        1 => Backend::MatrixMultiply,
        2 => Backend::Packed(packed_kernel()),
        _ => {
            let mm = *FORCED_MM.get_or_init(|| {
                std::env::var("C2Q_GEMM_BACKEND").is_ok_and(|v| v == "matrixmultiply")
            });
            match packed_kernel() {
                Kernel::Scalar => Backend::MatrixMultiply,
                _ if mm => Backend::MatrixMultiply,
                k => Backend::Packed(k),
            }
        }
    }
}

/// True when packing constant weights ahead of time ([`PackedLhs`]) and gathering im2col
/// panels directly pay off, i.e. when the default backend is a SIMD packed kernel.
pub fn prepacking_pays() -> bool {
    matches!(default_backend(), Backend::Packed(k) if k != Kernel::Scalar)
}

/// The microkernel used for packed operands, from [`Isa::current`].
fn packed_kernel() -> Kernel {
    if Isa::current().has_avx2() {
        Kernel::Avx2Fma
    } else {
        Kernel::Scalar
    }
}

/// Bias added to every element of C before the optional ReLU.
#[derive(Debug, Clone, Copy, Default)]
pub enum Bias<'a> {
    /// No bias.
    #[default]
    None,
    /// One value per row of C (`len == m`): NCHW conv.
    PerRow(&'a [f32]),
    /// One value per column of C (`len == n`): FC and NHWC conv.
    PerCol(&'a [f32]),
}

/// What happens to `A · B` before it is stored: `C = relu?(A · B + bias)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// Bias to add.
    pub bias: Bias<'a>,
    /// Apply `max(·, 0)` last.
    pub relu: bool,
}

impl<'a> Epilogue<'a> {
    /// Plain product, no bias, no ReLU.
    pub fn none() -> Self {
        Epilogue::default()
    }

    /// The part of the epilogue that applies to tile rows `r0..`, columns `c0..`.
    fn shifted(&self, r0: usize, c0: usize) -> Epilogue<'a> {
        let bias = match self.bias {
            Bias::None => Bias::None,
            Bias::PerRow(b) => Bias::PerRow(&b[r0..]),
            Bias::PerCol(b) => Bias::PerCol(&b[c0..]),
        };
        Epilogue {
            bias,
            relu: self.relu,
        }
    }
}

fn check(a: &Lhs, b_rows: usize, n: usize, c_len: usize, ldc: usize, ep: &Epilogue) {
    assert_eq!(
        a.cols(),
        b_rows,
        "gemm: A is {}x{} but B has {} rows",
        a.rows(),
        a.cols(),
        b_rows
    );
    let m = a.rows();
    if m > 0 && n > 0 {
        assert!(ldc >= n, "gemm: ldc {ldc} < n {n}");
        assert!(
            (m - 1) * ldc + n <= c_len,
            "gemm: C {m}x{n} (ldc {ldc}) exceeds buffer of {c_len}"
        );
    }
    match ep.bias {
        Bias::None => {}
        Bias::PerRow(v) => assert!(v.len() >= m, "gemm: row bias has {} < {m}", v.len()),
        Bias::PerCol(v) => assert!(v.len() >= n, "gemm: column bias has {} < {n}", v.len()),
    }
}

/// `C = epilogue(A · B)` on the calling thread. C is `A.rows() × B.cols()`, row-major with
/// leading dimension `ldc`; its previous contents are overwritten.
pub fn sgemm(a: Lhs, b: MatRef, c: &mut [f32], ldc: usize, ep: &Epilogue) {
    sgemm_with(default_backend(), a, b, c, ldc, ep)
}

/// [`sgemm`] with an explicit backend for unpacked operands (benchmarks and tests).
pub fn sgemm_with(backend: Backend, a: Lhs, b: MatRef, c: &mut [f32], ldc: usize, ep: &Epilogue) {
    check(&a, b.rows, b.cols, c.len(), ldc, ep);
    let t = Tile {
        r0: 0,
        m: a.rows(),
        c0: 0,
        n: b.cols,
    };
    // SAFETY: `check` and `MatRef::new` established that every index the product touches
    // lies inside the operands and `c` (which we borrow mutably, so nothing aliases).
    unsafe { gemm_tile(backend, a, &b, t, c.as_mut_ptr(), ldc, ep) }
}

/// A raw C pointer shared by the tiles of one parallel GEMM.
#[derive(Clone, Copy)]
struct CPtr(*mut f32);
// SAFETY: tiles write disjoint elements of C (see `plan_tiles`), and the pointer is only
// used while the `&mut [f32]` it came from is borrowed by the caller.
unsafe impl Send for CPtr {}
// SAFETY: as above.
unsafe impl Sync for CPtr {}

impl CPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Smallest tile sizes worth a task of their own.
const MIN_TILE_ROWS: usize = 16;
const MIN_TILE_COLS: usize = 64;

/// Splits `len` into at most `parts` ranges of at least `min` (except when `len < min`),
/// with starts aligned to `align`.
fn split_ranges(len: usize, parts: usize, min: usize, align: usize) -> Vec<(usize, usize)> {
    let parts = parts.clamp(1, (len / min.max(1)).max(1));
    let step = len.div_ceil(parts).div_ceil(align) * align;
    let mut out = Vec::with_capacity(parts);
    let mut s = 0;
    while s < len {
        let e = (s + step).min(len);
        out.push((s, e - s));
        s = e;
    }
    if out.is_empty() {
        out.push((0, 0));
    }
    out
}

/// One block of C: rows `r0..r0+m`, columns `c0..c0+n`.
#[derive(Debug, Clone, Copy)]
struct Tile {
    r0: usize,
    m: usize,
    c0: usize,
    n: usize,
}

/// Tiles covering the `m × n` product for the current rayon pool (one tile when the pool
/// has one thread or the product is small). Splitting columns costs a re-pack of A per
/// tile (free when A is pre-packed); splitting rows would re-pack B per tile, so row-split
/// products pack B once up front ([`PackedRhs`]). K is never split.
fn plan_tiles(m: usize, n: usize, k: usize, a_packed: bool) -> Vec<Tile> {
    let threads = rayon::current_num_threads();
    if threads <= 1 || m * n * k < (1 << 16) {
        return vec![Tile { r0: 0, m, c0: 0, n }];
    }
    let want = threads * 3;
    let cols_ok = n / MIN_TILE_COLS >= want;
    let rows_ok = m / MIN_TILE_ROWS >= want;
    let cols_cheaper = a_packed || m <= n;
    let (row_parts, col_parts) = if cols_ok && (cols_cheaper || !rows_ok) {
        (1, want)
    } else if rows_ok {
        (want, 1)
    } else {
        let rp = (m / MIN_TILE_ROWS).max(1);
        (rp, want.div_ceil(rp))
    };
    let rows = split_ranges(m, row_parts, MIN_TILE_ROWS, MR);
    let cols = split_ranges(n, col_parts, MIN_TILE_COLS, NR);
    rows.iter()
        .flat_map(|&(r0, m)| cols.iter().map(move |&(c0, n)| Tile { r0, m, c0, n }))
        .collect()
}

/// Runs the packed kernel over `tiles`, packing B once first when rows are split.
///
/// # Safety
/// `c` must be valid for the whole `a.rows() × b.cols()` product at stride `ldc` and not
/// aliased; the tiles must be disjoint and inside it; operands consistent (see `check`).
#[allow(clippy::too_many_arguments)]
unsafe fn run_packed_tiles<B: RhsSource + ?Sized>(
    kernel: Kernel,
    a: Lhs,
    b: &B,
    tiles: &[Tile],
    c: *mut f32,
    ldc: usize,
    ep: &Epilogue,
) {
    let cp = CPtr(c);
    let row_split = tiles.iter().any(|t| t.r0 > 0);
    let pre = (row_split && a.cols() > 0).then(|| PackedRhs::pack(b, true));
    tiles.par_iter().for_each(|&t| {
        // SAFETY: per the contract, each tile is a disjoint in-bounds block of C.
        unsafe {
            packed_tile(
                kernel,
                a,
                b,
                pre.as_ref(),
                t,
                cp.get().add(t.r0 * ldc + t.c0),
                ldc,
                ep,
            )
        }
    });
}

/// Like [`sgemm`] but spread over the current rayon pool in tiles of C. Bitwise identical
/// to [`sgemm`] for any thread count (K is never split).
pub fn sgemm_par(a: Lhs, b: MatRef, c: &mut [f32], ldc: usize, ep: &Epilogue) {
    sgemm_par_with(default_backend(), a, b, c, ldc, ep)
}

/// [`sgemm_par`] with an explicit backend for unpacked operands.
pub fn sgemm_par_with(
    backend: Backend,
    a: Lhs,
    b: MatRef,
    c: &mut [f32],
    ldc: usize,
    ep: &Epilogue,
) {
    check(&a, b.rows, b.cols, c.len(), ldc, ep);
    let a_packed = matches!(a, Lhs::Packed(_));
    let tiles = plan_tiles(a.rows(), b.cols, a.cols(), a_packed);
    let kernel = match (a, backend) {
        (Lhs::Mat(_), Backend::MatrixMultiply) => None,
        (_, Backend::Packed(k)) => Some(k),
        (Lhs::Packed(_), Backend::MatrixMultiply) => Some(packed_kernel()),
    };
    match kernel {
        // SAFETY: `check` validated C's extent for the whole product; tiles are disjoint.
        Some(k) => unsafe { run_packed_tiles(k, a, &b, &tiles, c.as_mut_ptr(), ldc, ep) },
        None => {
            let cp = CPtr(c.as_mut_ptr());
            tiles.par_iter().for_each(|&t| {
                // SAFETY: `check` validated C's extent for the whole m×n product; tiles
                // are disjoint, so the writes stay in bounds and never race.
                unsafe { gemm_tile(backend, a, &b, t, cp.get().add(t.r0 * ldc + t.c0), ldc, ep) }
            });
        }
    }
}

/// `C = epilogue(A · B)` for a right operand that packs itself (e.g. implicit im2col),
/// on the packed kernel, spread over the current rayon pool like [`sgemm_par`] (and as
/// deterministic). Intended for when [`prepacking_pays`] is true; it works regardless.
pub fn sgemm_src_par(a: Lhs, b: &dyn RhsSource, c: &mut [f32], ldc: usize, ep: &Epilogue) {
    check(&a, b.rows(), b.cols(), c.len(), ldc, ep);
    let a_packed = matches!(a, Lhs::Packed(_));
    let tiles = plan_tiles(a.rows(), b.cols(), a.cols(), a_packed);
    // SAFETY: `check` validated C's extent for the whole product; tiles are disjoint.
    unsafe { run_packed_tiles(packed_kernel(), a, b, &tiles, c.as_mut_ptr(), ldc, ep) }
}

/// [`sgemm_src_par`] on the calling thread.
pub fn sgemm_src(a: Lhs, b: &dyn RhsSource, c: &mut [f32], ldc: usize, ep: &Epilogue) {
    check(&a, b.rows(), b.cols(), c.len(), ldc, ep);
    let t = Tile {
        r0: 0,
        m: a.rows(),
        c0: 0,
        n: b.cols(),
    };
    // SAFETY: `check` validated C's extent for the whole product, borrowed mutably.
    unsafe { packed_tile(packed_kernel(), a, b, None, t, c.as_mut_ptr(), ldc, ep) }
}

/// Computes tile `t` of `A · B` into `c` (row stride `ldc`, pointing at the tile's first
/// element) and applies the epilogue. `t.r0` is a multiple of [`MR`] when A is packed.
///
/// # Safety
/// `c` must be valid for writes of `t.m` rows of `t.n` elements with stride `ldc`, not
/// aliased by anything else during the call; `a`, `b` and `ep` must be consistent with
/// the whole product (`a.cols() == b.rows()`, tile in range, bias long enough).
unsafe fn gemm_tile(
    backend: Backend,
    a: Lhs,
    b: &MatRef,
    t: Tile,
    c: *mut f32,
    ldc: usize,
    ep: &Epilogue,
) {
    match (a, backend) {
        (Lhs::Mat(am), Backend::MatrixMultiply) => {
            if t.m == 0 || t.n == 0 {
                return;
            }
            let k = am.cols;
            if k > 0 {
                let at = am.sub(t.r0, t.m, 0, k);
                let bt = b.sub(0, k, t.c0, t.n);
                // SAFETY: the views were bounds-checked at construction and the caller
                // guarantees C; matrixmultiply reads A and B only at the given strides
                // and writes C only in m×n.
                unsafe { mm_sgemm(at, bt, c, ldc) }
            }
            // SAFETY: forwarded contract.
            unsafe { finish_tile(t, k == 0, c, ldc, ep) }
        }
        (_, Backend::Packed(kernel)) => {
            // SAFETY: forwarded contract.
            unsafe { packed_tile(kernel, a, b, None, t, c, ldc, ep) }
        }
        (Lhs::Packed(_), Backend::MatrixMultiply) => {
            // SAFETY: forwarded contract.
            unsafe { packed_tile(packed_kernel(), a, b, None, t, c, ldc, ep) }
        }
    }
}

/// Tile `t` on the packed kernel (packing A on the fly unless it is pre-packed).
///
/// # Safety
/// As for [`gemm_tile`].
#[allow(clippy::too_many_arguments)]
unsafe fn packed_tile<B: RhsSource + ?Sized>(
    kernel: Kernel,
    a: Lhs,
    b: &B,
    pre: Option<&PackedRhs>,
    t: Tile,
    c: *mut f32,
    ldc: usize,
    ep: &Epilogue,
) {
    if t.m == 0 || t.n == 0 {
        return;
    }
    let k = a.cols();
    if k > 0 {
        match a {
            Lhs::Packed(p) => {
                debug_assert_eq!(t.r0 % MR, 0);
                let panels = p.panels(t.r0 / MR, t.m);
                // SAFETY: the caller guarantees C for the tile; the panels cover its rows.
                unsafe { gemm_packed(kernel, panels, t.m, k, b, pre, t.c0, t.n, c, ldc) }
            }
            Lhs::Mat(am) => {
                let p = PackedLhs::pack(am.sub(t.r0, t.m, 0, k));
                // SAFETY: as above; `p` holds exactly the rows of this tile.
                unsafe { gemm_packed(kernel, p.panels(0, t.m), t.m, k, b, pre, t.c0, t.n, c, ldc) }
            }
        }
    }
    // SAFETY: forwarded contract.
    unsafe { finish_tile(t, k == 0, c, ldc, ep) }
}

/// Zeroes the tile when K is empty, then applies the epilogue.
///
/// # Safety
/// As for [`gemm_tile`].
unsafe fn finish_tile(t: Tile, zero: bool, c: *mut f32, ldc: usize, ep: &Epilogue) {
    if !zero && matches!(ep.bias, Bias::None) && !ep.relu {
        return;
    }
    let ep = ep.shifted(t.r0, t.c0);
    for i in 0..t.m {
        // SAFETY: row i of the tile is in bounds and exclusively ours per the contract.
        let row = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), t.n) };
        if zero {
            row.fill(0.0);
        }
        apply_epilogue(row, i, &ep);
    }
}

/// `C = A · B` through `matrixmultiply`.
///
/// # Safety
/// `c` must be valid for `a.rows() × b.cols()` writes at stride `ldc`, unaliased.
unsafe fn mm_sgemm(a: MatRef, b: MatRef, c: *mut f32, ldc: usize) {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    // SAFETY: forwarded contract; the views were bounds-checked at construction.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.data.as_ptr(),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr(),
            b.rs as isize,
            b.cs as isize,
            0.0,
            c,
            ldc as isize,
            1,
        );
    }
}

/// Adds the bias to row `i` of a tile and applies the ReLU.
fn apply_epilogue(row: &mut [f32], i: usize, ep: &Epilogue) {
    match ep.bias {
        Bias::None => {}
        Bias::PerRow(b) => {
            let v = b[i];
            row.iter_mut().for_each(|x| *x += v);
        }
        Bias::PerCol(b) => row.iter_mut().zip(b).for_each(|(x, &v)| *x += v),
    }
    if ep.relu {
        row.iter_mut().for_each(|x| *x = x.max(0.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &MatRef, b: &MatRef) -> Vec<f64> {
        let mut c = vec![0.0f64; a.rows() * b.cols()];
        for i in 0..a.rows() {
            for j in 0..b.cols() {
                let mut s = 0.0f64;
                for p in 0..a.cols() {
                    s += a.at(i, p) as f64 * b.at(p, j) as f64;
                }
                c[i * b.cols() + j] = s;
            }
        }
        c
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1103515245).wrapping_add(12345);
                ((s >> 9) % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn strided_transposed_bias_relu() {
        for &(m, n, k) in &[(1, 1, 1), (3, 5, 7), (17, 33, 9), (40, 70, 100), (5, 3, 0)] {
            let av = data(m * k + 3, 1);
            let bv = data(k * n + 5, 2);
            // A row-major with ld k+0, B given transposed (stored n x k).
            let a = MatRef::row_major(&av, m, k, k);
            let bt_store = MatRef::row_major(&bv, n, k, k);
            let b = bt_store.t();
            let bias_r = data(m, 3);
            let bias_c = data(n, 4);
            let want = naive(&a, &b);
            for (ep_i, ep) in [
                Epilogue::none(),
                Epilogue {
                    bias: Bias::PerRow(&bias_r),
                    relu: false,
                },
                Epilogue {
                    bias: Bias::PerCol(&bias_c),
                    relu: true,
                },
            ]
            .iter()
            .enumerate()
            {
                let ldc = n + 2;
                let mut c = vec![f32::NAN; m * ldc];
                let mut c_mm = vec![f32::NAN; m * ldc];
                sgemm(a.into(), b, &mut c, ldc, ep);
                sgemm_with(Backend::MatrixMultiply, a.into(), b, &mut c_mm, ldc, ep);
                let packed = PackedLhs::pack(a);
                let mut c_pre = vec![f32::NAN; m * ldc];
                sgemm((&packed).into(), b, &mut c_pre, ldc, ep);
                // Pre-packed and packed-on-the-fly run the same kernel: same bits.
                assert_eq!(
                    c.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    c_pre.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                );
                for i in 0..m {
                    for j in 0..n {
                        let mut w = want[i * n + j];
                        match ep_i {
                            1 => w += bias_r[i] as f64,
                            2 => w = (w + bias_c[j] as f64).max(0.0),
                            _ => {}
                        }
                        let got = c[i * ldc + j] as f64;
                        assert!(
                            (got - w).abs() < 1e-4,
                            "{m}x{n}x{k} ({i},{j}): {got} vs {w}"
                        );
                    }
                    // Padding columns untouched.
                    for j in n..ldc {
                        assert!(c[i * ldc + j].is_nan());
                    }
                }
            }
        }
    }

    #[test]
    fn parallel_is_bitwise_identical() {
        let (m, n, k) = (96, 300, 257);
        let av = data(m * k, 5);
        let bv = data(k * n, 6);
        let bias = data(m, 7);
        let a = MatRef::row_major(&av, m, k, k);
        let b = MatRef::row_major(&bv, k, n, n);
        let ep = Epilogue {
            bias: Bias::PerRow(&bias),
            relu: true,
        };
        let mut c1 = vec![0.0; m * n];
        let mut c2 = vec![0.0; m * n];
        let mut c3 = vec![0.0; m * n];
        sgemm(a.into(), b, &mut c1, n, &ep);
        let p2 = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        p2.install(|| sgemm_par(a.into(), b, &mut c2, n, &ep));
        let p1 = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        p1.install(|| sgemm_par(a.into(), b, &mut c3, n, &ep));
        assert_eq!(c1, c2);
        assert_eq!(c1, c3);
        // And correct.
        let want = naive(&a, &b);
        for i in 0..m {
            for j in 0..n {
                let w = (want[i * n + j] + bias[i] as f64).max(0.0);
                assert!((c2[i * n + j] as f64 - w).abs() < 1e-3);
            }
        }
        // Wide-and-short shape splits columns.
        let (m, n, k) = (8, 2000, 50);
        let av = data(m * k, 8);
        let bv = data(k * n, 9);
        let a = MatRef::row_major(&av, m, k, k);
        let b = MatRef::row_major(&bv, k, n, n);
        let mut c1 = vec![0.0; m * n];
        let mut c2 = vec![0.0; m * n];
        sgemm(a.into(), b, &mut c1, n, &Epilogue::none());
        p2.install(|| sgemm_par(a.into(), b, &mut c2, n, &Epilogue::none()));
        assert_eq!(c1, c2);
    }

    #[test]
    fn split_ranges_cover() {
        for &(len, parts, min, align) in &[
            (100, 6, 16, 8),
            (7, 4, 16, 8),
            (1000, 3, 64, 16),
            (0, 3, 1, 1),
        ] {
            let r = split_ranges(len, parts, min, align);
            let mut pos = 0;
            for &(s, l) in &r {
                assert_eq!(s, pos);
                pos += l;
            }
            assert_eq!(pos, len);
            assert!(r.len() <= parts.max(1));
        }
    }
}
