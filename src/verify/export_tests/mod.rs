//! Round trips of every writer through the verifier (tests only).

mod coreml;
mod onnx;
mod tflite;
