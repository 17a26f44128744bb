//! Hugging Face model directories: `config.json` plus `model.safetensors` or a sharded
//! `model.safetensors.index.json`. Safetensors headers are parsed here (8-byte little-endian
//! header length, JSON header, raw data) and validated against the file before any tensor is used.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use lowbit_formats::GgmlType;

use crate::error::{ModelError, Result};
use crate::weights::{Backing, TensorEntry, WeightStore};

/// Largest JSON header accepted (the safetensors reference implementation uses the same cap);
/// stops a corrupt length from making us parse or allocate gigabytes.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// One tensor of a safetensors file. `start..end` is relative to the data section.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetensorsTensor {
    pub name: String,
    pub dtype: GgmlType,
    /// Row-major shape, as stored.
    pub shape: Vec<usize>,
    pub start: usize,
    pub end: usize,
}

/// A validated safetensors header.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetensorsHeader {
    /// Absolute file offset of the data section (8 + header length).
    pub data_offset: usize,
    /// Tensors sorted by name.
    pub tensors: Vec<SafetensorsTensor>,
    /// The optional `__metadata__` string map.
    pub metadata: BTreeMap<String, String>,
}

fn dtype_of(name: &str) -> Option<GgmlType> {
    match name {
        "F32" => Some(GgmlType::F32),
        "F16" => Some(GgmlType::F16),
        "BF16" => Some(GgmlType::BF16),
        _ => None,
    }
}

/// Parse and validate the header of a safetensors file held in `bytes` (`path` is for error
/// messages). Checks: header length inside the file, JSON shape, supported dtypes, that each
/// tensor's byte count matches its shape, and that each byte range lies inside the data section.
pub fn parse_safetensors_header(path: &Path, bytes: &[u8]) -> Result<SafetensorsHeader> {
    let err = |msg: String| ModelError::format(path, msg);
    if bytes.len() < 8 {
        return Err(err(format!(
            "truncated safetensors file: {} bytes, the header length alone needs 8",
            bytes.len()
        )));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&bytes[..8]);
    let header_len = u64::from_le_bytes(len_bytes);
    let available = (bytes.len() - 8) as u64;
    if header_len > available {
        return Err(err(format!(
            "safetensors header length {header_len} is larger than the rest of the file ({available} bytes): truncated or not a safetensors file"
        )));
    }
    if header_len > MAX_HEADER_LEN {
        return Err(err(format!(
            "safetensors header length {header_len} exceeds the {MAX_HEADER_LEN}-byte limit"
        )));
    }
    let data_offset = 8 + header_len as usize;
    let data_len = bytes.len() - data_offset;
    let json: serde_json::Value = serde_json::from_slice(&bytes[8..data_offset])
        .map_err(|e| err(format!("safetensors header is not valid JSON: {e}")))?;
    let serde_json::Value::Object(map) = json else {
        return Err(err("safetensors header is not a JSON object".into()));
    };

    let mut tensors = Vec::with_capacity(map.len());
    let mut metadata = BTreeMap::new();
    for (name, info) in &map {
        if name == "__metadata__" {
            let obj = info
                .as_object()
                .ok_or_else(|| err("__metadata__ is not a JSON object".into()))?;
            for (k, v) in obj {
                let v = v
                    .as_str()
                    .ok_or_else(|| err(format!("__metadata__ entry '{k}' is not a string")))?;
                metadata.insert(k.clone(), v.to_string());
            }
            continue;
        }
        tensors.push(parse_tensor(path, name, info, data_len)?);
    }
    // serde_json's map is ordered by key unless `preserve_order` is on; sort to be sure.
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(SafetensorsHeader {
        data_offset,
        tensors,
        metadata,
    })
}

fn parse_tensor(
    path: &Path,
    name: &str,
    info: &serde_json::Value,
    data_len: usize,
) -> Result<SafetensorsTensor> {
    let terr = |msg: String| ModelError::tensor(path, name, msg);
    let obj = info
        .as_object()
        .ok_or_else(|| terr("header entry is not a JSON object".into()))?;
    let dtype_name = obj
        .get("dtype")
        .and_then(|v| v.as_str())
        .ok_or_else(|| terr("missing or non-string \"dtype\"".into()))?;
    let dtype = dtype_of(dtype_name).ok_or_else(|| {
        terr(format!(
            "dtype {dtype_name} is not supported (lowbit reads F32, F16 and BF16 safetensors)"
        ))
    })?;
    let shape = obj
        .get("shape")
        .and_then(|v| v.as_array())
        .ok_or_else(|| terr("missing or non-array \"shape\"".into()))?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| terr("\"shape\" must be a list of non-negative integers".into()))?;
    let offsets = obj
        .get("data_offsets")
        .and_then(|v| v.as_array())
        .filter(|a| a.len() == 2)
        .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
        .ok_or_else(|| terr("\"data_offsets\" must be [start, end] with integers".into()))?;
    let (start, end) = offsets;
    if start > end {
        return Err(terr(format!(
            "data_offsets [{start}, {end}]: start is after end"
        )));
    }
    if end > data_len as u64 {
        return Err(terr(format!(
            "data_offsets [{start}, {end}] run past the end of the data section ({data_len} bytes)"
        )));
    }
    let expected = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .and_then(|n| dtype.byte_len(n))
        .ok_or_else(|| terr(format!("shape {shape:?} overflows")))?;
    if (end - start) as usize != expected {
        return Err(terr(format!(
            "shape {shape:?} of {dtype_name} needs {expected} bytes, data_offsets [{start}, {end}] hold {}",
            end - start
        )));
    }
    Ok(SafetensorsTensor {
        name: name.to_string(),
        dtype,
        shape,
        start: start as usize,
        end: end as usize,
    })
}

