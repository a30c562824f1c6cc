//! c2q: read, run, calibrate and quantize Caffe2 models on the CPU.
