//! Generates Rust types for the Caffe2 and Caffe schemas with rust-protobuf's pure-Rust
//! parser, so no system `protoc` is needed.

fn main() {
    protobuf_codegen::Codegen::new()
        .pure()
        .includes(["proto"])
        .inputs(["proto/caffe2.proto", "proto/caffe.proto"])
        .cargo_out_dir("generated")
        .run_from_script();
    println!("cargo:rerun-if-changed=proto");
}
