//! Argument resolution and output-size rules shared by Conv and the pooling ops
//! (Caffe2 `ConvPoolOpBase`).
//!
//! [`ConvPoolGeometry::from_args`] resolves the three spellings of every quantity
//! (`kernels` / `kernel` / `kernel_h`+`kernel_w`, and the same for strides, dilations and
//! pads), `group`, `order`, `legacy_pad` and `global_pooling`, and checks them the way
//! Caffe2 does. [`ConvPoolGeometry::plan`] then resolves the per-input quantities (global
//! kernel, legacy padding) and the output size for one input's spatial dimensions. The
//! int8 operators reuse both.

use crate::{Args, OpError, OpResult};

/// Memory order of an image tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Channels first: `[N, C, spatial...]`.
    Nchw,
    /// Channels last: `[N, spatial..., C]`.
    Nhwc,
}

impl Order {
    /// Parses Caffe2's `order` argument (`"NCHW"` or `"NHWC"`).
    pub fn parse(s: &str) -> OpResult<Order> {
        match s {
            "NCHW" => Ok(Order::Nchw),
            "NHWC" => Ok(Order::Nhwc),
            other => Err(bad(
                "order",
                format!("expected \"NCHW\" or \"NHWC\", got {other:?}"),
            )),
        }
    }

    /// Index of the channel axis in a tensor of rank `rank`.
    pub fn channel_axis(self, rank: usize) -> usize {
        match self {
            Order::Nchw => 1,
            Order::Nhwc => rank.saturating_sub(1),
        }
    }

    /// The spatial dimensions of a `[N, ...]` tensor shape in this order.
    pub fn spatial(self, shape: &[usize]) -> &[usize] {
        match self {
            Order::Nchw => shape.get(2..).unwrap_or(&[]),
            Order::Nhwc => {
                if shape.len() >= 2 {
                    &shape[1..shape.len() - 1]
                } else {
                    &[]
                }
            }
        }
    }
}

/// Caffe2 `LegacyPadding` (argument `legacy_pad`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyPad {
    /// 0: explicit pads are used as given.
    NotSet,
    /// 1: no padding; out = (in - dk) / stride + 1.
    Valid,
    /// 2: pads chosen so that out = ceil(in / stride); the extra pixel goes to the tail.
    Same,
    /// 3: Caffe-1 pooling (ceil mode); only the head pad is given, the tail is derived.
    CaffeLegacyPooling,
}

impl LegacyPad {
    /// From the integer value of `legacy_pad`.
    pub fn from_i64(v: i64) -> OpResult<LegacyPad> {
        match v {
            0 => Ok(LegacyPad::NotSet),
            1 => Ok(LegacyPad::Valid),
            2 => Ok(LegacyPad::Same),
            3 => Ok(LegacyPad::CaffeLegacyPooling),
            other => Err(bad(
                "legacy_pad",
                format!("expected 0 (NOTSET), 1 (VALID), 2 (SAME) or 3 (CAFFE_LEGACY_POOLING), got {other}"),
            )),
        }
    }
}

/// Resolved conv/pool arguments (Caffe2 `ConvPoolOpBase`), independent of the input size.
///
/// All per-dimension vectors have one entry per spatial dimension (`ndim()`); `pads` is
/// `[head_0, head_1, ..., tail_0, tail_1, ...]`, i.e. `[pad_t, pad_l, pad_b, pad_r]` in 2-D.
/// With `global` set, `kernel` holds zeros until [`ConvPoolGeometry::plan`] takes the input
/// size as the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvPoolGeometry {
    /// Kernel size per spatial dimension (0 only for global pooling).
    pub kernel: Vec<usize>,
    /// Stride per spatial dimension (>= 1).
    pub stride: Vec<usize>,
    /// Dilation per spatial dimension (>= 1).
    pub dilation: Vec<usize>,
    /// Explicit pads: all heads, then all tails.
    pub pads: Vec<usize>,
    /// Number of groups (>= 1).
    pub group: usize,
    /// Memory order of input and output.
    pub order: Order,
    /// Legacy padding mode.
    pub legacy_pad: LegacyPad,
    /// `global_pooling`: the kernel covers the whole input, output is 1 per spatial dim.
    pub global: bool,
}

