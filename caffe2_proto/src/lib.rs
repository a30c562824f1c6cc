//! Caffe2 (`caffe2.proto`) and Caffe (`Datum`) protobuf types, plus reading and writing of
//! nets and tensors in binary (`.pb`) and text (`.pbtxt`) form.

mod generated {
    include!(concat!(env!("OUT_DIR"), "/generated/mod.rs"));
}

pub use generated::caffe::Datum;
pub use generated::caffe2::{
    tensor_proto, Argument, BlobProto, DeviceOption, NetDef, OperatorDef, QTensorProto,
    TensorProto, TensorProtos, TensorShape, TensorShapes,
};
pub use protobuf::Message;

pub mod io;
mod text;
pub use io::{Format, ProtoError};