/// Memory-map one safetensors file and add its tensors to `store`; returns their names.
pub fn add_safetensors_file(store: &mut WeightStore, path: &Path) -> Result<Vec<String>> {
    let backing = Backing::map_file(path)?;
    let header = parse_safetensors_header(path, backing.bytes())?;
    let b = store.add_backing(backing);
    let mut names = Vec::with_capacity(header.tensors.len());
    for t in header.tensors {
        if store.contains(&t.name) {
            return Err(ModelError::tensor(
                path,
                &t.name,
                "also present in another safetensors file of this model",
            ));
        }
        let entry = TensorEntry {
            dtype: t.dtype,
            shape: t.shape,
            backing: b,
            offset: header.data_offset + t.start,
            len: t.end - t.start,
        };
        store.insert(t.name.clone(), entry)?;
        names.push(t.name);
    }
    Ok(names)
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_slice(&text)
        .map_err(|e| ModelError::format(path, format!("invalid JSON: {e}")))
}

/// The shard files of a `model.safetensors.index.json`, with the tensors each must contain.
fn read_index(index_path: &Path) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let index = read_json(index_path)?;
    let weight_map = index
        .get("weight_map")
        .and_then(|w| w.as_object())
        .ok_or_else(|| ModelError::format(index_path, "no \"weight_map\" object"))?;
    let mut shards: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (tensor, file) in weight_map {
        let file = file.as_str().ok_or_else(|| {
            ModelError::tensor(index_path, tensor, "weight_map entry is not a file name")
        })?;
        // Shards must sit next to the index: no directories, no "..".
        let plain = Path::new(file).file_name().is_some_and(|n| n == file) && file != "..";
        if !plain {
            return Err(ModelError::tensor(
                index_path,
                tensor,
                format!("shard name '{file}' is not a plain file name"),
            ));
        }
        shards
            .entry(file.to_string())
            .or_default()
            .insert(tensor.clone());
    }
    if shards.is_empty() {
        return Err(ModelError::format(index_path, "\"weight_map\" is empty"));
    }
    Ok(shards)
}

/// Load all shards listed in an index into a new store.
fn open_index(index_path: &Path) -> Result<WeightStore> {
    let dir = index_path.parent().unwrap_or(Path::new("."));
    let shards = read_index(index_path)?;
    let mut store: Option<WeightStore> = None;
    for (file, expected) in &shards {
        let shard = dir.join(file);
        if !shard.is_file() {
            return Err(ModelError::format(
                index_path,
                format!(
                    "shard {} is listed in the index but missing",
                    shard.display()
                ),
            ));
        }
        let store = store.get_or_insert_with(|| WeightStore::new(&shard));
        let names: BTreeSet<String> = add_safetensors_file(store, &shard)?.into_iter().collect();
        if let Some(missing) = expected.difference(&names).next() {
            return Err(ModelError::tensor(
                &shard,
                missing,
                format!(
                    "listed in {} for this shard but not in it",
                    index_path.display()
                ),
            ));
        }
    }
    // `shards` is non-empty, so a store exists.
    store.ok_or_else(|| ModelError::format(index_path, "no shards"))
}

/// Open a Hugging Face model directory (or a `.safetensors` file inside one): returns the raw
/// `config.json` and the weights under their HF names. Sharded models are read through
/// `model.safetensors.index.json`; each shard is memory-mapped once.
pub fn open_hf_dir(path: &Path) -> Result<(serde_json::Value, WeightStore)> {
    let (dir, file): (PathBuf, Option<PathBuf>) = if path.is_file() {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        (dir, Some(path.to_path_buf()))
    } else if path.is_dir() {
        (path.to_path_buf(), None)
    } else {
        return Err(ModelError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    };

    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        return Err(ModelError::unsupported(
            &dir,
            "no config.json in the model directory (an HF model directory needs config.json next to its safetensors)",
        ));
    }
    let config = read_json(&config_path)?;

    let index_path = dir.join(INDEX_FILE);
    if is_compressed_tensors(&config) {
        let f = file.unwrap_or_else(|| dir.join(SINGLE_FILE));
        return Ok((config.clone(), open_compressed_tensors(&f, &config)?));
    }
    let store = match file {
        // A shard of an indexed model stands for the whole model.
        Some(f) if index_path.is_file() && shard_listed(&index_path, &f) => {
            open_index(&index_path)?
        }
        Some(f) => {
            let mut store = WeightStore::new(&f);
            add_safetensors_file(&mut store, &f)?;
            store
        }
        None if dir.join(SINGLE_FILE).is_file() => {
            let f = dir.join(SINGLE_FILE);
            let mut store = WeightStore::new(&f);
            add_safetensors_file(&mut store, &f)?;
            store
        }
        None if index_path.is_file() => open_index(&index_path)?,
        None => {
            return Err(ModelError::unsupported(
                &dir,
                format!("neither {SINGLE_FILE} nor {INDEX_FILE} in the model directory"),
            ))
        }
    };
    Ok((config, store))
}

/// Stored bytes of every tensor in the safetensors files of an HF directory (`model.safetensors`,
/// or the shards of its index), from the headers alone: what a checkpoint costs per tensor
/// (`lowbit eval compare` counts bits per weight with it).
pub fn tensor_bytes(dir: &Path) -> Result<BTreeMap<String, usize>> {
    let files: Vec<PathBuf> = if dir.join(SINGLE_FILE).is_file() {
        vec![dir.join(SINGLE_FILE)]
    } else if dir.join(INDEX_FILE).is_file() {
        read_index(&dir.join(INDEX_FILE))?
            .keys()
            .map(|f| dir.join(f))
            .collect()
    } else {
        return Err(ModelError::unsupported(
            dir,
            format!("neither {SINGLE_FILE} nor {INDEX_FILE} in the model directory"),
        ));
    };
    let mut out = BTreeMap::new();
    for f in files {
        let backing = Backing::map_file(&f)?;
        let (_, tensors) = parse_raw_header(&f, backing.bytes())?;
        out.extend(tensors.into_iter().map(|(n, t)| (n, t.end - t.start)));
    }
    Ok(out)
}

