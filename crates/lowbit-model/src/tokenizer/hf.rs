//! HF `tokenizer.json` through the `tokenizers` crate. BOS/EOS come from `tokenizer_config.json`
//! next to it when present (`bos_token`, `eos_token`, `add_bos_token`), else from the special
//! tokens of `tokenizer.json`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::bpe::bytes_to_unicode;
use super::spm::parse_byte_token;
use super::Tokenizer;
use crate::error::{ModelError, Result};

/// Special-token texts recognised as BOS / EOS when there is no tokenizer_config.json.
/// GPT-2 style vocabularies use `<|endoftext|>` for both.
const BOS_NAMES: &[&str] = &[
    "<s>",
    "<bos>",
    "<|begin_of_text|>",
    "<|startoftext|>",
    "[CLS]",
    "<|endoftext|>",
];
const EOS_NAMES: &[&str] = &["</s>", "<eos>", "<|end_of_text|>", "<|endoftext|>", "[SEP]"];

pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    /// Bytes per id, precomputed from the token texts and the decoder kind.
    bytes: Vec<Vec<u8>>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    path: PathBuf,
}

/// How token texts map back to bytes, read off the `decoder` section of tokenizer.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecoderKind {
    /// GPT-2 byte-level alphabet.
    ByteLevel,
    /// SentencePiece style: U+2581 is a space, `<0xXX>` a byte.
    Metaspace,
    /// Token text as is.
    Plain,
}

fn decoder_kind(json: &Value) -> DecoderKind {
    let decoder = json
        .get("decoder")
        .map(|d| d.to_string())
        .unwrap_or_default();
    if decoder.contains("\"ByteLevel\"") {
        DecoderKind::ByteLevel
    } else if decoder.contains("Metaspace")
        || decoder.contains("ByteFallback")
        || decoder.contains('\u{2581}')
    {
        DecoderKind::Metaspace
    } else {
        DecoderKind::Plain
    }
}

/// `"<s>"` or `{"content": "<s>", ...}` → "<s>".
fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    }
}

impl HfTokenizer {
    /// `path` is a tokenizer.json file or a directory holding one.
    pub fn open(path: &Path) -> Result<HfTokenizer> {
        let file = if path.is_dir() {
            path.join("tokenizer.json")
        } else {
            path.to_path_buf()
        };
        let bytes = std::fs::read(&file).map_err(|e| ModelError::io(&file, e))?;
        let config_path = file.with_file_name("tokenizer_config.json");
        let config = match std::fs::read(&config_path) {
            Ok(b) => Some(
                serde_json::from_slice::<Value>(&b)
                    .map_err(|e| ModelError::format(&config_path, format!("invalid JSON: {e}")))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(ModelError::io(&config_path, e)),
        };
        Self::from_json(&file, &bytes, config.as_ref())
    }

    /// Build from the bytes of a tokenizer.json and an optional parsed tokenizer_config.json;
    /// `path` is used in error messages.
    pub fn from_json(
        path: &Path,
        tokenizer_json: &[u8],
        config: Option<&Value>,
    ) -> Result<HfTokenizer> {
        let json: Value = serde_json::from_slice(tokenizer_json)
            .map_err(|e| ModelError::format(path, format!("invalid JSON: {e}")))?;
        let inner = tokenizers::Tokenizer::from_bytes(tokenizer_json)
            .map_err(|e| ModelError::format(path, format!("not a usable tokenizer.json: {e}")))?;
        let kind = decoder_kind(&json);
        let n = inner.get_vocab_size(true);
        let specials: std::collections::HashSet<u32> = inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, _)| id)
            .collect();
        let byte_char = bytes_to_unicode();
        let char_byte: std::collections::HashMap<char, u8> = byte_char
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        // Ids can have holes; size the table by the largest id.
        let max_id = (0..n as u32)
            .chain(specials.iter().copied())
            .max()
            .unwrap_or(0);
        let mut bytes = vec![Vec::new(); max_id as usize + 1];
        for (id, slot) in bytes.iter_mut().enumerate() {
            let id = id as u32;
            if specials.contains(&id) {
                continue;
            }
            let Some(text) = inner.id_to_token(id) else {
                continue;
            };
            *slot = match kind {
                DecoderKind::ByteLevel => {
                    let mut out = Vec::with_capacity(text.len());
                    for c in text.chars() {
                        match char_byte.get(&c) {
                            Some(&b) => out.push(b),
                            None => out.extend_from_slice(c.to_string().as_bytes()),
                        }
                    }
                    out
                }
                DecoderKind::Metaspace => match parse_byte_token(&text) {
                    Some(b) => vec![b],
                    None => text.replace('\u{2581}', " ").into_bytes(),
                },
                DecoderKind::Plain => text.into_bytes(),
            };
        }

        let lookup = |name: &str| inner.token_to_id(name);
        let cfg_token = |key: &str| config.and_then(|c| c.get(key)).and_then(token_content);
        let bos = match cfg_token("bos_token") {
            Some(t) => lookup(&t),
            None => BOS_NAMES
                .iter()
                .find_map(|t| lookup(t).filter(|id| specials.contains(id))),
        };
        let eos = match cfg_token("eos_token") {
            Some(t) => lookup(&t),
            None => EOS_NAMES
                .iter()
                .find_map(|t| lookup(t).filter(|id| specials.contains(id))),
        };
        let add_bos = match config
            .and_then(|c| c.get("add_bos_token"))
            .and_then(|v| v.as_bool())
        {
            Some(b) => b,
            // Without a config, BOS is expected when the post-processor inserts it.
            None => match bos.and_then(|id| inner.id_to_token(id)) {
                Some(text) => json
                    .get("post_processor")
                    .map(|p| p.to_string().contains(&format!("\"{}\"", text)))
                    .unwrap_or(false),
                None => false,
            },
        };
        Ok(HfTokenizer {
            inner,
            bytes,
            bos,
            eos,
            add_bos,
            path: path.to_path_buf(),
        })
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Encode, reporting the `tokenizers` error instead of returning an empty list.
    pub fn try_encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        // Special tokens are added here, not by the post-processor, so `add_bos` means exactly that.
        let enc = self.inner.encode(text, false).map_err(|e| {
            ModelError::Other(format!("{}: encode failed: {e}", self.path.display()))
        })?;
        let mut ids = Vec::with_capacity(enc.get_ids().len() + 1);
        if add_bos {
            if let Some(bos) = self.bos {
                ids.push(bos);
            }
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }
}

impl Tokenizer for HfTokenizer {
    fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        self.try_encode(text, add_bos).unwrap_or_default()
    }
    fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.bytes.get(id as usize).cloned().unwrap_or_default()
    }
    fn decode(&self, ids: &[u32]) -> String {
        match self.inner.decode(ids, true) {
            Ok(s) => s,
            Err(_) => {
                let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.token_bytes(id)).collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
        }
    }
    fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
    fn bos(&self) -> Option<u32> {
        self.bos
    }
    fn eos(&self) -> Option<u32> {
        self.eos
    }
    fn add_bos_by_default(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }
}
