//! Rewrite rule: Sum, SumRelu, Add, AddRelu → their Int8 forms (activation inputs of one shape).

use caffe2_proto::OperatorDef;
use ops::QParams;

use super::*;

/// Plans the Int8 form of `op`, or says why it stays fp32.
pub(super) fn plan(rw: &Rewriter<'_>, op: &OperatorDef, act: &[Option<QParams>]) -> PlanResult {
    let t = op.type_();
    if op.output.len() != 1 || op.input.is_empty() {
        return Err("unexpected number of inputs/outputs".into());
    }
    let is_add = t.starts_with("Add");
    if is_add && (op.input.len() != 2 || arg_i(op, "broadcast").unwrap_or(0) != 0) {
        return Err("Add with broadcast or not 2 inputs".into());
    }
    let s0 = rw.shape(&op.input[0]);
    for x in &op.input {
        if rw.model.params.contains_key(x) {
            return Err(format!("input `{x}` is a constant parameter"));
        }
        if rw.shape(x) != s0 || s0.is_none() {
            return Err("inputs differ in shape (or shape unknown)".into());
        }
        rw.act_q(x)?;
    }
    let relu = t.ends_with("Relu");
    let (y, note) = if relu {
        relu_fix(out_act(act, 0)?)
    } else {
        (out_act(act, 0)?, None)
    };
    let mut args = vec![("order".to_string(), Arg::S("NHWC".into()))];
    args.extend(qargs(y));
    Ok(Plan {
        op_type: format!("Int8{t}"),
        act_inputs: op.input.to_vec(),
        weight: None,
        bias: None,
        args,
        out_q: if relu { relu_output_params(y) } else { y },
        plain_outputs: 0,
        note,
        rename: None,
    })
}
