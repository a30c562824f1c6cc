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
pub mod text;
pub use io::{
    format_for_path, read_net, read_tensor, read_tensors, write_net, write_tensor, write_tensors,
    Format, ProtoError,
};
pub use text::TextError;