/// Whether `file` is one of the shards named by the index (a broken index counts as "no").
fn shard_listed(index_path: &Path, file: &Path) -> bool {
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
    name.is_some_and(|n| read_index(index_path).is_ok_and(|s| s.contains_key(&n)))
}

// ---------------------------------------------------------------------------------------------
// compressed-tensors checkpoints (vLLM's layout, what `lowbit quantize` writes; docs/FORMAT.md).
// Symmetric INT4 weights with group scales (w4g128) stay packed, repacked losslessly as GGML
// Q4_0 so the fused kernels run them; MXFP4 (groups of 32) as GGML MXFP4 and NVFP4 (rows of
// whole 128-value blocks) as lowbit's LB_NVFP4 blocks, both with the same values; other quantized
// weights (FP8, other layouts) are dequantized to f32 at load.
// Full-precision tensors (embeddings, norms) keep their stored dtype (BF16/F16/F32), except
// F32 matrices that are exactly Q8_0 blocks (GGUF-made checkpoints), stored as such.

/// Whether a config.json says its weights are in compressed-tensors layout.
pub fn is_compressed_tensors(config: &serde_json::Value) -> bool {
    config
        .get("quantization_config")
        .and_then(|q| q.get("quant_method"))
        .and_then(|m| m.as_str())
        == Some("compressed-tensors")
}

/// A tensor of any safetensors dtype (the plain-float reader above rejects the others).
struct RawTensor {
    dtype: String,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

fn raw_dtype_size(d: &str) -> Option<usize> {
    Some(match d {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "F8_E4M3" | "F8_E5M2" | "BOOL" => 1,
        _ => return None,
    })
}

fn parse_raw_header(path: &Path, bytes: &[u8]) -> Result<(usize, BTreeMap<String, RawTensor>)> {
    let err = |m: String| ModelError::format(path, m);
    if bytes.len() < 8 {
        return Err(err("truncated safetensors file".into()));
    }
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if header_len > MAX_HEADER_LEN || header_len > (bytes.len() - 8) as u64 {
        return Err(err(format!(
            "safetensors header length {header_len} does not fit the file"
        )));
    }
    let data_offset = 8 + header_len as usize;
    let data_len = bytes.len() - data_offset;
    let json: serde_json::Value = serde_json::from_slice(&bytes[8..data_offset])
        .map_err(|e| err(format!("safetensors header is not valid JSON: {e}")))?;
    let map = json
        .as_object()
        .ok_or_else(|| err("safetensors header is not a JSON object".into()))?;
    let mut out = BTreeMap::new();
    for (name, info) in map {
        if name == "__metadata__" {
            continue;
        }
        let terr = |m: String| ModelError::tensor(path, name, m);
        let dtype = info
            .get("dtype")
            .and_then(|v| v.as_str())
            .ok_or_else(|| terr("missing dtype".into()))?;
        let size = raw_dtype_size(dtype).ok_or_else(|| terr(format!("unknown dtype {dtype}")))?;
        let shape: Vec<usize> = info
            .get("shape")
            .and_then(|v| v.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
            .ok_or_else(|| terr("bad shape".into()))?;
        let offs = info
            .get("data_offsets")
            .and_then(|v| v.as_array())
            .filter(|a| a.len() == 2)
            .and_then(|a| Some((a[0].as_u64()? as usize, a[1].as_u64()? as usize)))
            .ok_or_else(|| terr("bad data_offsets".into()))?;
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(size));
        if offs.0 > offs.1 || offs.1 > data_len || n != Some(offs.1 - offs.0) {
            return Err(terr(format!(
                "data_offsets {offs:?} do not hold shape {shape:?} of {dtype} inside the file"
            )));
        }
        out.insert(
            name.clone(),
            RawTensor {
                dtype: dtype.to_string(),
                shape,
                start: offs.0,
                end: offs.1,
            },
        );
    }
    Ok((data_offset, out))
}

fn raw_to_f32(path: &Path, name: &str, t: &RawTensor, data: &[u8]) -> Result<Vec<f32>> {
    let b = &data[t.start..t.end];
    Ok(match t.dtype.as_str() {
        "F32" => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
            .collect(),
        "F16" => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        "BF16" => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        d => {
            return Err(ModelError::tensor(
                path,
                name,
                format!("expected a float tensor, found {d}"),
            ))
        }
    })
}

fn raw_to_i64(path: &Path, name: &str, t: &RawTensor, data: &[u8]) -> Result<Vec<i64>> {
    let b = &data[t.start..t.end];
    Ok(match t.dtype.as_str() {
        "I64" => b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8")))
            .collect(),
        "I32" => b
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().expect("4")) as i64)
            .collect(),
        "I8" => b.iter().map(|&c| c as i8 as i64).collect(),
        d => {
            return Err(ModelError::tensor(
                path,
                name,
                format!("expected an integer tensor, found {d}"),
            ))
        }
    })
}

/// Scale of (row, col) from a scale tensor of shape [rows, groups], [rows, 1], [rows] or [1].
fn scale_at(
    scales: &[f32],
    shape: &[usize],
    rows: usize,
    cols: usize,
    r: usize,
    c: usize,
) -> Option<f32> {
    let n = scales.len();
    if n == 1 {
        return Some(scales[0]);
    }
    if n % rows != 0 || shape.first() != Some(&rows) {
        return None;
    }
    let groups = n / rows;
    if cols % groups != 0 {
        return None;
    }
    scales.get(r * groups + c / (cols / groups)).copied()
}

