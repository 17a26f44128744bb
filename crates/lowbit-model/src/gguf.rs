//! GGUF v2/v3 reader: header, metadata, tensor table, alignment. Sizes are validated against the
//! file length before anything is allocated, so corrupt files give errors, never panics or huge
//! allocations. Spec: ggml's docs/gguf.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use lowbit_formats::GgmlType;

use crate::error::{ModelError, Result};
use crate::weights::{Backing, TensorEntry, WeightStore};

/// The 4 bytes every GGUF file starts with.
pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of tensor data when `general.alignment` is absent.
pub const GGUF_DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a tensor may have (ggml itself uses 4; we accept a little more).
pub const GGUF_MAX_DIMS: usize = 8;
/// Deepest nesting of arrays inside arrays; real files use at most 2 levels. The limit keeps
/// recursion bounded on hostile input.
const MAX_ARRAY_DEPTH: usize = 16;

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

/// Type ids of metadata values, as stored in the file.
pub mod value_type {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// Name of a metadata value type id, for error messages.
fn value_type_name(id: u32) -> &'static str {
    match id {
        value_type::U8 => "u8",
        value_type::I8 => "i8",
        value_type::U16 => "u16",
        value_type::I16 => "i16",
        value_type::U32 => "u32",
        value_type::I32 => "i32",
        value_type::F32 => "f32",
        value_type::BOOL => "bool",
        value_type::STRING => "string",
        value_type::ARRAY => "array",
        value_type::U64 => "u64",
        value_type::I64 => "i64",
        value_type::F64 => "f64",
        _ => "unknown",
    }
}

/// Smallest encoded size of one value of type `id`, used to bound counts before allocating.
fn min_value_size(id: u32) -> Option<u64> {
    Some(match id {
        value_type::U8 | value_type::I8 | value_type::BOOL => 1,
        value_type::U16 | value_type::I16 => 2,
        value_type::U32 | value_type::I32 | value_type::F32 => 4,
        value_type::U64 | value_type::I64 | value_type::F64 => 8,
        // u64 length, possibly zero bytes.
        value_type::STRING => 8,
        // u32 element type + u64 count.
        value_type::ARRAY => 12,
        _ => return None,
    })
}

impl GgufValue {
    /// The type id this value is stored under.
    pub fn type_id(&self) -> u32 {
        match self {
            GgufValue::U8(_) => value_type::U8,
            GgufValue::I8(_) => value_type::I8,
            GgufValue::U16(_) => value_type::U16,
            GgufValue::I16(_) => value_type::I16,
            GgufValue::U32(_) => value_type::U32,
            GgufValue::I32(_) => value_type::I32,
            GgufValue::F32(_) => value_type::F32,
            GgufValue::Bool(_) => value_type::BOOL,
            GgufValue::String(_) => value_type::STRING,
            GgufValue::Array(_) => value_type::ARRAY,
            GgufValue::U64(_) => value_type::U64,
            GgufValue::I64(_) => value_type::I64,
            GgufValue::F64(_) => value_type::F64,
        }
    }

