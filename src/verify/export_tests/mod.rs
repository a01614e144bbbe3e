//! Round trips of every writer through the verifier (tests only).

mod coreml;
mod int8;
mod onnx;
mod tflite;
