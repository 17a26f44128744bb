//! GGUF v3 writer: metadata, tensor table and aligned tensor data, the inverse of `gguf::GgufFile`.
//! Files are written to a temporary file next to the target and renamed into place, so readers
//! never see a half-written model.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use lowbit_formats::GgmlType;

use crate::error::{ModelError, Result};
use crate::gguf::{value_type, GgufValue, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_MAX_DIMS};

/// One tensor to write. `shape` is row-major (outermost first), as in `WeightStore`; the file
/// stores it reversed. `data` must be exactly `dtype.byte_len(elements)` bytes.
#[derive(Debug, Clone)]
pub struct GgufTensorWrite<'a> {
    pub name: String,
    pub dtype: GgmlType,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

/// Write a GGUF v3 file at `path` atomically (temp file + rename). The alignment is taken from a
/// `general.alignment` entry in `metadata` when there is one, else 32.
pub fn write_gguf<K, V>(
    path: &Path,
    metadata: impl IntoIterator<Item = (K, V)>,
    tensors: &[GgufTensorWrite<'_>],
) -> Result<()>
where
    K: AsRef<str>,
    V: Borrow<GgufValue>,
{
    let file_name = path
        .file_name()
        .ok_or_else(|| ModelError::format(path, "output path has no file name"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let file = std::fs::File::create(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        write_gguf_to(&mut out, path, metadata, tensors)?;
        let file = out
            .into_inner()
            .map_err(|e| ModelError::io(&tmp, e.into_error()))?;
        file.sync_all().map_err(|e| ModelError::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Encode a GGUF v3 file into memory (tests, small files).
pub fn gguf_bytes<K, V>(
    metadata: impl IntoIterator<Item = (K, V)>,
    tensors: &[GgufTensorWrite<'_>],
) -> Result<Vec<u8>>
where
    K: AsRef<str>,
    V: Borrow<GgufValue>,
{
    let mut out = Vec::new();
    write_gguf_to(&mut out, Path::new("<memory>"), metadata, tensors)?;
    Ok(out)
}

/// Encode a GGUF v3 file into `out`. `path` names the destination in error messages.
pub fn write_gguf_to<W: Write, K, V>(
    out: &mut W,
    path: &Path,
    metadata: impl IntoIterator<Item = (K, V)>,
    tensors: &[GgufTensorWrite<'_>],
) -> Result<()>
where
    K: AsRef<str>,
    V: Borrow<GgufValue>,
{
    let metadata: Vec<(K, V)> = metadata.into_iter().collect();
    let mut keys = HashSet::new();
    let mut alignment = GGUF_DEFAULT_ALIGNMENT;
    for (k, v) in &metadata {
        let (k, v) = (k.as_ref(), v.borrow());
        if !keys.insert(k) {
            return Err(ModelError::format(
                path,
                format!("duplicate metadata key '{k}'"),
            ));
        }
        check_value(path, k, v, 0)?;
        if k == "general.alignment" {
            alignment = match v.as_u64() {
                Some(a) if a != 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(ModelError::format(
                        path,
                        format!("general.alignment {v:?} is not a nonzero power of two"),
                    ))
                }
            };
        }
    }

    // Validate tensors and lay out the data section.
    let mut names = HashSet::new();
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut data_len: u64 = 0;
    for t in tensors {
        let terr = |msg: String| ModelError::tensor(path, &t.name, msg);
        if !names.insert(t.name.as_str()) {
            return Err(terr("appears twice".into()));
        }
        if !t.dtype.in_gguf() {
            return Err(terr(format!(
                "type {} is lowbit's in-memory format and has no GGUF type id: convert it \
                 (e.g. dequantize) before writing a GGUF file",
                t.dtype
            )));
        }
        if t.shape.len() > GGUF_MAX_DIMS || t.shape.contains(&0) {
            return Err(terr(format!(
                "shape {:?}: GGUF needs 1 to {GGUF_MAX_DIMS} nonzero dims",
                t.shape
            )));
        }
        let elements = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let row = t.shape.last().copied().unwrap_or(1);
        let expected = elements.and_then(|n| t.dtype.byte_len(n));
        if row % t.dtype.block_size() != 0 || expected != Some(t.data.len()) {
            return Err(terr(format!(
                "{} bytes of data do not match shape {:?} of {} (rows must be whole blocks of {})",
                t.data.len(),
                t.shape,
                t.dtype,
                t.dtype.block_size()
            )));
        }
        data_len = data_len.div_ceil(alignment) * alignment;
        offsets.push(data_len);
        data_len += t.data.len() as u64;
    }

    let io = |e: std::io::Error| ModelError::io(path, e);
    let mut w = CountingWriter {
        inner: out,
        written: 0,
    };
    w.write_all(GGUF_MAGIC).map_err(io)?;
    w.write_all(&3u32.to_le_bytes()).map_err(io)?;
    w.write_all(&(tensors.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&(metadata.len() as u64).to_le_bytes())
        .map_err(io)?;
    for (k, v) in &metadata {
        write_str(&mut w, k.as_ref()).map_err(io)?;
        let v = v.borrow();
        w.write_all(&v.type_id().to_le_bytes()).map_err(io)?;
        write_value(&mut w, v).map_err(io)?;
    }
    for (t, &offset) in tensors.iter().zip(&offsets) {
        write_str(&mut w, &t.name).map_err(io)?;
        let dims: Vec<u64> = if t.shape.is_empty() {
            vec![1]
        } else {
            t.shape.iter().rev().map(|&d| d as u64).collect()
        };
        w.write_all(&(dims.len() as u32).to_le_bytes())
            .map_err(io)?;
        for d in dims {
            w.write_all(&d.to_le_bytes()).map_err(io)?;
        }
        w.write_all(&t.dtype.id().to_le_bytes()).map_err(io)?;
        w.write_all(&offset.to_le_bytes()).map_err(io)?;
    }
    pad_to(&mut w, alignment).map_err(io)?;
    let data_start = w.written;
    for (t, &offset) in tensors.iter().zip(&offsets) {
        let pad = data_start + offset - w.written;
        w.write_all(&vec![0u8; pad as usize]).map_err(io)?;
        w.write_all(t.data).map_err(io)?;
    }
    w.flush().map_err(io)?;
    Ok(())
}

/// Arrays must be homogeneous: GGUF stores one element type per array.
fn check_value(path: &Path, key: &str, v: &GgufValue, depth: usize) -> Result<()> {
    if let GgufValue::Array(items) = v {
        if depth >= 8 {
            return Err(ModelError::format(
                path,
                format!("metadata '{key}': arrays nested too deeply"),
            ));
        }
        if let Some(first) = items.first() {
            let ty = first.type_id();
            for item in items {
                if item.type_id() != ty {
                    return Err(ModelError::format(
                        path,
                        format!(
                            "metadata '{key}': array mixes {} and {} elements",
                            first.type_name(),
                            item.type_name()
                        ),
                    ));
                }
                check_value(path, key, item, depth + 1)?;
            }
        }
    }
    Ok(())
}

struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    written: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn pad_to<W: Write>(w: &mut CountingWriter<'_, W>, alignment: u64) -> std::io::Result<()> {
    let pad = w.written.div_ceil(alignment) * alignment - w.written;
    w.write_all(&vec![0u8; pad as usize])
}

fn write_str<W: Write>(w: &mut W, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn write_value<W: Write>(w: &mut W, v: &GgufValue) -> std::io::Result<()> {
    match v {
        GgufValue::U8(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::I8(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::U16(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::I16(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::U32(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::I32(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::F32(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::Bool(b) => w.write_all(&[*b as u8]),
        GgufValue::String(s) => write_str(w, s),
        GgufValue::U64(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::I64(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::F64(x) => w.write_all(&x.to_le_bytes()),
        GgufValue::Array(items) => {
            // An empty array's element type is not recoverable; u8 is as good as any.
            let ty = items.first().map_or(value_type::U8, |v| v.type_id());
            w.write_all(&ty.to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            items.iter().try_for_each(|item| write_value(w, item))
        }
    }
}
