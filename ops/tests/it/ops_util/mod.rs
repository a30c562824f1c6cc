//! Shared helpers for the operator tests: concise specs, running through the registry with
//! an infer/eval consistency check, deterministic test data and float comparisons.
#![allow(dead_code)]

use ndarray::{ArrayD, IxDyn};
use ops::{build_op, ArgValue, Args, NodeSpec, Op, OpError, QParams, Tensor};

/// Integer argument.
pub fn i(v: i64) -> ArgValue {
    ArgValue::I(v)
}
/// Float argument.
pub fn f(v: f32) -> ArgValue {
    ArgValue::F(v)
}
/// String argument.
pub fn s(v: &str) -> ArgValue {
    ArgValue::S(v.as_bytes().to_vec())
}
/// Repeated-int argument.
pub fn ints(v: &[i64]) -> ArgValue {
    ArgValue::Ints(v.to_vec())
}
/// Repeated-float argument.
pub fn floats(v: &[f32]) -> ArgValue {
    ArgValue::Floats(v.to_vec())
}

/// A spec from an op type, `(name, value)` arguments and the arity.
pub fn spec(op: &str, args: &[(&str, ArgValue)], n_in: usize, n_out: usize) -> NodeSpec {
    let mut a = Args::new();
    for (n, v) in args {
        a.set(n, v.clone());
    }
    NodeSpec::new(op, a, n_in, n_out)
}

/// A DNNLOWP-engine spec; `reference` selects the scalar reference implementation.
pub fn spec_int8(
    op: &str,
    args: &[(&str, ArgValue)],
    n_in: usize,
    n_out: usize,
    reference: bool,
) -> NodeSpec {
    let mut sp = spec(op, args, n_in, n_out);
    sp.engine = "DNNLOWP".into();
    sp.reference = reference;
    sp
}

/// Builds a DNNLOWP-engine op through the registry (panics if the type is unknown).
pub fn try_build_int8(
    op: &str,
    args: &[(&str, ArgValue)],
    n_in: usize,
    n_out: usize,
    reference: bool,
) -> Result<Box<dyn Op>, OpError> {
    build_op(&spec_int8(op, args, n_in, n_out, reference)).map(|o| o.expect("registered"))
}

/// [`try_build_int8`], failing the test on error.
pub fn build_int8(
    op: &str,
    args: &[(&str, ArgValue)],
    n_in: usize,
    n_out: usize,
    reference: bool,
) -> Box<dyn Op> {
    try_build_int8(op, args, n_in, n_out, reference)
        .unwrap_or_else(|e| panic!("building {op}: {e}"))
}

/// Quantization parameters.
pub fn qp(scale: f32, zero_point: i32) -> QParams {
    QParams { scale, zero_point }
}

/// Int8 tensor literal (uint8 codes).
pub fn qu8(shape: &[usize], v: Vec<u8>, q: QParams) -> Tensor {
    Tensor::QU8(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap(), q)
}

/// Int32 (bias) tensor literal.
pub fn qi32(shape: &[usize], v: Vec<i32>, q: QParams) -> Tensor {
    Tensor::QI32(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap(), q)
}

/// The codes and parameters of an Int8 tensor (fails the test for other types).
pub fn codes(t: &Tensor) -> (Vec<u8>, QParams) {
    match t {
        Tensor::QU8(a, q) => (a.iter().copied().collect(), *q),
        other => panic!("expected qu8, got {:?}", other.dtype()),
    }
}

/// Builds through the registry; panics (test failure) if the op type is unknown.
pub fn try_build(
    op: &str,
    args: &[(&str, ArgValue)],
    n_in: usize,
    n_out: usize,
) -> Result<Box<dyn Op>, OpError> {
    build_op(&spec(op, args, n_in, n_out)).map(|o| o.expect("op type is registered"))
}

/// Builds through the registry, failing the test on error.
pub fn build(op: &str, args: &[(&str, ArgValue)], n_in: usize, n_out: usize) -> Box<dyn Op> {
    match try_build(op, args, n_in, n_out) {
        Ok(o) => o,
        Err(e) => panic!("building {op}: {e}"),
    }
}

/// Runs `eval`, and checks that `infer` on the inputs' descriptions predicts the outputs'.
pub fn run(op: &dyn Op, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
    let infos: Vec<_> = inputs.iter().map(|t| t.info()).collect();
    let inferred = op.infer(&infos);
    let out = op.eval(inputs);
    if let (Ok(inf), Ok(out)) = (&inferred, &out) {
        let got: Vec<_> = out.iter().map(|t| t.info()).collect();
        assert_eq!(inf, &got, "infer disagrees with eval for {}", op.op_type());
    }
    if let (Err(_), Ok(_)) = (&inferred, &out) {
        panic!(
            "infer failed but eval succeeded for {}: {:?}",
            op.op_type(),
            inferred
        );
    }
    out
}

