//! lowbit-quant: weight compression. Round-to-nearest, GPTQ, importance-weighted (imatrix) and
//! AWQ quantization of a model's linear layers (calibrated block by block, one decoder layer's
//! activations at a time), with SmoothQuant for activation quantization, written as Hugging Face
//! directories in vLLM's compressed-tensors layout (see docs/FORMAT.md).

pub mod awq;
pub mod gptq;
pub mod hadamard;
pub mod imatrix;
pub mod linalg;
pub mod quantizer;

pub use gptq::{gptq, GptqOptions};
pub use quantizer::{rtn, ElemKind, Params, QuantizedTensor, Quantizer, ScaleLayout};
pub mod export;
pub mod gguf_export;
pub mod hf_source;
pub mod pipeline;
pub mod rotate;
pub mod smooth;

pub use export::{write_model, ModelWriter, Source, WriteInfo};
pub use pipeline::{
    quantize_model, quantize_streaming, quantize_streaming_ext, ExtraOptions, Method, Options,
    OutTensor, QuantizedModel,
};
pub use regex;