/// One `nvfp4-pack-quantized` / `mxfp4-pack-quantized` module, validated: `weight_packed` U8
/// [rows, cols/2] (element 2i in the low nibble), `weight_scale` [rows, groups] as F8_E4M3
/// (NVFP4, divided by the F32 `weight_global_scale`) or E8M0 bytes in U8 (MXFP4). Values are
/// e2m1(code) · (scale / global_scale) in f32, the order compressed-tensors computes in.
struct Fp4<'a> {
    rows: usize,
    cols: usize,
    groups: usize,
    codes: &'a [u8],
    scale_bytes: &'a [u8],
    /// NVFP4's global scale; None for MXFP4.
    global: Option<f32>,
    /// Every group's scale as f32 (`e4m3 / global` or `2^(e − 127)`), all finite.
    scales: Vec<f32>,
}

impl<'a> Fp4<'a> {
    fn parse(
        file: &Path,
        module: &str,
        packed: &RawTensor,
        tensors: &BTreeMap<String, RawTensor>,
        data: &'a [u8],
    ) -> Result<Fp4<'a>> {
        let name = format!("{module}.weight_packed");
        let terr = |m: String| ModelError::tensor(file, &name, m);
        if packed.shape.len() != 2 || packed.shape[1] == 0 {
            return Err(terr(format!(
                "expected U8 [rows, cols/2], found {:?}",
                packed.shape
            )));
        }
        let (rows, cols) = (packed.shape[0], packed.shape[1] * 2);
        let st = tensors
            .get(&format!("{module}.weight_scale"))
            .ok_or_else(|| terr(format!("{module}.weight_scale is missing")))?;
        let groups = match st.shape[..] {
            [r, g] if r == rows && g > 0 && cols % g == 0 => g,
            _ => {
                return Err(terr(format!(
                    "weight_scale shape {:?} does not fit [{rows}, {cols}]",
                    st.shape
                )))
            }
        };
        let e4m3 = lowbit_formats::minifloat::Minifloat::E4M3FN;
        let sbytes = &data[st.start..st.end];
        let (global, scales): (Option<f32>, Vec<f32>) = match st.dtype.as_str() {
            "F8_E4M3" => {
                let gt = tensors
                    .get(&format!("{module}.weight_global_scale"))
                    .ok_or_else(|| terr("NVFP4 weight_global_scale is missing".into()))?;
                let g = raw_to_f32(file, &format!("{module}.weight_global_scale"), gt, data)?;
                let gs = match g[..] {
                    [v] if v.is_finite() && v > 0.0 => v,
                    _ => {
                        return Err(terr(format!(
                            "weight_global_scale must be one positive value, found {g:?}"
                        )))
                    }
                };
                (
                    Some(gs),
                    sbytes.iter().map(|&b| e4m3.decode(b as u32) / gs).collect(),
                )
            }
            "U8" => (
                None,
                sbytes
                    .iter()
                    .map(|&b| lowbit_formats::qtensor::e8m0_value(b))
                    .collect(),
            ),
            d => {
                return Err(terr(format!(
                    "weight_scale must be F8_E4M3 (nvfp4) or U8 E8M0 (mxfp4), found {d}"
                )))
            }
        };
        if let Some(s) = scales.iter().find(|s| !s.is_finite()) {
            return Err(terr(format!("weight_scale holds a non-finite value ({s})")));
        }
        Ok(Fp4 {
            rows,
            cols,
            groups,
            codes: &data[packed.start..packed.end],
            scale_bytes: sbytes,
            global,
            scales,
        })
    }

    /// All values as f32 (row-major).
    fn dequantize(&self) -> Vec<f32> {
        let e2m1 = lowbit_formats::minifloat::Minifloat::E2M1;
        let table: Vec<f32> = (0..16).map(|c| e2m1.decode(c)).collect();
        let gsize = self.cols / self.groups;
        let mut vals = vec![0f32; self.rows * self.cols];
        for (i, v) in vals.iter_mut().enumerate() {
            let b = self.codes[i / 2];
            let code = if i % 2 == 0 { b & 0x0f } else { b >> 4 };
            let (r, c) = (i / self.cols, i % self.cols);
            *v = table[code as usize] * self.scales[r * self.groups + c / gsize];
        }
        vals
    }

    /// The weights as a block type the fused kernels run, with the same values: MXFP4 with
    /// groups of 32 as GGML MXFP4 blocks, NVFP4 with groups of 16 and rows of whole 128-value
    /// blocks as lowbit's `LB_NVFP4`. None for other layouts (the caller dequantizes).
    fn repack(&self) -> Option<(GgmlType, Vec<u8>)> {
        let gsize = self.cols / self.groups;
        match self.global {
            Some(g) if gsize == lowbit_formats::lb_nvfp4::SUB => {
                let q = lowbit_formats::lb_nvfp4::pack(
                    self.codes,
                    self.scale_bytes,
                    g,
                    self.rows,
                    self.cols,
                )
                .ok()?;
                Some((GgmlType::LB_NVFP4, q))
            }
            None if gsize == 32 => {
                Some((GgmlType::MXFP4, repack_mxfp4(self.codes, self.scale_bytes)))
            }
            _ => None,
        }
    }
}

/// compressed-tensors MXFP4 (groups of 32; value 2i of a row in the low nibble of byte i, one
/// E8M0 byte per group) as GGML MXFP4 blocks (the E8M0 byte, then 16 bytes whose low nibbles
/// are values 0..16 and high nibbles 16..32). ggml decodes `2^(e − 128) · 2e2m1(q)`, which is
/// compressed-tensors' `2^(e − 127) · e2m1(q)` exactly (E8M0 255, NaN, is rejected at parse),
/// except that a −0 code reads back as +0.
fn repack_mxfp4(codes: &[u8], scales: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(scales.len() * 17);
    for (c, &e) in codes.chunks_exact(16).zip(scales) {
        out.push(e);
        let nib = |i: usize| (c[i / 2] >> (4 * (i % 2))) & 0x0F;
        out.extend((0..16).map(|j| nib(j) | (nib(j + 16) << 4)));
    }
    out
}

