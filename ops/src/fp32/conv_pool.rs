//! Argument resolution and output-size rules shared by Conv and the pooling ops
//! (Caffe2 `ConvPoolOpBase`).
//!
//! STUB: not implemented yet.
