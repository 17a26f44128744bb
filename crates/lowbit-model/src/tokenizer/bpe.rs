//! Byte-level BPE as llama.cpp runs it for GGUF vocabularies with `tokenizer.ggml.model = "gpt2"`
//! (gpt-2, qwen2, llama3): a pre-tokenizer regex splits the text into words, each word's bytes are
//! mapped to printable characters (GPT-2's byte→unicode table), and adjacent pieces are merged by
//! merge rank, lowest first (ties: leftmost).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use fancy_regex::Regex;

use super::spm::{
    build_token_map, check_id, partition_special, special_candidates, Fragment, TokenType,
};
use super::Tokenizer;
use crate::error::{ModelError, Result};

const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer for a GGUF `tokenizer.ggml.pre` value, and whether a whole word that is
/// already a token skips the merges (llama3's `ignore_merges`). `None` for unknown names.
pub fn pre_tokenizer_for(pre: &str) -> Option<(&'static str, bool)> {
    match pre {
        "default" | "gpt-2" | "gpt2" => Some((GPT2_PATTERN, false)),
        "qwen2" => Some((QWEN2_PATTERN, false)),
        "llama3" | "llama-bpe" => Some((LLAMA3_PATTERN, true)),
        _ => None,
    }
}

/// Everything needed to build a [`BpeTokenizer`]; mirrors the GGUF `tokenizer.ggml.*` keys.
#[derive(Debug, Clone, Default)]
pub struct BpeVocab {
    /// Token texts in GPT-2's byte-level alphabet (e.g. "Ġthe").
    pub tokens: Vec<String>,
    /// GGUF token types; empty means "all normal".
    pub token_types: Vec<i32>,
    /// Merges as "left right", in priority order.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.pre`: selects the pre-tokenizer regex ("gpt-2", "qwen2", "llama-bpe", ...).
    pub pre: String,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: bool,
}

/// GPT-2's reversible byte → printable character table: printable Latin-1 bytes map to
/// themselves, the rest to U+0100 onwards in byte order.
pub fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable =
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let cp = if printable {
            b
        } else {
            let cp = next;
            next += 1;
            cp
        };
        table[b as usize] = char::from_u32(cp).unwrap_or('\0');
    }
    table
}

pub struct BpeTokenizer {
    tokens: Vec<String>,
    types: Vec<TokenType>,
    token_to_id: HashMap<String, u32>,
    /// "left right" → rank.
    ranks: HashMap<String, u32>,
    regex: Regex,
    ignore_merges: bool,
    byte_char: [char; 256],
    user_defined: Vec<(String, u32)>,
    with_control: Vec<(String, u32)>,
    /// Decoded bytes per token, computed once.
    bytes: Vec<Vec<u8>>,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
}