/// Drop this process's copies of the map's pages in `start..start + len` (packed tensors that
/// were copied out at load): they would otherwise count in the resident set for the whole run.
fn release_pages(backing: &Backing, start: usize, len: usize) {
    #[cfg(unix)]
    if let Backing::Mmap(m) = backing {
        // SAFETY: a read-only private file map: MADV_DONTNEED only drops this process's copies
        // of the pages, which fault back in from the unchanged file if read again, so no slice
        // into the map observes a change. Failure just keeps them resident.
        unsafe {
            let _ = m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len);
        }
    }
    #[cfg(not(unix))]
    let _ = (backing, start, len);
}

/// Symmetric 4-bit pack-quantized weights as GGML Q4_0 (blocks of 32: f16 scale, then 16 bytes
/// whose low nibbles are values 0..16 and high nibbles 16..32, value = (q − 8) · d). The
/// compressed-tensors value is (stored nibble − 8) · scale, so a group of `g` (a multiple of 32)
/// becomes g/32 blocks that repeat its scale, exactly, provided the scale is an f16 value (F16
/// scales always are; BF16 ones are checked). None when the layout does not fit: the caller then
/// dequantizes to f32.
fn repack_int4_as_q4_0(
    num_bits: u32,
    rows: usize,
    cols: usize,
    words: &[u32],
    scales: &[f32],
    st: &RawTensor,
) -> Option<Vec<u8>> {
    if num_bits != 4 || cols % 32 != 0 || !matches!(st.dtype.as_str(), "F16" | "BF16") {
        return None;
    }
    let groups = match st.shape[..] {
        [r, g] if r == rows && g > 0 && cols % g == 0 && (cols / g) % 32 == 0 => g,
        _ => return None,
    };
    if scales.len() != rows * groups || words.len() != rows * cols / 8 {
        return None;
    }
    let f16s: Vec<half::f16> = scales.iter().map(|&s| half::f16::from_f32(s)).collect();
    if f16s.iter().zip(scales).any(|(h, &s)| h.to_f32() != s) {
        return None;
    }
    let gsize = cols / groups;
    let mut out = Vec::with_capacity(rows * cols / 32 * 18);
    for r in 0..rows {
        // 32 codes = 4 words per block; code i of the row sits in bits 4(i % 8) of word i / 8.
        let row = &words[r * cols / 8..(r + 1) * cols / 8];
        for (b, w4) in row.chunks_exact(4).enumerate() {
            let nib = |i: usize| ((w4[i / 8] >> (4 * (i % 8))) & 0xF) as u8;
            out.extend_from_slice(&f16s[r * groups + b * 32 / gsize].to_le_bytes());
            out.extend((0..16).map(|l| nib(l) | (nib(l + 16) << 4)));
        }
    }
    Some(out)
}

/// Bytes checked by [`f32_as_q8_0_exact`] between releases of the map's pages.
const RELEASE_CHUNK: usize = 16 << 20;

/// [`f32_as_q8_0_exact`] chunk by chunk, dropping each checked chunk's pages of the file map
/// (`bytes` starts at `abs_start` in `backing`), so that checking a 671 MB F32 embedding does not
/// leave it resident: peak memory is the Q8_0 copy plus one chunk.
fn f32_as_q8_0_exact_released(
    backing: &Backing,
    abs_start: usize,
    bytes: &[u8],
    cols: usize,
) -> Option<Vec<u8>> {
    if cols == 0 || bytes.len() % (cols * 4) != 0 {
        return None;
    }
    let chunk = (RELEASE_CHUNK / (cols * 4)).max(1) * cols * 4;
    let mut out = Vec::with_capacity(bytes.len() / 128 * 34);
    for (i, c) in bytes.chunks(chunk).enumerate() {
        let q = f32_as_q8_0_exact(c, cols);
        #[cfg(unix)]
        if let Backing::Mmap(m) = backing {
            // SAFETY: a read-only private file map: MADV_DONTNEED only drops this process's
            // copies of the pages, which fault back in from the unchanged file if read again,
            // so no slice into the map observes a change. Failure just keeps them resident.
            unsafe {
                let _ = m.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    abs_start + i * chunk,
                    c.len(),
                );
            }
        }
        out.extend_from_slice(&q?);
    }
    Some(out)
}

/// An F32 matrix whose every block of 32 values of a row is exactly `d · q` (f16 `d`, integer
/// `|q| ≤ 127`) as GGML Q8_0, else None. Checkpoints made from a GGUF source store their kept
/// tensors this way (Gemma's tied 262144 × 640 embedding is Q8_0 in the Q4_K_M file, written out
/// as 671 MB of f32); as Q8_0 the output GEMV streams 1.06 instead of 4 bytes per weight, with
/// bit-identical values. Only exact fits are taken: any other f32 data stays f32.
fn f32_as_q8_0_exact(bytes: &[u8], cols: usize) -> Option<Vec<u8>> {
    if cols == 0 || cols % 32 != 0 || bytes.len() % (cols * 4) != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 128 * 34);
    let mut v = [0f32; 32];
    for blk in bytes.chunks_exact(128) {
        for (x, b) in v.iter_mut().zip(blk.chunks_exact(4)) {
            *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        let amax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        if !amax.is_finite() {
            return None;
        }
        // The Q8_0 quantizer's scale: amax / 127 rounded to f16.
        let d = half::f16::from_f32(amax / 127.0);
        let df = d.to_f32();
        out.extend_from_slice(&d.to_le_bytes());
        for &x in &v {
            let q = if df == 0.0 { 0.0 } else { (x / df).round() };
            if q.abs() > 127.0 || df * q != x {
                return None;
            }
            out.push(q as i8 as u8);
        }
    }
    Some(out)
}

