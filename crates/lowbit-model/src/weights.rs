//! `WeightStore`: named tensors in their stored type, borrowed from memory-mapped files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lowbit_formats::GgmlType;

use crate::error::{ModelError, Result};

/// Bytes a tensor lives in: a memory map of a file, or owned bytes (llama2.c conversion, tests).
pub enum Backing {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }

    /// Memory-map `path` read-only.
    pub fn map_file(path: &Path) -> Result<Backing> {
        let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: the map is read-only; lowbit never writes to model files it reads. A file truncated
        // by another process while mapped would fault, as it does for every mmap-based loader.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        Ok(Backing::Mmap(map))
    }
}

/// Where one tensor is: its type, row-major shape (outermost first; the last dim is contiguous)
/// and a byte range in one of the store's backings.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub dtype: GgmlType,
    pub shape: Vec<usize>,
    pub backing: usize,
    pub offset: usize,
    pub len: usize,
}

impl TensorEntry {
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A borrowed view of one stored tensor.
#[derive(Clone, Copy)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: GgmlType,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

impl<'a> TensorView<'a> {
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Named tensors of a model. Names follow Hugging Face conventions
/// (`model.layers.0.self_attn.q_proj.weight`); loaders of other formats translate to them.
pub struct WeightStore {
    /// File the tensors came from (the first one for sharded models), for error messages.
    pub path: PathBuf,
    backings: Vec<Arc<Backing>>,
    tensors: BTreeMap<String, TensorEntry>,
}

impl WeightStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        WeightStore {
            path: path.into(),
            backings: Vec::new(),
            tensors: BTreeMap::new(),
        }
    }

    /// Add a backing and return its index for `insert`.
    pub fn add_backing(&mut self, backing: Backing) -> usize {
        self.backings.push(Arc::new(backing));
        self.backings.len() - 1
    }

    /// Register a tensor after checking that its byte range lies inside its backing and matches
    /// its type and shape.
    pub fn insert(&mut self, name: impl Into<String>, entry: TensorEntry) -> Result<()> {
        let name = name.into();
        let backing_len = self
            .backings
            .get(entry.backing)
            .map(|b| b.bytes().len())
            .ok_or_else(|| ModelError::tensor(&self.path, &name, "internal: unknown backing"))?;
        let elements = entry
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| {
                ModelError::tensor(
                    &self.path,
                    &name,
                    format!("shape {:?} overflows", entry.shape),
                )
            })?;
        let expected = entry.dtype.byte_len(elements).ok_or_else(|| {
            ModelError::tensor(
                &self.path,
                &name,
                format!(
                    "{elements} elements is not a multiple of the {} block size {}",
                    entry.dtype,
                    entry.dtype.block_size()
                ),
            )
        })?;
        if expected != entry.len {
            return Err(ModelError::tensor(
                &self.path,
                &name,
                format!(
                    "shape {:?} of {} needs {expected} bytes, the file says {}",
                    entry.shape, entry.dtype, entry.len
                ),
            ));
        }
        let end = entry.offset.checked_add(entry.len);
        if end.is_none_or(|e| e > backing_len) {
            return Err(ModelError::tensor(
                &self.path,
                &name,
                format!(
                    "data at offset {} with {} bytes runs past the end of the file ({} bytes)",
                    entry.offset, entry.len, backing_len
                ),
            ));
        }
        self.tensors.insert(name, entry);
        Ok(())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|s| s.as_str())
    }

    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name)
    }

    pub fn get(&self, name: &str) -> Option<TensorView<'_>> {
        let (k, e) = self.tensors.get_key_value(name)?;
        let data = &self.backings[e.backing].bytes()[e.offset..e.offset + e.len];
        Some(TensorView {
            name: k,
            dtype: e.dtype,
            shape: &e.shape,
            data,
        })
    }

    /// The tensor or an error naming the file and tensor.
    pub fn require(&self, name: &str) -> Result<TensorView<'_>> {
        self.get(name)
            .ok_or_else(|| ModelError::tensor(&self.path, name, "missing from the model"))
    }

    /// Rename a tensor (loaders use this to map source names to HF names).
    pub fn rename(&mut self, from: &str, to: &str) {
        if let Some(e) = self.tensors.remove(from) {
            self.tensors.insert(to.to_string(), e);
        }
    }

    /// Dequantize a whole tensor to f32.
    pub fn to_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.require(name)?;
        let mut out = vec![0f32; t.elements()];
        lowbit_formats::dequantize(t.dtype, t.data, &mut out)
            .map_err(|e| ModelError::tensor(&self.path, name, e.to_string()))?;
        Ok(out)
    }

    /// Total bytes of tensor data.
    pub fn total_bytes(&self) -> usize {
        self.tensors.values().map(|e| e.len).sum()
    }
}

/// An owned handle to one stored tensor: keeps its backing alive, so architectures can hold weights
/// without borrowing the store.
#[derive(Clone)]
pub struct TensorHandle {
    pub name: String,
    pub dtype: GgmlType,
    pub shape: Vec<usize>,
    backing: Arc<Backing>,
    offset: usize,
    len: usize,
}

impl TensorHandle {
    pub fn data(&self) -> &[u8] {
        &self.backing.bytes()[self.offset..self.offset + self.len]
    }
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

impl std::fmt::Debug for TensorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?} {}", self.name, self.shape, self.dtype)
    }
}

impl WeightStore {
    /// An owned handle to a tensor, or an error naming the file and tensor.
    pub fn handle(&self, name: &str) -> Result<TensorHandle> {
        let e = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::tensor(&self.path, name, "missing from the model"))?;
        Ok(TensorHandle {
            name: name.to_string(),
            dtype: e.dtype,
            shape: e.shape.clone(),
            backing: self.backings[e.backing].clone(),
            offset: e.offset,
            len: e.len,
        })
    }
}
