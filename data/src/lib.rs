//! LMDB image databases (Caffe `Datum` and Caffe2 `TensorProtos` records), image decoding,
//! Caffe2 `image_input` preprocessing and batching.
