//! SentencePiece-style tokenizer as llama.cpp runs it for GGUF vocabularies with
//! `tokenizer.ggml.model = "llama"` (llama, gemma): spaces become U+2581, the text is split into
//! UTF-8 characters, and adjacent pieces are merged greedily, highest vocabulary score first
//! (ties: leftmost). Characters that never form a token fall back to `<0xXX>` byte tokens.
//! User-defined tokens are cut out of the text literally before that.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::Tokenizer;
use crate::error::{ModelError, Result};

/// Token types as stored in GGUF `tokenizer.ggml.token_type` (SentencePiece's piece types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    /// Maps the GGUF integer; 0 ("undefined") and unknown values count as normal tokens.
    pub fn from_gguf(v: i32) -> TokenType {
        match v {
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Normal,
        }
    }
}

const SPACE_MARK: char = '\u{2581}';

/// Everything needed to build an [`SpmTokenizer`]; mirrors the GGUF `tokenizer.ggml.*` keys.
#[derive(Debug, Clone, Default)]
pub struct SpmVocab {
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    /// GGUF token types (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte).
    /// Empty means "all normal".
    pub token_types: Vec<i32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    pub add_bos: bool,
    /// Prefix the text with a space before encoding (llama: true, gemma: false).
    pub add_space_prefix: bool,
}

/// A piece of the input after cutting out special tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fragment {
    /// Byte range of the input text.
    Text(usize, usize),
    Token(u32),
}

/// Cuts the given special tokens out of `text` the way llama.cpp's `tokenizer_st_partition` does:
/// longest token first, each one splitting every remaining text fragment at all its
/// (non-overlapping, left to right) occurrences. `specials` must already be sorted longest first.
pub(crate) fn partition_special(text: &str, specials: &[(String, u32)]) -> Vec<Fragment> {
    let mut frags = Vec::new();
    if text.is_empty() {
        return frags;
    }
    frags.push(Fragment::Text(0, text.len()));
    for (piece, id) in specials {
        // A token absent from the whole text is absent from every fragment: skip the rebuild.
        if !text.contains(piece.as_str()) {
            continue;
        }
        let mut next = Vec::with_capacity(frags.len());
        for frag in &frags {
            let Fragment::Text(start, end) = *frag else {
                next.push(*frag);
                continue;
            };
            let mut pos = start;
            while let Some(found) = text[pos..end].find(piece.as_str()) {
                let at = pos + found;
                if at > pos {
                    next.push(Fragment::Text(pos, at));
                }
                next.push(Fragment::Token(*id));
                pos = at + piece.len();
            }
            if pos < end {
                next.push(Fragment::Text(pos, end));
            }
        }
        frags = next;
    }
    frags
}

/// The list of tokens matched literally before the main algorithm: user-defined tokens always,
/// control and unknown tokens only when `parse_special` is on. Sorted longest first, then by id.
pub(crate) fn special_candidates(
    tokens: &[String],
    types: &[TokenType],
    parse_special: bool,
) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = tokens
        .iter()
        .zip(types)
        .enumerate()
        .filter(|(_, (text, ty))| {
            !text.is_empty()
                && match ty {
                    TokenType::UserDefined => true,
                    TokenType::Control | TokenType::Unknown => parse_special,
                    _ => false,
                }
        })
        .map(|(id, (text, _))| (text.clone(), id as u32))
        .collect();
    out.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
    out
}

/// Text → id map where, as in llama.cpp, a later duplicate wins and empty tokens get a
/// placeholder name so they can never match.
pub(crate) fn build_token_map(tokens: &[String]) -> HashMap<String, u32> {
    let mut map = HashMap::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            map.insert(format!("[EMPTY_{id}]"), id as u32);
        } else {
            map.insert(t.clone(), id as u32);
        }
    }
    map
}

pub(crate) fn check_id(name: &str, id: Option<u32>, n: usize) -> Result<()> {
    match id {
        Some(id) if id as usize >= n => Err(ModelError::Other(format!(
            "{name} token id {id} is out of range for a vocabulary of {n} tokens"
        ))),
        _ => Ok(()),
    }
}

