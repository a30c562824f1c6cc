//! Removes test-mode Dropout (an identity at inference). In place (Y == X) it is simply
//! dropped; otherwise later readers of Y read X instead, up to Y's next definition. A Dropout
//! whose output is an external output, or whose mask output is read, is kept.

use std::collections::HashMap;

use caffe2_proto::NetDef;
use ops::Tensor;

use super::util::{is_live_output, readers_after, remove_ops};
use crate::Result;

/// Removes every removable Dropout; returns how many were removed.
pub fn remove_dropout(net: &mut NetDef, _params: &mut HashMap<String, Tensor>) -> Result<usize> {
    let mut removed = Vec::new();
    for i in 0..net.op.len() {
        let op = &net.op[i];
        if op.type_() != "Dropout" || op.input.len() != 1 || op.output.is_empty() {
            continue;
        }
        let (x, y) = (op.input[0].clone(), op.output[0].clone());
        if let Some(mask) = op.output.get(1) {
            if !readers_after(net, i, mask).is_empty() || is_live_output(net, i, mask) {
                continue;
            }
        }
        if x != y {
            if is_live_output(net, i, &y) {
                continue;
            }
            // X must keep its value until Y's last reader has run.
            let readers = readers_after(net, i, &y);
            let last = readers.last().copied().unwrap_or(i).max(i + 1);
            if net.op[i + 1..last].iter().any(|o| o.output.contains(&x)) {
                continue;
            }
            for r in readers {
                for inp in net.op[r].input.iter_mut() {
                    if *inp == y {
                        *inp = x.clone();
                    }
                }
            }
        }
        removed.push(i);
    }
    let n = removed.len();
    remove_ops(net, removed);
    Ok(n)
}