/// Window geometry resolved for one input size: what the kernels loop over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpatialPlan {
    /// Input spatial size.
    pub input: Vec<usize>,
    /// Output spatial size (every entry >= 1).
    pub output: Vec<usize>,
    /// Kernel size (the input size for global pooling).
    pub kernel: Vec<usize>,
    /// Stride.
    pub stride: Vec<usize>,
    /// Dilation.
    pub dilation: Vec<usize>,
    /// Effective head pads (top, left, ...).
    pub pad_head: Vec<usize>,
    /// Effective tail pads (bottom, right, ...), after legacy padding.
    pub pad_tail: Vec<usize>,
}

fn bad(name: &str, msg: impl Into<String>) -> OpError {
    OpError::BadArg {
        name: name.to_string(),
        msg: msg.into(),
    }
}

/// Largest accepted kernel/stride/dilation/pad value (Caffe2 stores them as `int`).
const MAX_ARG: i64 = i32::MAX as i64;

fn to_usize(name: &str, v: i64, min: usize) -> OpResult<usize> {
    match usize::try_from(v) {
        Ok(u) if u >= min && v <= MAX_ARG => Ok(u),
        _ => Err(bad(name, format!("must be in {min}..={MAX_ARG}, got {v}"))),
    }
}

/// Reads one quantity given as `<plural>` (repeated), `<single>` (all dims), or the
/// per-dimension names (all of them required). The single form fills `single_len` entries.
/// Returns `None` when none is present.
fn resolve_triple(
    args: &Args,
    plural: &str,
    single: &str,
    split: &[&str],
    min: usize,
    single_len: usize,
) -> OpResult<Option<Vec<usize>>> {
    let repeated = args.ints(plural)?.filter(|v| !v.is_empty());
    let single_v = args.int(single)?;
    let present: Vec<&str> = split.iter().copied().filter(|n| args.has(n)).collect();
    if let Some(v) = repeated {
        if !present.is_empty() {
            return Err(bad(
                plural,
                format!("cannot be combined with {}", present.join("/")),
            ));
        }
        // Caffe2 lets a non-empty repeated form win over the single one.
        let out = v
            .iter()
            .map(|&x| to_usize(plural, x, min))
            .collect::<OpResult<Vec<_>>>()?;
        return Ok(Some(out));
    }
    if let Some(s) = single_v {
        let s = to_usize(single, s, min)?;
        return Ok(Some(vec![s; single_len]));
    }
    if present.is_empty() {
        return Ok(None);
    }
    if present.len() != split.len() {
        let missing: Vec<&str> = split.iter().copied().filter(|n| !args.has(n)).collect();
        return Err(bad(
            present[0],
            format!(
                "{} given without {} (all of {} are required)",
                present.join("/"),
                missing.join("/"),
                split.join(", ")
            ),
        ));
    }
    let mut out = Vec::with_capacity(split.len());
    for name in split {
        let v = args.int(name)?.unwrap_or(0);
        out.push(to_usize(name, v, min)?);
    }
    Ok(Some(out))
}

