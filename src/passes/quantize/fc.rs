//! Rewrite rule: FC → Int8FC (a spatial input: weight columns permuted to NHWC order).

use caffe2_proto::OperatorDef;
use ops::QParams;

use super::*;

/// Plans the Int8 form of `op`, or says why it stays fp32.
pub(super) fn plan(rw: &Rewriter<'_>, op: &OperatorDef, act: &[Option<QParams>]) -> PlanResult {
    if op.input.len() != 3 || op.output.len() != 1 {
        return Err("unexpected number of inputs/outputs".into());
    }
    if arg_i(op, "axis").unwrap_or(1) != 1 || arg_i(op, "axis_w").unwrap_or(1) != 1 {
        return Err("axis/axis_w other than 1".into());
    }
    let w = rw.param_f32(&op.input[1])?;
    rw.param_f32(&op.input[2])?;
    let ws = w.shape().to_vec();
    if ws.len() != 2 {
        return Err("weight is not 2-D".into());
    }
    let xs = rw
        .shape(&op.input[0])
        .ok_or_else(|| format!("shape of `{}` unknown", op.input[0]))?;
    let xq = rw.act_q(&op.input[0])?;
    let view = if xs.len() == 4 && xs[2] * xs[3] > 1 {
        let (c, h, wd) = (xs[1], xs[2], xs[3]);
        if c * h * wd != ws[1] {
            return Err(format!("weight {ws:?} does not match input {xs:?}"));
        }
        Some((vec![ws[0], c, h, wd], ws.clone()))
    } else {
        None
    };
    let y = out_act(act, 0)?;
    let mut args = copy_args(op);
    args.push(("order".into(), Arg::S("NHWC".into())));
    args.extend(qargs(y));
    Ok(Plan {
        op_type: "Int8FC".into(),
        act_inputs: vec![op.input[0].clone()],
        weight: Some(WeightPlan {
            name: op.input[1].clone(),
            permute: view.as_ref().map(|_| vec![0, 2, 3, 1]),
            view,
            x_scale: xq.scale,
        }),
        bias: Some(op.input[2].clone()),
        args,
        out_q: y,
        plain_outputs: 0,
        note: None,
        rename: None,
    })
}
