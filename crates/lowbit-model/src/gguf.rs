//! GGUF v2/v3 reader: header, metadata, tensor table, alignment. Sizes are validated against the
//! file length before anything is allocated, so corrupt files give errors, never panics or huge
//! allocations. Spec: ggml's docs/gguf.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lowbit_formats::GgmlType;

use crate::error::{ModelError, Result};

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// One entry of the tensor table. `dims` are in GGML order: `dims[0]` is the contiguous (innermost)
/// dimension. `offset` is relative to the start of the data section.
#[derive(Debug, Clone)]
pub struct GgufTensorInfo {
    pub name: String,
    pub dtype: GgmlType,
    pub dims: Vec<u64>,
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Row-major shape, outermost first (the reverse of `dims`).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF header: everything but the tensor data.
#[derive(Debug, Clone)]
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensorInfo>,
    pub alignment: u64,
    /// Absolute file offset where the data section starts.
    pub data_offset: u64,
}

impl GgufFile {
    /// Parse the header of a GGUF file held in `bytes` (typically a memory map of `path`, which is
    /// used in error messages only). Validates every tensor's byte range against `bytes.len()`.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<GgufFile> {
        let _ = bytes;
        Err(ModelError::format(path, "GGUF parsing is not implemented yet"))
    }
}