impl ConvPoolGeometry {
    /// Resolves the conv/pool arguments exactly as Caffe2's `ConvPoolOpBase` does.
    ///
    /// `is_pool` enables `global_pooling` and rejects dilation (Caffe2 pools ignore it and
    /// DNNLOWP pools reject it). Errors are [`OpError::BadArg`] naming the argument.
    pub fn from_args(args: &Args, is_pool: bool) -> OpResult<ConvPoolGeometry> {
        let order = Order::parse(&args.string_or("order", "NCHW")?)?;
        let legacy_pad = LegacyPad::from_i64(args.int_or("legacy_pad", 0)?)?;
        let global = args.int_or("global_pooling", 0)? != 0;
        if global && !is_pool {
            return Err(bad("global_pooling", "only pooling operators accept it"));
        }
        let group = to_usize("group", args.int_or("group", 1)?, 1)?;

        let kernel = resolve_triple(args, "kernels", "kernel", &["kernel_h", "kernel_w"], 0, 2)?;
        let kernel = match kernel {
            Some(k) => k,
            None if global => vec![0, 0],
            None => {
                return Err(bad(
                    "kernel",
                    "not set: give `kernel`, `kernels` or `kernel_h` and `kernel_w`",
                ))
            }
        };
        let nd = kernel.len();
        if !global {
            if let Some(i) = kernel.iter().position(|&k| k == 0) {
                return Err(bad(
                    "kernel",
                    format!("kernel size must be > 0, got {kernel:?} (dim {i})"),
                ));
            }
        }

        let stride = resolve_triple(args, "strides", "stride", &["stride_h", "stride_w"], 1, nd)?
            .unwrap_or_else(|| vec![1; nd]);
        let dilation = resolve_triple(
            args,
            "dilations",
            "dilation",
            &["dilation_h", "dilation_w"],
            1,
            nd,
        )?
        .unwrap_or_else(|| vec![1; nd]);
        let pads_given = args.has("pads")
            || args.has("pad")
            || ["pad_t", "pad_l", "pad_b", "pad_r"]
                .iter()
                .any(|n| args.has(n));
        let pads = resolve_triple(
            args,
            "pads",
            "pad",
            &["pad_t", "pad_l", "pad_b", "pad_r"],
            0,
            2 * nd,
        )?
        .unwrap_or_else(|| vec![0; 2 * nd]);

        if stride.len() != nd {
            return Err(bad(
                "strides",
                format!(
                    "{stride:?} has {} entries, kernel {kernel:?} has {nd}",
                    stride.len()
                ),
            ));
        }
        if dilation.len() != nd {
            return Err(bad(
                "dilations",
                format!(
                    "{dilation:?} has {} entries, kernel {kernel:?} has {nd}",
                    dilation.len()
                ),
            ));
        }
        if pads.len() != 2 * nd {
            return Err(bad(
                "pads",
                format!(
                    "{pads:?} has {} entries, expected {} for kernel {kernel:?}",
                    pads.len(),
                    2 * nd
                ),
            ));
        }
        if matches!(legacy_pad, LegacyPad::Valid | LegacyPad::Same) && pads_given {
            return Err(bad(
                "legacy_pad",
                "with VALID or SAME legacy padding no explicit pads may be given",
            ));
        }
        if legacy_pad == LegacyPad::Same && dilation.iter().any(|&d| d != 1) {
            return Err(bad(
                "legacy_pad",
                format!("SAME padding does not support dilation {dilation:?}"),
            ));
        }
        if global
            && (pads.iter().any(|&p| p != 0)
                || stride.iter().any(|&s| s != 1)
                || dilation.iter().any(|&d| d != 1))
        {
            return Err(bad(
                "global_pooling",
                format!(
                    "pads, stride and dilation must not be set (pads {pads:?}, stride {stride:?}, dilation {dilation:?})"
                ),
            ));
        }
        if group != 1 && dilation.iter().any(|&d| d != 1) {
            return Err(bad(
                "group",
                format!("group {group} cannot be combined with dilation {dilation:?}"),
            ));
        }
        if is_pool && dilation.iter().any(|&d| d != 1) {
            return Err(bad(
                "dilation",
                format!("pooling does not support dilation {dilation:?}"),
            ));
        }
        Ok(ConvPoolGeometry {
            kernel,
            stride,
            dilation,
            pads,
            group,
            order,
            legacy_pad,
            global,
        })
    }

    /// Number of spatial dimensions (the kernel's length).
    pub fn ndim(&self) -> usize {
        self.kernel.len()
    }

    /// Output spatial size for an input spatial size (see [`ConvPoolGeometry::plan`]).
    pub fn output_size(&self, input: &[usize]) -> OpResult<Vec<usize>> {
        Ok(self.plan(input)?.output)
    }

    /// Resolves kernel (global pooling), pads (legacy padding) and the output size for an
    /// input of spatial size `input`. Fails with [`OpError::Shape`] when the rank does not
    /// match or the output would be empty.
    pub fn plan(&self, input: &[usize]) -> OpResult<SpatialPlan> {
        let nd = self.ndim();
        if input.len() != nd {
            return Err(OpError::Shape(format!(
                "input has {} spatial dims {input:?}, kernel {:?} has {nd}",
                input.len(),
                self.kernel
            )));
        }
        let mut plan = SpatialPlan {
            input: input.to_vec(),
            output: Vec::with_capacity(nd),
            kernel: self.kernel.clone(),
            stride: self.stride.clone(),
            dilation: self.dilation.clone(),
            pad_head: self.pads[..nd].to_vec(),
            pad_tail: self.pads[nd..].to_vec(),
        };
        if self.global {
            plan.kernel = input.to_vec();
            plan.output = vec![1; nd];
            if let Some(d) = input.iter().position(|&i| i == 0) {
                return Err(OpError::Shape(format!(
                    "global pooling over empty input {input:?} (dim {d})"
                )));
            }
            return Ok(plan);
        }
        for d in 0..nd {
            let (out, head, tail) = size_and_pad(
                input[d],
                self.stride[d],
                self.kernel[d],
                self.dilation[d],
                self.legacy_pad,
                self.pads[d],
                self.pads[nd + d],
            )
            .map_err(|msg| {
                OpError::Shape(format!(
                    "input {input:?}, kernel {:?}, stride {:?}, dilation {:?}, pads {:?}: dim {d}: {msg}",
                    self.kernel, self.stride, self.dilation, self.pads
                ))
            })?;
            plan.output.push(out);
            plan.pad_head[d] = head;
            plan.pad_tail[d] = tail;
        }
        Ok(plan)
    }
}