/// Runs and fails the test on error.
pub fn run_ok(op: &dyn Op, inputs: &[&Tensor]) -> Vec<Tensor> {
    run(op, inputs).unwrap_or_else(|e| panic!("{}: {e}", op.op_type()))
}

/// f32 tensor literal.
pub fn t(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::from_f32(shape, v)
}

/// Deterministic pseudo-random values in [-2, 2) from a tiny LCG (independent of ops::rng).
pub fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(12_345);
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
        })
        .collect()
}

/// The f32 values of a tensor.
pub fn vals(t: &Tensor) -> Vec<f32> {
    t.f32_slice().expect("f32 tensor").to_vec()
}

/// Element-wise comparison with an absolute + relative tolerance.
pub fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "lengths differ");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        let ok = (g - w).abs() <= tol * (1.0 + w.abs());
        assert!(ok, "element {k}: got {g}, want {w} (tol {tol})");
    }
}

/// Row-major strides of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        s[k] = s[k + 1] * shape[k + 1];
    }
    s
}

/// Multi-index of flat index `i` in `shape`.
pub fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0usize; shape.len()];
    for k in (0..shape.len()).rev() {
        idx[k] = i % shape[k];
        i /= shape[k];
    }
    idx
}

/// Flat index of a multi-index in `shape`.
pub fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(strides(shape)).map(|(a, b)| a * b).sum()
}

/// Asserts an error of the given variant whose message contains `needle`.
#[macro_export]
macro_rules! assert_err {
    ($res:expr, $variant:ident, $needle:expr) => {{
        match $res {
            Err(ops::OpError::$variant(ref m)) => {
                assert!(m.contains($needle), "message {m:?} lacks {:?}", $needle)
            }
            Err(ref e) => panic!(
                "expected {} error containing {:?}, got {e:?}",
                stringify!($variant),
                $needle
            ),
            Ok(_) => panic!(
                "expected {} error containing {:?}, got Ok",
                stringify!($variant),
                $needle
            ),
        }
    }};
}

/// Asserts a BadArg error for argument `name`.
#[macro_export]
macro_rules! assert_bad_arg {
    ($res:expr, $name:expr) => {{
        match $res {
            Err(ops::OpError::BadArg { ref name, .. }) => assert_eq!(name, $name),
            Err(ref e) => panic!("expected BadArg for {:?}, got {e:?}", $name),
            Ok(_) => panic!("expected BadArg for {:?}, got Ok", $name),
        }
    }};
}

/// Deterministic test data from the crate's own generator (`ops::rng::Rng`: xoshiro256**
/// seeded with SplitMix64), with the helpers the operator tests share.
pub struct TestRng(ops::rng::Rng);

impl TestRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> TestRng {
        TestRng(ops::rng::Rng::new(seed))
    }
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.0.uniform_i64(0, n as i64 - 1) as u64
    }
    /// Uniform in the closed range `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        self.0.uniform_i64(lo, hi)
    }
    /// Uniform `f64` in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        self.0.next_f64()
    }
    /// Uniform `f32` in `[0, 1)`.
    pub fn unit_f32(&mut self) -> f32 {
        self.0.next_f32()
    }
    /// `n` uniform bytes.
    pub fn u8s(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() >> 56) as u8).collect()
    }
    /// Codes: uniform, or (extreme) only 0 and 255.
    pub fn codes(&mut self, n: usize, extreme: bool) -> Vec<u8> {
        if !extreme {
            return self.u8s(n);
        }
        (0..n)
            .map(|_| if self.next() >> 63 == 0 { 0 } else { 255 })
            .collect()
    }
    /// Codes, all extreme with probability `1 / one_in`.
    pub fn some_codes(&mut self, n: usize, one_in: u64) -> Vec<u8> {
        let extreme = self.below(one_in) == 0;
        self.codes(n, extreme)
    }
    /// A zero point: 0, 128, 255 or anything.
    pub fn zp(&mut self) -> i32 {
        match self.below(4) {
            0 => 0,
            1 => 128,
            2 => 255,
            _ => self.below(256) as i32,
        }
    }
}

/// `n` values on the grid of multiples of 1e-4 in `[-1, 1]` (repeats are likely, so ties
/// are tested too).
pub fn rnd(n: usize, seed: u64) -> Vec<f32> {
    let mut r = TestRng::new(seed);
    (0..n)
        .map(|_| r.range(0, 20_000) as f32 / 10_000.0 - 1.0)
        .collect()
}
