//! lowbit-model: reading models (GGUF, HF safetensors directories, llama2.c checkpoints, hub ids),
//! their tokenizers and configs, and the architectures that run them on a backend.

pub mod error;
pub mod weights;
pub mod gguf;
pub mod tokenizer;

pub use error::{ModelError, Result};
pub use weights::{Backing, TensorEntry, TensorView, WeightStore};