/// Load a compressed-tensors `model.safetensors`. Supports pack-quantized integers (1..8 bits, symmetric or with packed zero points),
/// int-quantized I8 weights (W8A8), float-quantized FP8 E4M3 with tensor or channel scales, and NVFP4 / MXFP4
/// (`nvfp4-pack-quantized`, `mxfp4-pack-quantized`).
///
/// Weights that a fused kernel can run stay packed (see [`open_compressed_tensors_with`]) unless
/// [`UNPACK_ENV`] asks for f32: `LOWBIT_UNPACK=1` for every checkpoint, or `LOWBIT_UNPACK=DIR` for
/// the checkpoint in DIR only (so `lowbit eval kld --model DIR --base COPY` can compare the packed
/// path with the f32 one, COPY being a directory of symlinks to DIR's files).
pub fn open_compressed_tensors(file: &Path, config: &serde_json::Value) -> Result<WeightStore> {
    open_compressed_tensors_with(file, config, !unpack_requested(file))
}

/// Environment variable that makes compressed-tensors checkpoints load dequantized to f32.
pub const UNPACK_ENV: &str = "LOWBIT_UNPACK";

fn unpack_requested(file: &Path) -> bool {
    let Some(v) = std::env::var_os(UNPACK_ENV) else {
        return false;
    };
    if v == "1" || v == "all" {
        return true;
    }
    let want = std::fs::canonicalize(&v).ok();
    let dir = file.parent().and_then(|d| {
        std::fs::canonicalize(if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        })
        .ok()
    });
    want.is_some() && want == dir
}