    /// "u32", "string", "array", ...
    pub fn type_name(&self) -> &'static str {
        value_type_name(self.type_id())
    }

    /// Any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(x) => Some(x as u64),
            GgufValue::U16(x) => Some(x as u64),
            GgufValue::U32(x) => Some(x as u64),
            GgufValue::U64(x) => Some(x),
            GgufValue::I8(x) => u64::try_from(x).ok(),
            GgufValue::I16(x) => u64::try_from(x).ok(),
            GgufValue::I32(x) => u64::try_from(x).ok(),
            GgufValue::I64(x) => u64::try_from(x).ok(),
            _ => None,
        }
    }

    /// Any integer type whose value fits in i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(x) => Some(x as i64),
            GgufValue::I16(x) => Some(x as i64),
            GgufValue::I32(x) => Some(x as i64),
            GgufValue::I64(x) => Some(x),
            GgufValue::U8(x) => Some(x as i64),
            GgufValue::U16(x) => Some(x as i64),
            GgufValue::U32(x) => Some(x as i64),
            GgufValue::U64(x) => i64::try_from(x).ok(),
            _ => None,
        }
    }

    /// Floats, and integers converted to f32 (converters sometimes store e.g. rope bases as ints).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            GgufValue::F32(x) => Some(x),
            GgufValue::F64(x) => Some(x as f32),
            _ => self
                .as_i64()
                .map(|i| i as f32)
                .or_else(|| self.as_u64().map(|u| u as f32)),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
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

    /// Number of elements (the parser has checked that it fits in usize).
    pub fn elements(&self) -> usize {
        self.dims.iter().map(|&d| d as usize).product()
    }

    /// Bytes of tensor data (the parser has checked that it is computable).
    pub fn byte_len(&self) -> usize {
        self.dtype.byte_len(self.elements()).unwrap_or(0)
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

/// Little-endian cursor over the header bytes. Every read checks the remaining length, and every
/// count is checked against it before memory is reserved.
struct Reader<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn err(&self, msg: impl Into<String>) -> ModelError {
        ModelError::format(self.path, msg.into())
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "truncated file: {what} at offset {} needs {n} bytes, only {} remain",
                self.pos,
                self.remaining()
            )));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items each at least `min_size` bytes long, checked against the bytes left so a
    /// lying count fails here instead of in an allocation.
    fn count(&mut self, min_size: u64, what: &str) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let need = n.checked_mul(min_size);
        if need.is_none_or(|need| need > self.remaining() as u64) {
            let need = need.map_or("more than 2^64".to_string(), |b| b.to_string());
            return Err(self.err(format!(
                "{what} at offset {at} is {n}, which needs at least {need} bytes, but only {} bytes remain in the file (truncated or corrupt)",
                self.remaining()
            )));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let len = self.u64(what)?;
        if len > self.remaining() as u64 {
            return Err(self.err(format!(
                "{what} at offset {at} has length {len}, but only {} bytes remain in the file (truncated or corrupt)",
                self.remaining()
            )));
        }
        let raw = self.take(len as usize, what)?;
        // Invalid UTF-8 (seen in some old vocabularies) is replaced, not rejected.
        Ok(match std::str::from_utf8(raw) {
            Ok(s) => s.to_owned(),
            Err(_) => String::from_utf8_lossy(raw).into_owned(),
        })
    }

    /// One value of type `ty`; `what` names it in errors ("metadata 'key'").
    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<GgufValue> {
        Ok(match ty {
            value_type::U8 => GgufValue::U8(self.u8(what)?),
            value_type::I8 => GgufValue::I8(self.u8(what)? as i8),
            value_type::U16 => GgufValue::U16(self.u16(what)?),
            value_type::I16 => GgufValue::I16(self.u16(what)? as i16),
            value_type::U32 => GgufValue::U32(self.u32(what)?),
            value_type::I32 => GgufValue::I32(self.u32(what)? as i32),
            value_type::F32 => GgufValue::F32(f32::from_bits(self.u32(what)?)),
            value_type::U64 => GgufValue::U64(self.u64(what)?),
            value_type::I64 => GgufValue::I64(self.u64(what)? as i64),
            value_type::F64 => GgufValue::F64(f64::from_bits(self.u64(what)?)),
            value_type::BOOL => {
                let at = self.pos;
                match self.u8(what)? {
                    0 => GgufValue::Bool(false),
                    1 => GgufValue::Bool(true),
                    b => {
                        return Err(self.err(format!(
                            "{what}: bool at offset {at} has value {b}, expected 0 or 1"
                        )))
                    }
                }
            }
            value_type::STRING => GgufValue::String(self.string(what)?),
            value_type::ARRAY => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!(
                        "{what}: arrays nested deeper than {MAX_ARRAY_DEPTH} levels"
                    )));
                }
                let at = self.pos;
                let elem_ty = self.u32(what)?;
                let min = min_value_size(elem_ty).ok_or_else(|| {
                    self.err(format!(
                        "{what}: array at offset {at} has unknown element type {elem_ty}"
                    ))
                })?;
                let n = self.count(min, &format!("{what}: array length"))?;
                // Formatted once per array, not per element: vocabularies have 100k+ strings.
                let elem_what = format!("{what}: array element");
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem_ty, &elem_what, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            other => {
                return Err(self.err(format!(
                    "{what}: unknown value type {other} at offset {}",
                    self.pos - 4
                )))
            }
        })
    }
}

