//! Building a tokenizer from GGUF `tokenizer.ggml.*` metadata.

use super::bpe::{BpeTokenizer, BpeVocab};
use super::spm::{SpmTokenizer, SpmVocab};
use super::Tokenizer;
use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, GgufValue};

/// Reads the `tokenizer.ggml.*` keys of one GGUF file, with errors naming the file and key.
struct Meta<'a> {
    file: &'a GgufFile,
}

impl<'a> Meta<'a> {
    fn err(&self, key: &str, msg: impl std::fmt::Display) -> ModelError {
        ModelError::format(&self.file.path, format!("metadata '{key}': {msg}"))
    }

    fn get(&self, key: &str) -> Option<&'a GgufValue> {
        self.file.metadata.get(key)
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(GgufValue::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.err(key, format!("expected a string, found {}", type_name(v)))),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(GgufValue::Bool(b)) => Ok(Some(*b)),
            Some(v) => match as_i64(v) {
                Some(i) => Ok(Some(i != 0)),
                None => Err(self.err(key, format!("expected a bool, found {}", type_name(v)))),
            },
        }
    }

    /// A token id; negative values (llama.cpp's "none") read as absent.
    fn id(&self, key: &str) -> Result<Option<u32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match as_i64(v) {
                Some(i) if i < 0 => Ok(None),
                Some(i) if i <= u32::MAX as i64 => Ok(Some(i as u32)),
                _ => Err(self.err(key, format!("expected a token id, found {}", describe(v)))),
            },
        }
    }

    fn array(&self, key: &str) -> Result<Option<&'a [GgufValue]>> {
        match self.get(key) {
            None => Ok(None),
            Some(GgufValue::Array(a)) => Ok(Some(a)),
            Some(v) => Err(self.err(key, format!("expected an array, found {}", type_name(v)))),
        }
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<String>>> {
        let Some(arr) = self.array(key)? else {
            return Ok(None);
        };
        arr.iter()
            .enumerate()
            .map(|(i, v)| match v {
                GgufValue::String(s) => Ok(s.clone()),
                v => Err(self.err(
                    key,
                    format!("element {i}: expected a string, found {}", type_name(v)),
                )),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn floats(&self, key: &str) -> Result<Option<Vec<f32>>> {
        let Some(arr) = self.array(key)? else {
            return Ok(None);
        };
        arr.iter()
            .enumerate()
            .map(|(i, v)| match v {
                GgufValue::F32(x) => Ok(*x),
                GgufValue::F64(x) => Ok(*x as f32),
                v => Err(self.err(
                    key,
                    format!("element {i}: expected a float, found {}", type_name(v)),
                )),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn ints(&self, key: &str) -> Result<Option<Vec<i32>>> {
        let Some(arr) = self.array(key)? else {
            return Ok(None);
        };
        arr.iter()
            .enumerate()
            .map(|(i, v)| match as_i64(v) {
                Some(x) if i32::try_from(x).is_ok() => Ok(x as i32),
                _ => Err(self.err(
                    key,
                    format!("element {i}: expected an i32, found {}", describe(v)),
                )),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

fn as_i64(v: &GgufValue) -> Option<i64> {
    Some(match *v {
        GgufValue::U8(x) => x as i64,
        GgufValue::I8(x) => x as i64,
        GgufValue::U16(x) => x as i64,
        GgufValue::I16(x) => x as i64,
        GgufValue::U32(x) => x as i64,
        GgufValue::I32(x) => x as i64,
        GgufValue::U64(x) => i64::try_from(x).ok()?,
        GgufValue::I64(x) => x,
        _ => return None,
    })
}

fn type_name(v: &GgufValue) -> &'static str {
    match v {
        GgufValue::U8(_) => "u8",
        GgufValue::I8(_) => "i8",
        GgufValue::U16(_) => "u16",
        GgufValue::I16(_) => "i16",
        GgufValue::U32(_) => "u32",
        GgufValue::I32(_) => "i32",
        GgufValue::F32(_) => "f32",
        GgufValue::Bool(_) => "bool",
        GgufValue::String(_) => "string",
        GgufValue::Array(_) => "array",
        GgufValue::U64(_) => "u64",
        GgufValue::I64(_) => "i64",
        GgufValue::F64(_) => "f64",
    }
}

fn describe(v: &GgufValue) -> String {
    match as_i64(v) {
        Some(i) => format!("{} {i}", type_name(v)),
        None => type_name(v).to_string(),
    }
}

/// The tokenizer a GGUF file describes: `tokenizer.ggml.model` "llama" → [`SpmTokenizer`],
/// "gpt2" → [`BpeTokenizer`]. Missing or unknown tokenizers are `ModelError::Unsupported`.
pub fn tokenizer_from_gguf(file: &GgufFile) -> Result<Box<dyn Tokenizer>> {
    let meta = Meta { file };
    let path = &file.path;
    let model = meta.string("tokenizer.ggml.model")?.ok_or_else(|| {
        ModelError::unsupported(
            path,
            "no tokenizer: metadata 'tokenizer.ggml.model' is missing",
        )
    })?;
    let unknown_model = || {
        ModelError::unsupported(
            path,
            format!("unsupported tokenizer model 'tokenizer.ggml.model' = '{model}' (supported: llama, gpt2)"),
        )
    };
    // Checked before anything else so that an unknown tokenizer is reported as such.
    if model != "llama" && model != "gpt2" {
        return Err(unknown_model());
    }
    let with_path = |e: ModelError| match e {
        ModelError::Other(msg) => ModelError::format(path, format!("tokenizer: {msg}")),
        e => e,
    };
    let tokens = meta
        .strings("tokenizer.ggml.tokens")?
        .ok_or_else(|| ModelError::format(path, "metadata 'tokenizer.ggml.tokens' is missing"))?;
    let token_types = meta.ints("tokenizer.ggml.token_type")?.unwrap_or_default();
    let bos = meta.id("tokenizer.ggml.bos_token_id")?;
    let eos = meta.id("tokenizer.ggml.eos_token_id")?;
    let unk = meta.id("tokenizer.ggml.unknown_token_id")?;
    let pad = meta.id("tokenizer.ggml.padding_token_id")?;
    match model {
        "llama" => {
            let scores = meta.floats("tokenizer.ggml.scores")?.ok_or_else(|| {
                ModelError::format(path, "metadata 'tokenizer.ggml.scores' is missing")
            })?;
            let vocab = SpmVocab {
                tokens,
                scores,
                token_types,
                // llama.cpp's default ids for SPM vocabularies when the keys are absent.
                bos: bos.or(Some(1)),
                eos: eos.or(Some(2)),
                unk: unk.or(Some(0)),
                pad,
                // llama.cpp's defaults for SPM vocabularies.
                add_bos: meta
                    .boolean("tokenizer.ggml.add_bos_token")?
                    .unwrap_or(true),
                add_space_prefix: meta
                    .boolean("tokenizer.ggml.add_space_prefix")?
                    .unwrap_or(true),
            };
            Ok(Box::new(SpmTokenizer::new(vocab).map_err(with_path)?))
        }
        "gpt2" => {
            let merges = meta.strings("tokenizer.ggml.merges")?.ok_or_else(|| {
                ModelError::format(path, "metadata 'tokenizer.ggml.merges' is missing")
            })?;
            let pre = meta
                .string("tokenizer.ggml.pre")?
                .unwrap_or("default")
                .to_string();
            if super::bpe::pre_tokenizer_for(&pre).is_none() {
                return Err(ModelError::unsupported(
                    path,
                    format!("unknown BPE pre-tokenizer 'tokenizer.ggml.pre' = '{pre}' (supported: default, gpt-2, qwen2, llama-bpe)"),
                ));
            }
            let vocab = BpeVocab {
                tokens,
                token_types,
                merges,
                pre,
                bos,
                eos,
                unk,
                pad,
                add_bos: meta
                    .boolean("tokenizer.ggml.add_bos_token")?
                    .unwrap_or(false),
            };
            Ok(Box::new(BpeTokenizer::new(vocab).map_err(with_path)?))
        }
        _ => Err(unknown_model()),
    }
}
