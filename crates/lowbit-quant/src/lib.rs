//! lowbit-quant: weight compression. Round-to-nearest and GPTQ quantization of a model's linear
//! layers (GPTQ calibrated block by block, one decoder layer's activations at a time), written
//! as Hugging Face directories in vLLM's compressed-tensors layout (see docs/FORMAT.md).

pub mod gptq;
pub mod hadamard;
pub mod linalg;
pub mod quantizer;

pub use gptq::{gptq, GptqOptions};
pub use quantizer::{rtn, ElemKind, Params, QuantizedTensor, Quantizer, ScaleLayout};
pub mod export;
pub mod hf_source;
pub mod pipeline;
pub mod rotate;

pub use export::{write_model, ModelWriter, Source, WriteInfo};
pub use pipeline::{
    quantize_model, quantize_streaming, Method, Options, OutTensor, QuantizedModel,
};
pub use regex;