/// Parse a tensor-info entry's dims and type and check the element count and byte length.
fn check_tensor_shape(path: &Path, name: &str, dtype: GgmlType, dims: &[u64]) -> Result<usize> {
    let terr = |msg: String| ModelError::tensor(path, name, msg);
    if dims.contains(&0) {
        return Err(terr(format!("dims {dims:?} contain a zero")));
    }
    let elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| terr(format!("dims {dims:?}: element count overflows")))?;
    // Quantized rows must be whole blocks.
    let block = dtype.block_size() as u64;
    if dims[0] % block != 0 {
        return Err(terr(format!(
            "row length {} is not a multiple of the {dtype} block size {block}",
            dims[0]
        )));
    }
    dtype.byte_len(elements).ok_or_else(|| {
        terr(format!(
            "dims {dims:?}: byte length of {dtype} data overflows"
        ))
    })
}

impl GgufFile {
    /// Parse the header of a GGUF file held in `bytes` (typically a memory map of `path`, which is
    /// used in error messages only). Validates every tensor's byte range against `bytes.len()`.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<GgufFile> {
        let mut r = Reader {
            path,
            bytes,
            pos: 0,
        };
        let magic = r.array::<4>("magic")?;
        if &magic != GGUF_MAGIC {
            return Err(r.err(format!(
                "not a GGUF file: magic is {:?}, expected \"GGUF\"",
                String::from_utf8_lossy(&magic)
            )));
        }
        let version = r.u32("version")?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(r.err(
                    "GGUF version 1 is not supported (only versions 2 and 3); re-convert the model with a current llama.cpp",
                ))
            }
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
                return Err(r.err(format!(
                    "big-endian GGUF (version {}) is not supported",
                    v.swap_bytes()
                )))
            }
            v => {
                return Err(r.err(format!(
                    "GGUF version {v} is not supported (only versions 2 and 3)"
                )))
            }
        }

        // Smallest tensor-info entry: name length, n_dims, type, offset (and at least one dim).
        const MIN_TENSOR_INFO: u64 = 8 + 4 + 8 + 4 + 8;
        // Smallest key/value pair: key length, value type, a 1-byte value.
        const MIN_KV: u64 = 8 + 4 + 1;
        let n_tensors = r.count(MIN_TENSOR_INFO, "tensor count")?;
        let n_kv = r.count(MIN_KV, "metadata count")?;

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key #{i}"))?;
            let what = format!("metadata '{key}'");
            let ty = r.u32(&what)?;
            let value = r.value(ty, &what, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(r.err(format!("duplicate metadata key '{key}'")));
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => GGUF_DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a != 0 && a.is_power_of_two() => a,
                Some(a) => {
                    return Err(r.err(format!(
                        "general.alignment is {a}, expected a nonzero power of two"
                    )))
                }
                None => {
                    return Err(r.err(format!(
                        "general.alignment has type {}, expected an unsigned integer",
                        v.type_name()
                    )))
                }
            },
        };

        let mut tensors = Vec::with_capacity(n_tensors);
        let mut names = std::collections::HashSet::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = r.string(&format!("name of tensor #{i}"))?;
            let at = r.pos;
            let n_dims = r.u32(&format!("tensor '{name}': n_dims"))? as usize;
            if n_dims == 0 || n_dims > GGUF_MAX_DIMS {
                return Err(ModelError::tensor(
                    path,
                    &name,
                    format!("n_dims at offset {at} is {n_dims}, expected 1 to {GGUF_MAX_DIMS}"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(r.u64(&format!("tensor '{name}': dims"))?);
            }
            let type_id = r.u32(&format!("tensor '{name}': type"))?;
            let dtype = GgmlType::from_id(type_id).ok_or_else(|| {
                ModelError::tensor(path, &name, format!("unknown ggml type id {type_id}"))
            })?;
            let offset = r.u64(&format!("tensor '{name}': data offset"))?;
            check_tensor_shape(path, &name, dtype, &dims)?;
            if offset % alignment != 0 {
                return Err(ModelError::tensor(
                    path,
                    &name,
                    format!("data offset {offset} is not a multiple of the alignment {alignment}"),
                ));
            }
            if !names.insert(name.clone()) {
                return Err(ModelError::tensor(
                    path,
                    &name,
                    "appears twice in the tensor table",
                ));
            }
            tensors.push(GgufTensorInfo {
                name,
                dtype,
                dims,
                offset,
            });
        }

        // The data section starts at the next multiple of the alignment after the header.
        let header_end = r.pos as u64;
        let data_offset = header_end.div_ceil(alignment) * alignment;
        let file_len = bytes.len() as u64;
        for t in &tensors {
            let len = t.byte_len() as u64;
            let start = data_offset.checked_add(t.offset);
            let end = start.and_then(|s| s.checked_add(len));
            match (start, end) {
                (Some(s), _) if s > file_len => {
                    return Err(ModelError::tensor(
                        path,
                        &t.name,
                        format!(
                            "data offset {} (file offset {s}) is past the end of the file ({file_len} bytes)",
                            t.offset
                        ),
                    ))
                }
                (Some(_), Some(e)) if e <= file_len => {}
                _ => {
                    return Err(ModelError::tensor(
                        path,
                        &t.name,
                        format!(
                            "{len} bytes of {} data at data offset {} run past the end of the file ({file_len} bytes; data section starts at {data_offset})",
                            t.dtype, t.offset
                        ),
                    ))
                }
            }
        }

        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
        })
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// An unsigned integer value (any integer type holding a non-negative value).
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.get(key)?.as_i64()
    }

    /// A float value (f32, f64, or an integer).
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key)?.as_f32()
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    pub fn get_array(&self, key: &str) -> Option<&[GgufValue]> {
        self.get(key)?.as_array()
    }

    /// An array of strings; None when absent or when any element is not a string.
    pub fn get_str_array(&self, key: &str) -> Option<Vec<&str>> {
        self.get_array(key)?.iter().map(|v| v.as_str()).collect()
    }

    /// An array of numbers as f32; None when absent or when any element is not a number.
    pub fn get_f32_array(&self, key: &str) -> Option<Vec<f32>> {
        self.get_array(key)?.iter().map(|v| v.as_f32()).collect()
    }

    /// An array of integers that fit in i32; None when absent or otherwise.
    pub fn get_i32_array(&self, key: &str) -> Option<Vec<i32>> {
        self.get_array(key)?
            .iter()
            .map(|v| v.as_i64().and_then(|i| i32::try_from(i).ok()))
            .collect()
    }

    /// `general.architecture` ("llama", "gemma3", ...).
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// The tensor-table entry named `name`.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Memory-map a GGUF file, parse its header, and register every tensor in a `WeightStore` under
/// its GGUF name (`blk.0.attn_q.weight`, ...) with a row-major shape (the reverse of GGUF dims).
pub fn open_gguf(path: &Path) -> Result<(GgufFile, WeightStore)> {
    let backing = Backing::map_file(path)?;
    let file = GgufFile::parse(path, backing.bytes())?;
    let mut store = WeightStore::new(path);
    let b = store.add_backing(backing);
    for t in &file.tensors {
        // parse() checked that these fit in the file, hence in usize.
        let offset = (file.data_offset + t.offset) as usize;
        let entry = TensorEntry {
            dtype: t.dtype,
            shape: t.shape(),
            backing: b,
            offset,
            len: t.byte_len(),
        };
        store.insert(t.name.clone(), entry)?;
    }
    Ok((file, store))
}
