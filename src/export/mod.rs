//! Export: the trained student lowered for shipping (`student.rs`), and the ONNX /
//! TFLite / Core ML writers of the graph IR (`crate::ir`).
pub mod coreml;

pub mod onnx;
pub mod quantize;
pub mod student;
pub mod tflite;
pub mod tflite_size;
