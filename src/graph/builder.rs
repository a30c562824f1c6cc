//! Building Caffe2 nets in code (tests, the demo, and rewrite passes use it).

use caffe2_proto::{Argument, NetDef, OperatorDef};

/// An argument value for [`NetBuilder::op`] and friends.
#[derive(Debug, Clone)]
pub enum Arg {
    /// A single float (`f`).
    F(f32),
    /// A single integer (`i`).
    I(i64),
    /// A string (`s`).
    S(String),
    /// Raw bytes (`s`).
    B(Vec<u8>),
    /// Repeated floats.
    Floats(Vec<f32>),
    /// Repeated integers.
    Ints(Vec<i64>),
}

/// Makes a protobuf `Argument`.
pub fn arg(name: &str, value: Arg) -> Argument {
    let mut a = Argument::new();
    a.set_name(name.to_string());
    match value {
        Arg::F(f) => a.set_f(f),
        Arg::I(i) => a.set_i(i),
        Arg::S(s) => a.set_s(s.into_bytes()),
        Arg::B(b) => a.set_s(b),
        Arg::Floats(v) => a.floats = v,
        Arg::Ints(v) => a.ints = v,
    }
    a
}

/// Makes an `OperatorDef`.
pub fn op_def(
    op_type: &str,
    inputs: &[&str],
    outputs: &[&str],
    args: Vec<(&str, Arg)>,
) -> OperatorDef {
    let mut op = OperatorDef::new();
    op.set_type(op_type.to_string());
    op.input = inputs.iter().map(|s| s.to_string()).collect();
    op.output = outputs.iter().map(|s| s.to_string()).collect();
    op.arg = args.into_iter().map(|(n, v)| arg(n, v)).collect();
    op
}

/// Builds a pair of nets: an init_net of fill ops and a predict_net.
#[derive(Debug, Clone, Default)]
pub struct NetBuilder {
    /// The init net being built.
    pub init: NetDef,
    /// The predict net being built.
    pub predict: NetDef,
}

impl NetBuilder {
    /// An empty pair of nets named `name`.
    pub fn new(name: &str) -> Self {
        let mut b = NetBuilder::default();
        b.init.set_name(format!("{name}_init"));
        b.predict.set_name(name.to_string());
        b
    }

    /// Declares a data input of the predict net.
    pub fn input(&mut self, name: &str) -> &mut Self {
        self.predict.external_input.push(name.to_string());
        self
    }

    /// Declares an output of the predict net.
    pub fn output(&mut self, name: &str) -> &mut Self {
        self.predict.external_output.push(name.to_string());
        self
    }

    /// Adds an f32 parameter (GivenTensorFill in the init net, external input of the predict net).
    pub fn param(&mut self, name: &str, shape: &[usize], values: Vec<f32>) -> &mut Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "param {name}: shape vs values"
        );
        self.init.op.push(op_def(
            "GivenTensorFill",
            &[],
            &[name],
            vec![
                (
                    "shape",
                    Arg::Ints(shape.iter().map(|&d| d as i64).collect()),
                ),
                ("values", Arg::Floats(values)),
            ],
        ));
        self.predict.external_input.push(name.to_string());
        self
    }

    /// Adds an init-net op (any fill op) and declares its outputs as external inputs.
    pub fn init_op(&mut self, op: OperatorDef) -> &mut Self {
        self.predict
            .external_input
            .extend(op.output.iter().cloned());
        self.init.op.push(op);
        self
    }

    /// Adds a predict-net op.
    pub fn op(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        outputs: &[&str],
        args: Vec<(&str, Arg)>,
    ) -> &mut Self {
        self.predict.op.push(op_def(op_type, inputs, outputs, args));
        self
    }

    /// The finished (init, predict) nets.
    pub fn build(&self) -> (NetDef, NetDef) {
        (self.init.clone(), self.predict.clone())
    }
}
