//! Which Clips (ReLU6) fold into the op before them (the arithmetic of the fold is
//! [`crate::quant::clip`]; the rewrite applies it in `quantize_model`).

use std::collections::HashMap;

use caffe2_proto::{NetDef, OperatorDef};

use crate::passes::util::{is_live_output, last_writer, readers_after};
use crate::quant::clip::clip_bounds;

/// Op types whose int8 form chooses its own output parameters (so a following Clip can set
/// them); pass-through ops (MaxPool, Relu, Flatten) reuse their input's.
const PRODUCERS: &[&str] = &[
    "Conv",
    "ConvRelu",
    "FC",
    "Sum",
    "SumRelu",
    "Add",
    "AddRelu",
    "AveragePool",
];

/// A Clip that may fold into the op writing its input.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipCandidate {
    /// Index of the Clip op.
    pub clip: usize,
    /// Lower bound (Caffe2's default: the lowest finite f32).
    pub min: f32,
    /// Upper bound (default: the largest finite f32).
    pub max: f32,
    /// The Clip's output blob.
    pub output: String,
}

/// For every op that writes the input of a Clip and has an int8 form that chooses its own
/// output range: the Clip it may absorb. Only when the Clip is that value's single reader,
/// the value is not a net output, and neither op is in `excluded`.
pub fn clip_candidates(
    net: &NetDef,
    excluded: impl Fn(usize, &OperatorDef) -> bool,
) -> HashMap<usize, ClipCandidate> {
    let mut out = HashMap::new();
    for (j, op) in net.op.iter().enumerate() {
        if op.type_() != "Clip" || op.input.len() != 1 || op.output.len() != 1 || excluded(j, op) {
            continue;
        }
        let Some((min, max)) = clip_bounds(op) else {
            continue;
        };
        let x = &op.input[0];
        let Some(p) = last_writer(net, j, x) else {
            continue;
        };
        let prod = &net.op[p];
        if !PRODUCERS.contains(&prod.type_())
            || prod.output.first() != Some(x)
            || excluded(p, prod)
            || readers_after(net, p, x) != [j]
            || is_live_output(net, p, x)
        {
            continue;
        }
        out.insert(
            p,
            ClipCandidate {
                clip: j,
                min,
                max,
                output: op.output[0].clone(),
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::builder::{op_def, Arg};

    #[test]
    fn candidates_need_a_single_reader_and_a_producer_with_its_own_range() {
        let clip6 = |x: &str, y: &str| {
            op_def(
                "Clip",
                &[x],
                &[y],
                vec![("min", Arg::F(0.0)), ("max", Arg::F(6.0))],
            )
        };
        let mut net = NetDef::new();
        net.op = vec![
            op_def("Conv", &["data", "w", "b"], &["c0"], Vec::new()), // 0: absorbs op 1
            clip6("c0", "a0"),
            op_def("MaxPool", &["a0"], &["p"], Vec::new()), // 2: pass-through, not a producer
            clip6("p", "a1"),
            op_def("Conv", &["a1", "w", "b"], &["c1"], Vec::new()), // 4: read twice
            clip6("c1", "a2"),
            op_def("Relu", &["c1"], &["r"], Vec::new()),
            op_def("Conv", &["a2", "w", "b"], &["c2"], Vec::new()), // 7: excluded clip
            clip6("c2", "a3"),
        ];
        let got = clip_candidates(&net, |j, _| j == 8);
        assert_eq!(got.len(), 1, "{got:?}");
        let c = &got[&0];
        assert_eq!(
            (c.clip, c.min, c.max, c.output.as_str()),
            (1, 0.0, 6.0, "a0")
        );
    }
}