/// Caffe2 `ComputeSizeAndPad` for one dimension: (out, pad_head, pad_tail).
fn size_and_pad(
    input: usize,
    stride: usize,
    kernel: usize,
    dilation: usize,
    legacy: LegacyPad,
    pad_head: usize,
    pad_tail: usize,
) -> Result<(usize, usize, usize), String> {
    if input as u64 > MAX_ARG as u64 {
        return Err(format!("input size {input} is too large"));
    }
    let (i, s, k) = (input as i64, stride as i64, kernel as i64);
    let dk = dilation as i64 * (k - 1) + 1;
    let (out, head, tail) = match legacy {
        LegacyPad::NotSet => {
            let total = i + pad_head as i64 + pad_tail as i64;
            if total < dk {
                return Err(format!(
                    "padded input {total} is smaller than the dilated kernel {dk}"
                ));
            }
            ((total - dk) / s + 1, pad_head as i64, pad_tail as i64)
        }
        LegacyPad::Valid => {
            if i < dk {
                return Err(format!(
                    "input {i} is smaller than the dilated kernel {dk} (VALID)"
                ));
            }
            ((i - dk) / s + 1, 0, 0)
        }
        LegacyPad::Same => {
            let target = (i + s - 1) / s;
            let needed = (target - 1) * s + k - i;
            // C++ integer division truncates toward zero.
            let head = needed / 2;
            let tail = needed - head;
            ((i + needed - dk) / s + 1, head.max(0), tail.max(0))
        }
        LegacyPad::CaffeLegacyPooling => {
            let p = pad_head as i64;
            let num = (i + 2 * p - k) as f64;
            let mut out = (num / s as f64 + 1.0).ceil() as i64;
            if p > 0 && (out - 1) * s >= i + p {
                out -= 1;
            }
            let standard = (num / s as f64 + 1.0) as i64;
            if out < standard {
                return Err(format!(
                    "legacy pooling size {out} is below the standard size {standard}"
                ));
            }
            let tail = p + s * (out - standard);
            (out, p, tail)
        }
    };
    if out < 1 {
        return Err(format!("output size {out} < 1"));
    }
    Ok((out as usize, head as usize, tail.max(0) as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ArgValue;

    fn a(pairs: &[(&str, ArgValue)]) -> Args {
        let mut args = Args::new();
        for (n, v) in pairs {
            args.set(n, v.clone());
        }
        args
    }

    #[test]
    fn spellings_resolve() {
        let g = ConvPoolGeometry::from_args(
            &a(&[
                ("kernel", ArgValue::I(3)),
                ("stride", ArgValue::I(2)),
                ("pad", ArgValue::I(1)),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(g.kernel, vec![3, 3]);
        assert_eq!(g.stride, vec![2, 2]);
        assert_eq!(g.pads, vec![1, 1, 1, 1]);
        assert_eq!(g.dilation, vec![1, 1]);
        assert_eq!(g.order, Order::Nchw);

        let g = ConvPoolGeometry::from_args(
            &a(&[
                ("kernel_h", ArgValue::I(3)),
                ("kernel_w", ArgValue::I(5)),
                ("stride_h", ArgValue::I(1)),
                ("stride_w", ArgValue::I(2)),
                ("pad_t", ArgValue::I(0)),
                ("pad_l", ArgValue::I(1)),
                ("pad_b", ArgValue::I(2)),
                ("pad_r", ArgValue::I(3)),
                ("order", ArgValue::S(b"NHWC".to_vec())),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(g.kernel, vec![3, 5]);
        assert_eq!(g.stride, vec![1, 2]);
        assert_eq!(g.pads, vec![0, 1, 2, 3]);
        assert_eq!(g.order, Order::Nhwc);

        let g = ConvPoolGeometry::from_args(
            &a(&[
                ("kernels", ArgValue::Ints(vec![2, 4])),
                ("pads", ArgValue::Ints(vec![1, 0, 0, 1])),
                ("dilations", ArgValue::Ints(vec![2, 3])),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(g.kernel, vec![2, 4]);
        assert_eq!(g.pads, vec![1, 0, 0, 1]);
        assert_eq!(g.dilation, vec![2, 3]);
    }

    #[test]
    fn bad_args_are_rejected() {
        let cases: Vec<(Args, bool, &str)> = vec![
            (a(&[]), false, "kernel"),
            (a(&[("kernel", ArgValue::I(0))]), false, "kernel"),
            (a(&[("kernel_h", ArgValue::I(3))]), false, "kernel_h"),
            (
                a(&[("kernel", ArgValue::I(3)), ("stride", ArgValue::I(0))]),
                false,
                "stride",
            ),
            (
                a(&[("kernel", ArgValue::I(3)), ("pad", ArgValue::I(-1))]),
                false,
                "pad",
            ),
            (
                a(&[("kernel", ArgValue::I(3)), ("pad_t", ArgValue::I(1))]),
                false,
                "pad_t",
            ),
            (
                a(&[
                    ("kernel", ArgValue::I(3)),
                    ("order", ArgValue::S(b"CHWN".to_vec())),
                ]),
                false,
                "order",
            ),
            (
                a(&[("kernel", ArgValue::I(3)), ("legacy_pad", ArgValue::I(7))]),
                false,
                "legacy_pad",
            ),
            (
                a(&[
                    ("kernel", ArgValue::I(3)),
                    ("legacy_pad", ArgValue::I(1)),
                    ("pad", ArgValue::I(1)),
                ]),
                false,
                "legacy_pad",
            ),
            (
                a(&[
                    ("kernel", ArgValue::I(3)),
                    ("group", ArgValue::I(2)),
                    ("dilation", ArgValue::I(2)),
                ]),
                false,
                "group",
            ),
            (
                a(&[("kernel", ArgValue::I(3)), ("group", ArgValue::I(0))]),
                false,
                "group",
            ),
            (
                a(&[("kernel", ArgValue::I(3)), ("dilation", ArgValue::I(2))]),
                true,
                "dilation",
            ),
            (
                a(&[
                    ("global_pooling", ArgValue::I(1)),
                    ("stride", ArgValue::I(2)),
                ]),
                true,
                "global_pooling",
            ),
            (
                a(&[
                    ("global_pooling", ArgValue::I(1)),
                    ("kernel", ArgValue::I(2)),
                ]),
                false,
                "global_pooling",
            ),
            (
                a(&[
                    ("kernels", ArgValue::Ints(vec![3, 3])),
                    ("strides", ArgValue::Ints(vec![1])),
                ]),
                false,
                "strides",
            ),
            (
                a(&[
                    ("kernels", ArgValue::Ints(vec![3, 3])),
                    ("pads", ArgValue::Ints(vec![1, 1])),
                ]),
                false,
                "pads",
            ),
        ];
        for (args, is_pool, name) in cases {
            match ConvPoolGeometry::from_args(&args, is_pool) {
                Err(OpError::BadArg { name: n, .. }) => assert_eq!(n, name, "{args:?}"),
                other => panic!("{args:?}: expected BadArg({name}), got {other:?}"),
            }
        }
    }

    fn geo(pairs: &[(&str, ArgValue)], is_pool: bool) -> ConvPoolGeometry {
        ConvPoolGeometry::from_args(&a(pairs), is_pool).unwrap()
    }

    #[test]
    fn output_sizes_hand_worked() {
        // NOTSET: floor((224 + 3 + 3 - 7) / 2) + 1 = 112 (ResNet conv1).
        let g = geo(
            &[
                ("kernel", ArgValue::I(7)),
                ("stride", ArgValue::I(2)),
                ("pad", ArgValue::I(3)),
            ],
            false,
        );
        assert_eq!(g.output_size(&[224, 224]).unwrap(), vec![112, 112]);
        // Dilation 2, k3: dk = 5; (10 - 5) / 1 + 1 = 6.
        let g = geo(
            &[("kernel", ArgValue::I(3)), ("dilation", ArgValue::I(2))],
            false,
        );
        assert_eq!(g.output_size(&[10, 10]).unwrap(), vec![6, 6]);
        // VALID: (7 - 3) / 2 + 1 = 3.
        let g = geo(
            &[
                ("kernel", ArgValue::I(3)),
                ("stride", ArgValue::I(2)),
                ("legacy_pad", ArgValue::I(1)),
            ],
            false,
        );
        let p = g.plan(&[7, 8]).unwrap();
        assert_eq!(p.output, vec![3, 3]);
        assert_eq!(
            (p.pad_head.clone(), p.pad_tail.clone()),
            (vec![0, 0], vec![0, 0])
        );
        // SAME, k3 s2, in 8: target 4, needed (4-1)*2+3-8 = 1 -> head 0, tail 1.
        // in 7: target 4, needed 6+3-7 = 2 -> head 1, tail 1.
        let g = geo(
            &[
                ("kernel", ArgValue::I(3)),
                ("stride", ArgValue::I(2)),
                ("legacy_pad", ArgValue::I(2)),
            ],
            false,
        );
        let p = g.plan(&[8, 7]).unwrap();
        assert_eq!(p.output, vec![4, 4]);
        assert_eq!(p.pad_head, vec![0, 1]);
        assert_eq!(p.pad_tail, vec![1, 1]);
        // CAFFE_LEGACY_POOLING, k3 s2 p0 on 56 (SqueezeNet-style): ceil(53/2)+1 = 28,
        // standard floor(53/2+1) = 27 -> tail 0 + 2*1 = 2.
        let g = geo(
            &[
                ("kernel", ArgValue::I(3)),
                ("stride", ArgValue::I(2)),
                ("legacy_pad", ArgValue::I(3)),
            ],
            true,
        );
        let p = g.plan(&[56, 55]).unwrap();
        assert_eq!(p.output, vec![28, 27]);
        assert_eq!(p.pad_tail, vec![2, 0]);
        // With pad 1, k3 s2, in 6: ceil((6+2-3)/2)+1 = 4; (4-1)*2 = 6 >= 6+1? no -> 4;
        // standard floor(5/2+1) = 3 -> tail 1 + 2 = 3.
        let g = geo(
            &[
                ("kernel", ArgValue::I(3)),
                ("stride", ArgValue::I(2)),
                ("pad", ArgValue::I(1)),
                ("legacy_pad", ArgValue::I(3)),
            ],
            true,
        );
        let p = g.plan(&[6, 5]).unwrap();
        // in 5: ceil(4/2)+1 = 3, (3-1)*2 = 4 >= 6? no; standard 3 -> tail 1.
        assert_eq!(p.output, vec![4, 3]);
        assert_eq!(p.pad_head, vec![1, 1]);
        assert_eq!(p.pad_tail, vec![3, 1]);
        // Clipping rule: k2 s2 p1 in 4: ceil((4+2-2)/2)+1 = 3, (3-1)*2 = 4 >= 4+1? no -> 3.
        // k1 s2 p1 in 2: ceil((2+2-1)/2)+1 = 3, (3-1)*2 = 4 >= 2+1 -> 2.
        let g = geo(
            &[
                ("kernels", ArgValue::Ints(vec![2, 1])),
                ("stride", ArgValue::I(2)),
                ("pad", ArgValue::I(1)),
                ("legacy_pad", ArgValue::I(3)),
            ],
            true,
        );
        assert_eq!(g.output_size(&[4, 2]).unwrap(), vec![3, 2]);
        // AlexNet pool5: k3 s2 pads t/l 0, b/r 1 on 13 -> floor((13+1-3)/2)+1 = 6.
        let g = geo(
            &[
                ("kernel", ArgValue::I(3)),
                ("stride", ArgValue::I(2)),
                ("pad_t", ArgValue::I(0)),
                ("pad_l", ArgValue::I(0)),
                ("pad_b", ArgValue::I(1)),
                ("pad_r", ArgValue::I(1)),
            ],
            true,
        );
        assert_eq!(g.output_size(&[13, 13]).unwrap(), vec![6, 6]);
        // Global pooling.
        let g = geo(&[("global_pooling", ArgValue::I(1))], true);
        let p = g.plan(&[7, 5]).unwrap();
        assert_eq!(p.output, vec![1, 1]);
        assert_eq!(p.kernel, vec![7, 5]);
    }

    #[test]
    fn too_small_inputs_fail() {
        let g = geo(&[("kernel", ArgValue::I(5))], false);
        assert!(matches!(g.output_size(&[4, 9]), Err(OpError::Shape(_))));
        assert!(matches!(g.output_size(&[9]), Err(OpError::Shape(_))));
        let g = geo(
            &[("kernel", ArgValue::I(5)), ("legacy_pad", ArgValue::I(1))],
            false,
        );
        assert!(matches!(g.output_size(&[4, 9]), Err(OpError::Shape(_))));
    }
}
