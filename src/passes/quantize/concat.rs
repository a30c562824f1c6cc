//! Rewrite rule: Concat → Int8Concat (axis remapped to NHWC; a split_info output stays int32).

use caffe2_proto::OperatorDef;
use ops::QParams;

use super::*;

/// Plans the Int8 form of `op`, or says why it stays fp32.
pub(super) fn plan(rw: &Rewriter<'_>, op: &OperatorDef, act: &[Option<QParams>]) -> PlanResult {
    if op.output.is_empty() || op.output.len() > 2 || op.input.is_empty() {
        return Err("unexpected number of inputs/outputs".into());
    }
    if arg_i(op, "add_axis").unwrap_or(0) != 0 {
        return Err("Concat with add_axis".into());
    }
    let rank = rw
        .rank(&op.input[0])
        .ok_or_else(|| format!("shape of `{}` unknown", op.input[0]))?;
    let axis = match arg_i(op, "axis") {
        Some(a) => a,
        None if is_order_nchw(op) => 1,
        None => return Err("Concat order is not NCHW".into()),
    };
    let r = rank as i64;
    if axis < -r || axis >= r {
        return Err(format!("axis {axis} out of range for rank {rank}"));
    }
    let axis = if axis < 0 { axis + r } else { axis } as usize;
    let new_axis = if rank == 4 { [0, 3, 1, 2][axis] } else { axis };
    for x in &op.input {
        if rw.model.params.contains_key(x) {
            return Err(format!("input `{x}` is a constant parameter"));
        }
        if rw.rank(x) != Some(rank) {
            return Err("inputs differ in rank".into());
        }
        rw.act_q(x)?;
    }
    let y = out_act(act, 0)?;
    let mut args = vec![
        ("axis".to_string(), Arg::I(new_axis as i64)),
        ("order".to_string(), Arg::S("NHWC".into())),
    ];
    args.extend(qargs(y));
    Ok(Plan {
        op_type: "Int8Concat".into(),
        act_inputs: op.input.to_vec(),
        weight: None,
        bias: None,
        args,
        out_q: y,
        plain_outputs: op.output.len() - 1,
        note: None,
        rename: None,
    })
}
