//! lowbit-model: reading models (GGUF, HF safetensors directories, llama2.c checkpoints, hub ids),
//! their tokenizers and configs, and the architectures that run them on the CPU kernels.

pub mod arch;
pub mod config;
pub mod decoder;
pub mod error;
pub mod gguf;
pub mod gguf_model;
pub mod gguf_write;
pub mod golden;
pub mod hub;
pub mod llama2c;
pub mod safetensors_dir;
pub mod sampling;
pub mod source;
pub mod tokenizer;
pub mod weights;

pub use arch::{KvState, Transformer};
pub use config::{Arch, ModelConfig};
pub use decoder::{CpuDecoder, Decoder};
pub use error::{ModelError, Result};
pub use weights::{Backing, TensorEntry, TensorHandle, TensorView, WeightStore};