/// [`open_compressed_tensors`], choosing whether weights a fused kernel can run stay packed
/// (`keep_packed`) or are dequantized to f32 like every other scheme: symmetric INT4 with
/// f16-exact group scales (what `lowbit quantize --scheme w4g128` writes) repacked losslessly as
/// GGML Q4_0 blocks (0.5625 B/weight); MXFP4 with groups of 32 as GGML MXFP4 (0.53 B/weight);
/// NVFP4 whose rows are whole 128-value blocks as `LB_NVFP4` (0.59 B/weight); F32 matrices that
/// are exactly Q8_0 blocks as Q8_0. Both give the same weight values (a -0.0 may read back as
/// +0.0). The file pages of repacked tensors are released after the copy.
pub fn open_compressed_tensors_with(
    file: &Path,
    config: &serde_json::Value,
    keep_packed: bool,
) -> Result<WeightStore> {
    let backing = Backing::map_file(file)?;
    let bytes = backing.bytes();
    let (data_offset, tensors) = parse_raw_header(file, bytes)?;
    let data = &bytes[data_offset..];
    let qc = &config["quantization_config"];
    let group = qc
        .get("config_groups")
        .and_then(|g| g.as_object())
        .and_then(|g| g.values().next())
        .ok_or_else(|| ModelError::format(file, "quantization_config has no config_groups"))?;
    let wargs = &group["weights"];
    let num_bits = wargs.get("num_bits").and_then(|v| v.as_u64()).unwrap_or(8) as u32;
    let mut out: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    // Repacked quantized weights (owned), and full-precision tensors left in the file's map.
    let mut packed: Vec<(String, GgmlType, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut plain: Vec<(String, GgmlType, Vec<usize>, usize, usize)> = Vec::new();
    let aux = [
        ".weight_scale",
        ".weight_zero_point",
        ".weight_shape",
        ".weight_g_idx",
        ".weight_global_scale",
    ];
    for (name, t) in &tensors {
        if aux.iter().any(|s| name.ends_with(s)) {
            continue;
        }
        let terr = |m: String| ModelError::tensor(file, name, m);
        if let (Some(module), "U8") = (name.strip_suffix(".weight_packed"), t.dtype.as_str()) {
            let fp4 = Fp4::parse(file, module, t, &tensors, data)?;
            if keep_packed {
                if let Some((ty, q)) = fp4.repack() {
                    packed.push((format!("{module}.weight"), ty, vec![fp4.rows, fp4.cols], q));
                    // The codes were copied out; their file pages are not read again.
                    release_pages(&backing, data_offset + t.start, t.end - t.start);
                    continue;
                }
            }
            out.push((
                format!("{module}.weight"),
                vec![fp4.rows, fp4.cols],
                fp4.dequantize(),
            ));
        } else if let Some(module) = name.strip_suffix(".weight_packed") {
            if t.dtype != "I32" || t.shape.len() != 2 {
                return Err(terr(format!(
                    "expected I32 [rows, words], found {} {:?}",
                    t.dtype, t.shape
                )));
            }
            if !(1..=8).contains(&num_bits) {
                return Err(terr(format!("num_bits {num_bits} is not 1..8")));
            }
            let get = |s: &str| {
                tensors
                    .get(&format!("{module}{s}"))
                    .ok_or_else(|| terr(format!("{module}{s} is missing")))
            };
            let shape = raw_to_i64(file, name, get(".weight_shape")?, data)?;
            let (rows, cols) = match shape[..] {
                [r, c] if r > 0 && c > 0 => (r as usize, c as usize),
                _ => return Err(terr(format!("weight_shape {shape:?} is not [rows, cols]"))),
            };
            let words = (cols * num_bits as usize).div_ceil(32);
            if t.shape != [rows, words] {
                return Err(terr(format!(
                    "shape {:?} does not pack [{rows}, {cols}] at {num_bits} bits",
                    t.shape
                )));
            }
            let st = get(".weight_scale")?;
            let scales = raw_to_f32(file, &format!("{module}.weight_scale"), st, data)?;
            let offset = 1i32 << (num_bits - 1);
            // Zero points [rows, groups], packed along rows, when asymmetric.
            let zeros: Option<Vec<i32>> = match tensors.get(&format!("{module}.weight_zero_point"))
            {
                None => None,
                Some(zt) if zt.dtype == "I32" && zt.shape.len() == 2 => {
                    let groups = zt.shape[1];
                    let zw: Vec<u32> = data[zt.start..zt.end]
                        .chunks_exact(4)
                        .map(|c| u32::from_le_bytes(c.try_into().expect("4")))
                        .collect();
                    let zwords = zt.shape[0];
                    let mut z = vec![0i32; rows * groups];
                    let mut col = vec![0u32; zwords];
                    let mut codes = vec![0u8; rows];
                    for g in 0..groups {
                        for (w, c) in col.iter_mut().enumerate() {
                            *c = zw[w * groups + g];
                        }
                        lowbit_formats::pack::unpack_into(&col, num_bits, &mut codes)
                            .map_err(|e| terr(e))?;
                        for r in 0..rows {
                            z[r * groups + g] = codes[r] as i32 - offset;
                        }
                    }
                    Some(z)
                }
                Some(zt) => Some(
                    raw_to_i64(file, name, zt, data)?
                        .into_iter()
                        .map(|v| v as i32)
                        .collect(),
                ),
            };
            let words_all: Vec<u32> = data[t.start..t.end]
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4")))
                .collect();
            if keep_packed && zeros.is_none() {
                if let Some(q) = repack_int4_as_q4_0(num_bits, rows, cols, &words_all, &scales, st)
                {
                    packed.push((
                        format!("{module}.weight"),
                        GgmlType::Q4_0,
                        vec![rows, cols],
                        q,
                    ));
                    release_pages(&backing, data_offset + t.start, t.end - t.start);
                    continue;
                }
            }
            let mut vals = vec![0f32; rows * cols];
            let mut codes = vec![0u8; cols];
            for r in 0..rows {
                lowbit_formats::pack::unpack_into(
                    &words_all[r * words..(r + 1) * words],
                    num_bits,
                    &mut codes,
                )
                .map_err(|e| terr(e))?;
                for c in 0..cols {
                    let s = scale_at(&scales, &st.shape, rows, cols, r, c).ok_or_else(|| {
                        terr(format!(
                            "scale shape {:?} does not fit [{rows}, {cols}]",
                            st.shape
                        ))
                    })?;
                    let z = match &zeros {
                        None => 0,
                        Some(z) if z.len() == 1 => z[0],
                        Some(z) => {
                            let groups = z.len() / rows;
                            z[r * groups + c / (cols / groups.max(1))]
                        }
                    };
                    vals[r * cols + c] = (codes[c] as i32 - offset - z) as f32 * s;
                }
            }
            out.push((format!("{module}.weight"), vec![rows, cols], vals));
        } else if let (Some(module), "I8", true) = (
            name.strip_suffix(".weight"),
            t.dtype.as_str(),
            tensors.contains_key(&format!(
                "{}.weight_scale",
                name.trim_end_matches(".weight")
            )),
        ) {
            // int-quantized (vLLM's W8A8 layout): signed codes as I8 [rows, cols] times
            // weight_scale (tensor, channel or group).
            if t.shape.len() != 2 {
                return Err(terr(format!(
                    "expected a 2-D I8 weight, found {:?}",
                    t.shape
                )));
            }
            let (rows, cols) = (t.shape[0], t.shape[1]);
            let st = &tensors[&format!("{module}.weight_scale")];
            let scales = raw_to_f32(file, &format!("{module}.weight_scale"), st, data)?;
            let codes = &data[t.start..t.end];
            let mut vals = vec![0f32; rows * cols];
            for r in 0..rows {
                for c in 0..cols {
                    let s = scale_at(&scales, &st.shape, rows, cols, r, c).ok_or_else(|| {
                        terr(format!(
                            "scale shape {:?} does not fit [{rows}, {cols}]",
                            st.shape
                        ))
                    })?;
                    vals[r * cols + c] = codes[r * cols + c] as i8 as f32 * s;
                }
            }
            out.push((name.clone(), vec![rows, cols], vals));
        } else if t.dtype == "F8_E4M3" {
            let module = name
                .strip_suffix(".weight")
                .ok_or_else(|| terr("FP8 tensor that is not a .weight".into()))?;
            if t.shape.len() != 2 {
                return Err(terr(format!(
                    "expected a 2-D FP8 weight, found {:?}",
                    t.shape
                )));
            }
            let (rows, cols) = (t.shape[0], t.shape[1]);
            let st = tensors
                .get(&format!("{module}.weight_scale"))
                .ok_or_else(|| terr("weight_scale is missing".into()))?;
            let scales = raw_to_f32(file, &format!("{module}.weight_scale"), st, data)?;
            let e4m3 = lowbit_formats::minifloat::Minifloat::E4M3FN;
            let codes = &data[t.start..t.end];
            let mut vals = vec![0f32; rows * cols];
            for r in 0..rows {
                for c in 0..cols {
                    let s = scale_at(&scales, &st.shape, rows, cols, r, c).ok_or_else(|| {
                        terr(format!(
                            "scale shape {:?} does not fit [{rows}, {cols}]",
                            st.shape
                        ))
                    })?;
                    vals[r * cols + c] = e4m3.decode(codes[r * cols + c] as u32) * s;
                }
            }
            out.push((name.clone(), vec![rows, cols], vals));
        } else {
            let dtype = dtype_of(&t.dtype)
                .ok_or_else(|| terr(format!("dtype {} is not supported here", t.dtype)))?;
            if keep_packed && dtype == GgmlType::F32 && t.shape.len() == 2 {
                let bytes = &data[t.start..t.end];
                if let Some(q) =
                    f32_as_q8_0_exact_released(&backing, data_offset + t.start, bytes, t.shape[1])
                {
                    packed.push((name.clone(), GgmlType::Q8_0, t.shape.clone(), q));
                    continue;
                }
            }
            plain.push((
                name.clone(),
                dtype,
                t.shape.clone(),
                data_offset + t.start,
                t.end - t.start,
            ));
        }
    }
    let mut buf = Vec::with_capacity(out.iter().map(|(_, _, v)| v.len() * 4).sum());
    let mut entries = Vec::new();
    for (name, shape, vals) in out {
        let off = buf.len();
        buf.extend(vals.iter().flat_map(|v| v.to_le_bytes()));
        entries.push((name, GgmlType::F32, shape, off, buf.len() - off));
    }
    let mut store = WeightStore::new(file);
    let b = store.add_backing(Backing::Owned(buf));
    // Full-precision tensors (the BF16 embedding above all) are read in place: no copy.
    let m = store.add_backing(backing);
    let in_map = plain
        .into_iter()
        .map(|(name, dtype, shape, off, len)| (name, dtype, shape, off, len, m));
    let owned = entries
        .into_iter()
        .map(|(name, dtype, shape, off, len)| (name, dtype, shape, off, len, b));
    // Each repacked tensor keeps its own buffer: copying them into one would hold every packed
    // weight twice at the peak of the load.
    let mut repacked = Vec::with_capacity(packed.len());
    for (name, dtype, shape, bytes) in packed {
        let len = bytes.len();
        let backing = store.add_backing(Backing::Owned(bytes));
        repacked.push((name, dtype, shape, 0, len, backing));
    }
    for (name, dtype, shape, offset, len, backing) in owned.chain(repacked).chain(in_map) {
        store.insert(
            name,
            TensorEntry {
                dtype,
                shape,
                backing,
                offset,
                len,
            },
        )?;
    }
    Ok(store)
}

#[cfg(test)]
mod q8_0_exact_tests {
    use super::*;

    /// Q8_0-exact f32 data becomes Q8_0 with the same values; any other f32 stays f32.
    #[test]
    fn detects_only_exact_q8_0() {
        let cols = 64;
        let mut vals = Vec::new();
        for b in 0..6 {
            let d = half::f16::from_f32(0.013 * (b + 1) as f32).to_f32();
            // Codes in -127..=127, with a ±127 per block as the Q8_0 quantizer writes.
            let q = |i: usize| if i == 0 { 254 } else { (i * 37 + b * 11) % 255 } as f32 - 127.0;
            vals.extend((0..32).map(|i| d * q(i)));
        }
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let q = f32_as_q8_0_exact(&bytes, cols).expect("exact Q8_0 data");
        let mut back = vec![0f32; vals.len()];
        lowbit_formats::dequantize(GgmlType::Q8_0, &q, &mut back).unwrap();
        assert_eq!(back, vals);
        let mut off = vals.clone();
        off[5] += 1e-4;
        let bytes: Vec<u8> = off.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert!(f32_as_q8_0_exact(&bytes, cols).is_none());
        assert!(
            f32_as_q8_0_exact(&bytes, 48).is_none(),
            "48 columns are not whole blocks"
        );
    }
}

#[cfg(test)]
mod fp4_repack_tests {
    use super::*;

    fn check(fp4: &Fp4<'_>, ty: GgmlType) {
        let (t, q) = fp4.repack().expect("repackable layout");
        assert_eq!(t, ty);
        assert_eq!(q.len(), ty.byte_len(fp4.rows * fp4.cols).unwrap());
        let mut got = vec![0f32; fp4.rows * fp4.cols];
        lowbit_formats::dequantize(ty, &q, &mut got).unwrap();
        for (i, (g, w)) in got.iter().zip(fp4.dequantize()).enumerate() {
            // Equal values; MXFP4 reads a -0 code back as +0.
            let same = g.to_bits() == w.to_bits() || (ty == GgmlType::MXFP4 && *g == w);
            assert!(same, "{ty} value {i}: {g} vs {w}");
        }
    }

    /// Every E8M0 byte but the NaN (255) with every pair of codes: GGML MXFP4 blocks hold the
    /// compressed-tensors values exactly.
    #[test]
    fn mxfp4_repack_is_exact() {
        let (rows, cols) = (255, 64);
        let codes: Vec<u8> = (0..rows * cols / 2)
            .map(|i| (i * 7 + i / 5) as u8)
            .collect();
        let scale_bytes: Vec<u8> = (0..rows * 2).map(|i| (i % 255) as u8).collect();
        let scales = scale_bytes
            .iter()
            .map(|&b| lowbit_formats::qtensor::e8m0_value(b))
            .collect();
        let fp4 = Fp4 {
            rows,
            cols,
            groups: 2,
            codes: &codes,
            scale_bytes: &scale_bytes,
            global: None,
            scales,
        };
        check(&fp4, GgmlType::MXFP4);
        // Groups of 64 have no block type: dequantized instead.
        assert!(Fp4 { groups: 1, ..fp4 }.repack().is_none());
    }

    /// NVFP4 with every non-NaN E4M3 scale byte becomes LB_NVFP4 blocks with bit-identical values;
    /// rows that are not whole 128-value blocks stay unpacked.
    #[test]
    fn nvfp4_repack_is_exact() {
        let (rows, cols) = (16, 256);
        let codes: Vec<u8> = (0..rows * cols / 2)
            .map(|i| (i * 13 + i / 3) as u8)
            .collect();
        let scale_bytes: Vec<u8> = (0..rows * cols / 16)
            .map(|i| {
                let b = (i % 256) as u8;
                if b & 0x7F == 0x7F {
                    0x7E
                } else {
                    b
                }
            })
            .collect();
        let global = 2688.0 / 0.37;
        let e4m3 = lowbit_formats::minifloat::Minifloat::E4M3FN;
        let scales = scale_bytes
            .iter()
            .map(|&b| e4m3.decode(b as u32) / global)
            .collect();
        let fp4 = Fp4 {
            rows,
            cols,
            groups: cols / 16,
            codes: &codes,
            scale_bytes: &scale_bytes,
            global: Some(global),
            scales,
        };
        check(&fp4, GgmlType::LB_NVFP4);
        let narrow = Fp4 {
            rows: 4 * rows,
            cols: cols / 4,
            groups: cols / 64,
            scales: vec![1.0; rows * cols / 16],
            ..fp4
        };
        assert!(narrow.repack().is_none());
    }
}
