//! Export: the graph IR and the ONNX / TFLite / CoreML writers.
pub mod ir;
