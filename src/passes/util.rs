//! Helpers shared by the rewrite passes: who reads or wrote a blob, argument lookup and
//! construction.

use caffe2_proto::{Argument, NetDef, OperatorDef};

/// Indices of the ops after `after` that read the value `blob` had when op `after` wrote it:
/// scanning stops at the first later op that writes `blob` again (that op is included if it
/// also reads it, as in-place ops do).
pub fn readers_after(net: &NetDef, after: usize, blob: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for (j, op) in net.op.iter().enumerate().skip(after + 1) {
        if op.input.iter().any(|i| i == blob) {
            out.push(j);
        }
        if op.output.iter().any(|o| o == blob) {
            break;
        }
    }
    out
}

/// True if the value written by op `after` into `blob` is still the blob's value when the net
/// ends and the blob is an external output (so it must keep existing).
pub fn is_live_output(net: &NetDef, after: usize, blob: &str) -> bool {
    net.external_output.iter().any(|o| o == blob)
        && !net
            .op
            .iter()
            .skip(after + 1)
            .any(|op| op.output.iter().any(|o| o == blob))
}

/// Number of ops anywhere in the net that read `blob`.
pub fn read_count(net: &NetDef, blob: &str) -> usize {
    net.op
        .iter()
        .map(|op| op.input.iter().filter(|i| *i == blob).count())
        .sum()
}

/// A single-integer argument of an op.
pub fn arg_i(op: &OperatorDef, name: &str) -> Option<i64> {
    op.arg
        .iter()
        .find(|a| a.name() == name && a.has_i())
        .map(|a| a.i())
}

/// A single-float argument of an op.
pub fn arg_f(op: &OperatorDef, name: &str) -> Option<f32> {
    op.arg
        .iter()
        .find(|a| a.name() == name && a.has_f())
        .map(|a| a.f())
}

/// A string argument of an op.
pub fn arg_s(op: &OperatorDef, name: &str) -> Option<String> {
    op.arg
        .iter()
        .find(|a| a.name() == name && a.has_s())
        .map(|a| String::from_utf8_lossy(a.s()).into_owned())
}

/// The last op before `j` that writes `blob`.
pub fn last_writer(net: &NetDef, j: usize, blob: &str) -> Option<usize> {
    (0..j)
        .rev()
        .find(|&i| net.op[i].output.iter().any(|o| o == blob))
}

/// A new single-integer argument.
pub fn new_arg_i(name: &str, v: i64) -> Argument {
    let mut a = Argument::new();
    a.set_name(name.to_string());
    a.set_i(v);
    a
}

/// A new string argument.
pub fn new_arg_s(name: &str, v: &str) -> Argument {
    let mut a = Argument::new();
    a.set_name(name.to_string());
    a.set_s(v.as_bytes().to_vec());
    a
}

/// Appends the arguments of `from` to `to`, each name with `prefix` in front (how a fused
/// op carries the arguments of the op it absorbed).
pub fn push_args_prefixed(to: &mut OperatorDef, from: &OperatorDef, prefix: &str) {
    for a in &from.arg {
        let mut a = a.clone();
        a.set_name(format!("{prefix}{}", a.name()));
        to.arg.push(a);
    }
}

/// The argument that carries an op's position in the input net through the fp32 passes (see
/// [`super::optimize_fp32_traced`]: added before them, removed after them, never written out).
/// Passes that copy a fused op's arguments under a prefix carry its position along.
pub const FILE_OP_ARG: &str = "__c2q_file_op";

/// The op's position in the input net while the passes run (None outside them).
pub fn file_op(op: &OperatorDef) -> Option<usize> {
    arg_i(op, FILE_OP_ARG).and_then(|i| usize::try_from(i).ok())
}

/// Removes the position arguments of [`FILE_OP_ARG`] (its own and prefixed copies) from `op`
/// and returns their values, its own first.
pub fn take_file_ops(op: &mut OperatorDef) -> Vec<usize> {
    let mut own = Vec::new();
    let mut carried = Vec::new();
    op.arg.retain(|a| {
        if a.name() == FILE_OP_ARG {
            own.extend(usize::try_from(a.i()).ok());
            false
        } else if a.name().ends_with(FILE_OP_ARG) {
            carried.extend(usize::try_from(a.i()).ok());
            false
        } else {
            true
        }
    });
    own.extend(carried);
    own
}

/// Removes the ops at the given indices.
pub fn remove_ops(net: &mut NetDef, mut idx: Vec<usize>) {
    idx.sort_unstable();
    idx.dedup();
    for i in idx.into_iter().rev() {
        net.op.remove(i);
    }
}