/// A candidate merge of two adjacent symbols; the max-heap pops the lowest rank, then leftmost.
struct Bigram {
    rank: u32,
    left: usize,
    right: usize,
    /// Byte length of the merged text, to detect entries made stale by other merges.
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.left.cmp(&self.left))
    }
}

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl BpeTokenizer {
    pub fn new(vocab: BpeVocab) -> Result<BpeTokenizer> {
        let n = vocab.tokens.len();
        if n == 0 {
            return Err(ModelError::Other("the vocabulary has no tokens".into()));
        }
        if !vocab.token_types.is_empty() && vocab.token_types.len() != n {
            return Err(ModelError::Other(format!(
                "{} token types for {} tokens (expected one type per token)",
                vocab.token_types.len(),
                n
            )));
        }
        for (name, id) in [
            ("BOS", vocab.bos),
            ("EOS", vocab.eos),
            ("UNK", vocab.unk),
            ("PAD", vocab.pad),
        ] {
            check_id(name, id, n)?;
        }
        let (pattern, ignore_merges) = pre_tokenizer_for(&vocab.pre).ok_or_else(|| {
            ModelError::Other(format!(
                "unknown BPE pre-tokenizer '{}' (supported: default, gpt-2, qwen2, llama-bpe)",
                vocab.pre
            ))
        })?;
        let regex = Regex::new(pattern).map_err(|e| {
            ModelError::Other(format!("pre-tokenizer regex for '{}': {e}", vocab.pre))
        })?;
        let mut ranks = HashMap::with_capacity(vocab.merges.len());
        for (rank, merge) in vocab.merges.iter().enumerate() {
            let Some((a, b)) = merge.split_once(' ') else {
                return Err(ModelError::Other(format!(
                    "merge {rank} '{merge}' is not of the form 'left right'"
                )));
            };
            // The first occurrence of a pair keeps its (higher) priority.
            ranks.entry(format!("{a} {b}")).or_insert(rank as u32);
        }
        let types: Vec<TokenType> = if vocab.token_types.is_empty() {
            vec![TokenType::Normal; n]
        } else {
            vocab
                .token_types
                .iter()
                .map(|&t| TokenType::from_gguf(t))
                .collect()
        };
        let byte_char = bytes_to_unicode();
        let mut char_byte: HashMap<char, u8> = HashMap::with_capacity(256);
        for (b, &c) in byte_char.iter().enumerate() {
            char_byte.insert(c, b as u8);
        }
        let bytes = vocab
            .tokens
            .iter()
            .zip(&types)
            .map(|(text, ty)| match ty {
                TokenType::Control | TokenType::Unused => Vec::new(),
                TokenType::UserDefined => text.as_bytes().to_vec(),
                _ => {
                    // Characters outside the byte alphabet cannot come from the encoder; keep
                    // them as UTF-8 so nothing is silently lost.
                    let mut out = Vec::with_capacity(text.len());
                    for c in text.chars() {
                        match char_byte.get(&c) {
                            Some(&b) => out.push(b),
                            None => out.extend_from_slice(c.to_string().as_bytes()),
                        }
                    }
                    out
                }
            })
            .collect();
        let token_to_id = build_token_map(&vocab.tokens);
        let user_defined = special_candidates(&vocab.tokens, &types, false);
        let with_control = special_candidates(&vocab.tokens, &types, true);
        Ok(BpeTokenizer {
            tokens: vocab.tokens,
            types,
            token_to_id,
            ranks,
            regex,
            ignore_merges,
            byte_char,
            user_defined,
            with_control,
            bytes,
            bos: vocab.bos,
            eos: vocab.eos,
            unk: vocab.unk,
            pad: vocab.pad,
            add_bos: vocab.add_bos,
        })
    }

    pub fn unk(&self) -> Option<u32> {
        self.unk
    }
    pub fn pad(&self) -> Option<u32> {
        self.pad
    }
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(|s| s.as_str())
    }
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// Encode with control tokens written in the text (e.g. `<|endoftext|>`) parsed as those
    /// tokens when `parse_special` is on; user-defined tokens are always matched.
    pub fn encode_with_special(&self, text: &str, add_bos: bool, parse_special: bool) -> Vec<u32> {
        let specials = if parse_special {
            &self.with_control
        } else {
            &self.user_defined
        };
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos {
            if let Some(bos) = self.bos {
                out.push(bos);
            }
        }
        // Words repeat a lot in real text; cache their tokens for the duration of this call.
        let mut cache: HashMap<String, Vec<u32>> = HashMap::new();
        for frag in partition_special(text, specials) {
            match frag {
                Fragment::Token(id) => out.push(id),
                Fragment::Text(start, end) => {
                    let chunk = &text[start..end];
                    let mut pos = 0;
                    for m in self.regex.find_iter(chunk) {
                        let Ok(m) = m else {
                            // Backtracking limit hit: treat the rest as one word rather than panic.
                            break;
                        };
                        if m.start() > pos {
                            self.encode_word(&chunk[pos..m.start()], &mut cache, &mut out);
                        }
                        self.encode_word(m.as_str(), &mut cache, &mut out);
                        pos = m.end();
                    }
                    if pos < chunk.len() {
                        self.encode_word(&chunk[pos..], &mut cache, &mut out);
                    }
                }
            }
        }
        out
    }

    fn encode_word(&self, word: &str, cache: &mut HashMap<String, Vec<u32>>, out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if let Some(ids) = cache.get(word) {
            out.extend_from_slice(ids);
            return;
        }
        let mut ids = Vec::new();
        let mapped: String = word.bytes().map(|b| self.byte_char[b as usize]).collect();
        self.bpe(&mapped, &mut ids);
        out.extend_from_slice(&ids);
        cache.insert(word.to_string(), ids);
    }

    fn rank(&self, left: &str, right: &str, key: &mut String) -> Option<u32> {
        key.clear();
        key.push_str(left);
        key.push(' ');
        key.push_str(right);
        self.ranks.get(key.as_str()).copied()
    }

    /// Merge loop over one byte-mapped word.
    fn bpe(&self, word: &str, out: &mut Vec<u32>) {
        if self.ignore_merges {
            if let Some(&id) = self.token_to_id.get(word) {
                out.push(id);
                return;
            }
        }
        let mut symbols: Vec<Symbol> = Vec::with_capacity(word.len());
        for (start, c) in word.char_indices() {
            let idx = symbols.len();
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: idx.checked_sub(1),
                next: None,
            });
            if idx > 0 {
                symbols[idx - 1].next = Some(idx);
            }
        }
        let mut key = String::new();
        let mut heap = BinaryHeap::new();
        let mut try_add = |heap: &mut BinaryHeap<Bigram>,
                           symbols: &[Symbol],
                           left: Option<usize>,
                           right: Option<usize>| {
            let (Some(l), Some(r)) = (left, right) else {
                return;
            };
            let (a, b) = (symbols[l], symbols[r]);
            let lt = &word[a.start..a.start + a.len];
            let rt = &word[b.start..b.start + b.len];
            if let Some(rank) = self.rank(lt, rt, &mut key) {
                heap.push(Bigram {
                    rank,
                    left: l,
                    right: r,
                    size: a.len + b.len,
                });
            }
        };
        for i in 1..symbols.len() {
            try_add(&mut heap, &symbols, Some(i - 1), Some(i));
        }
        while let Some(bigram) = heap.pop() {
            let (l, r) = (symbols[bigram.left], symbols[bigram.right]);
            // Symbols are contiguous, so "both alive, still neighbours, same total length" means
            // the pair's text is unchanged.
            if l.len == 0
                || r.len == 0
                || l.next != Some(bigram.right)
                || l.len + r.len != bigram.size
            {
                continue;
            }
            symbols[bigram.left].len += r.len;
            symbols[bigram.right].len = 0;
            symbols[bigram.left].next = r.next;
            if let Some(next) = r.next {
                symbols[next].prev = Some(bigram.left);
            }
            let left = symbols[bigram.left];
            try_add(&mut heap, &symbols, left.prev, Some(bigram.left));
            try_add(&mut heap, &symbols, Some(bigram.left), left.next);
        }
        let mut cur = if symbols.is_empty() { None } else { Some(0) };
        while let Some(i) = cur {
            let sym = symbols[i];
            let piece = &word[sym.start..sym.start + sym.len];
            match self.token_to_id.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    // Not a token: emit its characters that are (llama.cpp drops the others).
                    for (j, c) in piece.char_indices() {
                        if let Some(&id) = self.token_to_id.get(&piece[j..j + c.len_utf8()]) {
                            out.push(id);
                        }
                    }
                }
            }
            cur = sym.next;
        }
    }
}

impl Tokenizer for BpeTokenizer {
    fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        self.encode_with_special(text, add_bos, false)
    }
    fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.bytes.get(id as usize).cloned().unwrap_or_default()
    }
    fn vocab_size(&self) -> usize {
        self.tokens.len()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection() {
        let t = bytes_to_unicode();
        let mut seen = std::collections::HashSet::new();
        for c in t {
            assert!(seen.insert(c));
        }
        assert_eq!(t[b' ' as usize], '\u{120}'); // 'Ġ'
        assert_eq!(t[b'\n' as usize], '\u{10A}'); // 'Ċ'
        assert_eq!(t[b'A' as usize], 'A');
    }

    #[test]
    fn known_pre_tokenizers_compile() {
        for pre in ["default", "gpt-2", "qwen2", "llama-bpe"] {
            let (p, _) = pre_tokenizer_for(pre).unwrap();
            Regex::new(p).unwrap();
        }
        assert!(pre_tokenizer_for("nope").is_none());
    }
}
