//! Rewrite rule: Relu and Flatten → Int8Relu, Int8Flatten, with their input's parameters.

use caffe2_proto::OperatorDef;
use ops::QParams;

use super::*;

/// Plans the Int8 form of `op`, or says why it stays fp32.
pub(super) fn plan(rw: &Rewriter<'_>, op: &OperatorDef, _act: &[Option<QParams>]) -> PlanResult {
    let t = op.type_();
    if op.input.len() != 1 || op.output.len() != 1 {
        return Err("unexpected number of inputs/outputs".into());
    }
    let xs = rw
        .shape(&op.input[0])
        .ok_or_else(|| format!("shape of `{}` unknown", op.input[0]))?;
    let mut args = Vec::new();
    if t == "Flatten" {
        let axis = arg_i(op, "axis").unwrap_or(1);
        if axis != 1 {
            return Err("Flatten with axis other than 1".into());
        }
        if xs.len() == 4 && xs[2] * xs[3] != 1 {
            return Err("Flatten of a 4-D tensor with H*W > 1 (NHWC order would differ)".into());
        }
        args.push(("axis".to_string(), Arg::I(1)));
    }
    if rw.model.params.contains_key(&op.input[0]) {
        return Err("input is a constant parameter".into());
    }
    let xq = rw.act_q(&op.input[0])?;
    args.extend(qargs(xq));
    Ok(Plan {
        op_type: format!("Int8{t}"),
        act_inputs: vec![op.input[0].clone()],
        weight: None,
        bias: None,
        args,
        out_q: xq,
        plain_outputs: 0,
        note: None,
        rename: None,
    })
}
