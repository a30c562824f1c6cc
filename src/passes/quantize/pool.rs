//! Rewrite rule: MaxPool (input parameters) and AveragePool (calibrated output) → Int8MaxPool, Int8AveragePool.

use caffe2_proto::OperatorDef;
use ops::QParams;

use super::*;

/// Plans the Int8 form of `op`, or says why it stays fp32.
pub(super) fn plan(rw: &Rewriter<'_>, op: &OperatorDef, act: &[Option<QParams>]) -> PlanResult {
    let t = op.type_();
    if op.input.len() != 1 || op.output.len() != 1 {
        return Err("unexpected number of inputs/outputs".into());
    }
    if !is_order_nchw(op) {
        return Err("order is not NCHW".into());
    }
    rw.need_4d(&op.input[0])?;
    if t == "AveragePool" && arg_i(op, "count_include_pad").unwrap_or(0) != 0 {
        return Err("count_include_pad = 1 (Int8AveragePool divides by the unpadded cells)".into());
    }
    let xq = rw.act_q(&op.input[0])?;
    let y = if t == "MaxPool" { xq } else { out_act(act, 0)? };
    let mut args = copy_args(op);
    args.push(("order".into(), Arg::S("NHWC".into())));
    args.extend(qargs(y));
    Ok(Plan {
        op_type: format!("Int8{t}"),
        act_inputs: vec![op.input[0].clone()],
        weight: None,
        bias: None,
        args,
        out_q: y,
        plain_outputs: 0,
        note: None,
        rename: None,
    })
}