pub struct SpmTokenizer {
    tokens: Vec<String>,
    scores: Vec<f32>,
    types: Vec<TokenType>,
    token_to_id: HashMap<String, u32>,
    byte_to_id: [Option<u32>; 256],
    user_defined: Vec<(String, u32)>,
    with_control: Vec<(String, u32)>,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    add_space_prefix: bool,
}

/// A candidate merge of two adjacent symbols. Ordered so that the max-heap pops the highest
/// score first and, among equal scores, the leftmost pair.
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    /// Byte length of the merged text; a mismatch later means one side has changed since.
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
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// One symbol of the doubly linked list the merges run on: a byte range of the escaped text.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl SpmTokenizer {
    pub fn new(vocab: SpmVocab) -> Result<SpmTokenizer> {
        let n = vocab.tokens.len();
        if n == 0 {
            return Err(ModelError::Other("the vocabulary has no tokens".into()));
        }
        if vocab.scores.len() != n {
            return Err(ModelError::Other(format!(
                "{} scores for {} tokens (expected one score per token)",
                vocab.scores.len(),
                n
            )));
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
        let types: Vec<TokenType> = if vocab.token_types.is_empty() {
            vec![TokenType::Normal; n]
        } else {
            vocab
                .token_types
                .iter()
                .map(|&t| TokenType::from_gguf(t))
                .collect()
        };
        let token_to_id = build_token_map(&vocab.tokens);
        let mut byte_to_id = [None; 256];
        for (b, slot) in byte_to_id.iter_mut().enumerate() {
            // llama.cpp looks up "<0xXX>" first and falls back to the plain one-byte string.
            *slot = token_to_id
                .get(&format!("<0x{b:02X}>"))
                .copied()
                .or_else(|| {
                    let s = [b as u8];
                    std::str::from_utf8(&s)
                        .ok()
                        .and_then(|s| token_to_id.get(s).copied())
                });
        }
        let user_defined = special_candidates(&vocab.tokens, &types, false);
        let with_control = special_candidates(&vocab.tokens, &types, true);
        Ok(SpmTokenizer {
            tokens: vocab.tokens,
            scores: vocab.scores,
            types,
            token_to_id,
            byte_to_id,
            user_defined,
            with_control,
            bos: vocab.bos,
            eos: vocab.eos,
            unk: vocab.unk,
            pad: vocab.pad,
            add_bos: vocab.add_bos,
            add_space_prefix: vocab.add_space_prefix,
        })
    }

    pub fn unk(&self) -> Option<u32> {
        self.unk
    }
    pub fn pad(&self) -> Option<u32> {
        self.pad
    }
    pub fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }
    /// The vocabulary text of a token (with U+2581 for spaces), if the id exists.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(|s| s.as_str())
    }
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    /// Encode with control tokens written in the text (e.g. `<start_of_turn>`, `<bos>`) parsed as
    /// those tokens when `parse_special` is on; user-defined tokens are always matched.
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
        // A space prefix goes before the first text fragment and after every special token.
        let mut prev_special = true;
        let mut buf = String::new();
        for frag in partition_special(text, specials) {
            match frag {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(start, end) => {
                    buf.clear();
                    if self.add_space_prefix && prev_special {
                        buf.push(SPACE_MARK);
                    }
                    for c in text[start..end].chars() {
                        buf.push(if c == ' ' { SPACE_MARK } else { c });
                    }
                    self.encode_fragment(&buf, &mut out);
                    prev_special = false;
                }
            }
        }
        out
    }

    fn lookup(&self, s: &str) -> Option<u32> {
        self.token_to_id.get(s).copied()
    }

    /// The SPM merge loop over one escaped fragment. Merges only ever join neighbours, so a heap of
    /// candidate pairs over a linked list gives the greedy result in O(n log n).
    fn encode_fragment(&self, text: &str, out: &mut Vec<u32>) {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (start, c) in text.char_indices() {
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
        if symbols.is_empty() {
            return;
        }
        let mut heap = BinaryHeap::with_capacity(symbols.len());
        let try_add = |heap: &mut BinaryHeap<Bigram>,
                       symbols: &[Symbol],
                       left: Option<usize>,
                       right: Option<usize>| {
            let (Some(l), Some(r)) = (left, right) else {
                return;
            };
            let (a, b) = (symbols[l], symbols[r]);
            let merged = &text[a.start..b.start + b.len];
            if let Some(id) = self.lookup(merged) {
                heap.push(Bigram {
                    score: self.scores[id as usize],
                    left: l,
                    right: r,
                    size: merged.len(),
                });
            }
        };
        for i in 1..symbols.len() {
            try_add(&mut heap, &symbols, Some(i - 1), Some(i));
        }
        while let Some(bigram) = heap.pop() {
            let (l, r) = (symbols[bigram.left], symbols[bigram.right]);
            // Stale entry: one side was merged away or grew since this pair was queued.
            if l.len == 0 || r.len == 0 || l.len + r.len != bigram.size {
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
        let mut cur = Some(0);
        while let Some(i) = cur {
            let sym = symbols[i];
            let piece = &text[sym.start..sym.start + sym.len];
            match self.lookup(piece) {
                Some(id) => out.push(id),
                None => {
                    // Every merged symbol is a vocabulary token, so this is a single character
                    // missing from the vocabulary: emit its UTF-8 bytes.
                    for &b in piece.as_bytes() {
                        if let Some(id) = self.byte_to_id[b as usize].or(self.unk) {
                            out.push(id);
                        }
                    }
                }
            }
            cur = sym.next;
        }
    }
}

impl Tokenizer for SpmTokenizer {
    fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        self.encode_with_special(text, add_bos, false)
    }

    fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(text) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        match self.types[id as usize] {
            TokenType::Normal => text.replace(SPACE_MARK, " ").into_bytes(),
            // User-defined tokens were matched literally, so they decode literally.
            TokenType::UserDefined => text.as_bytes().to_vec(),
            TokenType::Byte => parse_byte_token(text).map(|b| vec![b]).unwrap_or_default(),
            // llama.cpp renders the unknown token as U+2585.
            TokenType::Unknown => "\u{2585}".as_bytes().to_vec(),
            TokenType::Control | TokenType::Unused => Vec::new(),
        }
    }

    fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        // Strip the space the encoder put in front: from the first token that produces output.
        let mut strip = self.add_space_prefix;
        for &id in ids {
            let piece = self.token_bytes(id);
            if piece.is_empty() {
                continue;
            }
            if strip && piece[0] == b' ' {
                bytes.extend_from_slice(&piece[1..]);
            } else {
                bytes.extend_from_slice(&piece);
            }
            strip = false;
        }
        String::from_utf8_lossy(&bytes).into_owned()
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

/// `<0xAB>` → 0xAB.
pub(crate) fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(pieces: &[(&str, f32, i32)]) -> SpmVocab {
        SpmVocab {
            tokens: pieces.iter().map(|p| p.0.to_string()).collect(),
            scores: pieces.iter().map(|p| p.1).collect(),
            token_types: pieces.iter().map(|p| p.2).collect(),
            bos: Some(1),
            eos: Some(2),
            unk: Some(0),
            pad: None,
            add_bos: true,
            add_space_prefix: true,
        }
    }

    #[test]
    fn partition_longest_first() {
        let specials = vec![("<ab>".to_string(), 7), ("b".to_string(), 8)];
        let f = partition_special("x<ab>yb", &specials);
        assert_eq!(
            f,
            vec![
                Fragment::Text(0, 1),
                Fragment::Token(7),
                Fragment::Text(5, 6),
                Fragment::Token(8)
            ]
        );
        assert!(partition_special("", &specials).is_empty());
    }

    #[test]
    fn byte_token_parse() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(10));
        assert_eq!(parse_byte_token("<0xff>"), Some(255));
        assert_eq!(parse_byte_token("<0x0>"), None);
        assert_eq!(parse_byte_token("a"), None);
    }

    #[test]
    fn mismatched_lengths_are_errors() {
        let mut v = vocab(&[("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]);
        v.scores.pop();
        assert!(SpmTokenizer::new(v).is_err());
        let mut v = vocab(&[("<unk>", 0.0, 2)]);
        v.bos = Some(5);
        assert!(SpmTokenizer::new(v).is_err());
    }
}
