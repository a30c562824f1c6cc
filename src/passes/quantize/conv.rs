//! Rewrite rule: Conv, ConvRelu → Int8Conv, Int8ConvRelu.

use caffe2_proto::OperatorDef;
use ops::QParams;

use super::*;

/// Plans the Int8 form of `op`, or says why it stays fp32.
pub(super) fn plan(rw: &Rewriter<'_>, op: &OperatorDef, act: &[Option<QParams>]) -> PlanResult {
    let t = op.type_();
    if !(2..=3).contains(&op.input.len()) || op.output.len() != 1 {
        return Err("unexpected number of inputs/outputs".into());
    }
    if !is_order_nchw(op) {
        return Err("order is not NCHW".into());
    }
    rw.need_4d(&op.input[0])?;
    let w = rw.param_f32(&op.input[1])?;
    if w.shape().len() != 4 {
        return Err("weight is not 4-D (only 2-D convolutions)".into());
    }
    if let Some(b) = op.input.get(2) {
        rw.param_f32(b)?;
    }
    let xq = rw.act_q(&op.input[0])?;
    let relu = t == "ConvRelu";
    let (y, note) = if relu {
        relu_fix(out_act(act, 0)?)
    } else {
        (out_act(act, 0)?, None)
    };
    let mut args = copy_args(op);
    args.push(("order".into(), Arg::S("NHWC".into())));
    args.extend(qargs(y));
    Ok(Plan {
        op_type: if relu { "Int8ConvRelu" } else { "Int8Conv" }.into(),
        act_inputs: vec![op.input[0].clone()],
        weight: Some(WeightPlan {
            name: op.input[1].clone(),
            permute: Some(vec![0, 2, 3, 1]),
            view: None,
            x_scale: xq.scale,
        }),
        bias: op.input.get(2).cloned(),
        args,
        out_q: if relu { relu_output_params(y) } else { y },
        plain_outputs: 0,
        note,
        rename: None,
    })
}
