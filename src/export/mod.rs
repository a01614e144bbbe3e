//! Export: the graph IR and the ONNX / TFLite / CoreML writers.
pub mod coreml;
pub mod interp;
pub mod ir;
pub mod onnx;
pub mod quantize;
pub mod sample;
pub mod tflite;
