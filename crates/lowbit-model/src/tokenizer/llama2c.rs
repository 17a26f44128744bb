//! The llama2.c `tok*.bin` vocabulary and its encoder/decoder (`encode()` / `decode()` of run.c).
//! File layout (little endian): i32 max_token_length, then per token: f32 score, i32 byte length,
//! the bytes. Pieces store spaces as plain ' '; byte-fallback tokens are `<0xXX>` at id byte + 3.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;

use super::spm::parse_byte_token;
use super::Tokenizer;
use crate::error::{ModelError, Result};

pub const LLAMA2C_UNK: u32 = 0;
pub const LLAMA2C_BOS: u32 = 1;
pub const LLAMA2C_EOS: u32 = 2;
/// Byte `b` falls back to token `b + 3`.
const BYTE_OFFSET: u32 = 3;

pub struct Llama2cTokenizer {
    pieces: Vec<Vec<u8>>,
    scores: Vec<f32>,
    /// Piece bytes → lowest id with those bytes.
    lookup: HashMap<Vec<u8>, u32>,
    max_token_length: u32,
}

/// A candidate merge; the max-heap pops the highest score, then the leftmost pair.
struct Pair {
    score: f32,
    left: usize,
    right: usize,
    /// Ids of both sides when queued: if either changed, the entry is stale.
    left_id: u32,
    right_id: u32,
    merged: u32,
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Pair {}
impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pair {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl Llama2cTokenizer {
    pub fn open(path: &Path, vocab_size: Option<usize>) -> Result<Llama2cTokenizer> {
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_bytes(path, &bytes, vocab_size)
    }

    /// Parse a `tok*.bin` image. With `vocab_size` (from the model header), exactly that many tokens
    /// are read, as run.c does; without it, tokens are read to the end of the file. `path` is only
    /// used in error messages.
    pub fn from_bytes(
        path: &Path,
        bytes: &[u8],
        vocab_size: Option<usize>,
    ) -> Result<Llama2cTokenizer> {
        let err = |msg: String| ModelError::format(path, msg);
        let read4 = |pos: usize| -> Option<[u8; 4]> {
            bytes.get(pos..pos + 4).map(|s| [s[0], s[1], s[2], s[3]])
        };
        let max_len =
            read4(0).ok_or_else(|| err("file too short for the max_token_length header".into()))?;
        let max_token_length = i32::from_le_bytes(max_len);
        if max_token_length < 0 {
            return Err(err(format!("negative max_token_length {max_token_length}")));
        }
        let mut pos = 4;
        let mut pieces = Vec::new();
        let mut scores = Vec::new();
        loop {
            match vocab_size {
                Some(n) if pieces.len() == n => break,
                None if pos == bytes.len() => break,
                _ => {}
            }
            let id = pieces.len();
            let score = read4(pos).ok_or_else(|| {
                err(format!(
                    "truncated at token {id}: missing score at byte {pos}"
                ))
            })?;
            let len = read4(pos + 4).ok_or_else(|| {
                err(format!(
                    "truncated at token {id}: missing length at byte {}",
                    pos + 4
                ))
            })?;
            let len = i32::from_le_bytes(len);
            if len < 0 {
                return Err(err(format!("token {id} has negative length {len}")));
            }
            let start = pos + 8;
            let piece = bytes.get(start..start + len as usize).ok_or_else(|| {
                err(format!(
                    "truncated at token {id}: {len} bytes at offset {start}, file has {}",
                    bytes.len()
                ))
            })?;
            scores.push(f32::from_le_bytes(score));
            pieces.push(piece.to_vec());
            pos = start + len as usize;
        }
        if pieces.len() <= LLAMA2C_EOS as usize {
            return Err(err(format!(
                "only {} tokens; need at least <unk>, <s>, </s>",
                pieces.len()
            )));
        }
        let mut lookup = HashMap::with_capacity(pieces.len());
        for (id, p) in pieces.iter().enumerate() {
            lookup.entry(p.clone()).or_insert(id as u32);
        }
        Ok(Llama2cTokenizer {
            pieces,
            scores,
            lookup,
            max_token_length: max_token_length as u32,
        })
    }

    pub fn max_token_length(&self) -> u32 {
        self.max_token_length
    }
    pub fn piece(&self, id: u32) -> Option<&[u8]> {
        self.pieces.get(id as usize).map(|p| p.as_slice())
    }
    pub fn score(&self, id: u32) -> Option<f32> {
        self.scores.get(id as usize).copied()
    }

    /// run.c's `encode(text, bos, eos)`.
    pub fn encode_with_eos(&self, text: &str, add_bos: bool, add_eos: bool) -> Vec<u32> {
        let n = self.pieces.len() as u32;
        let mut tokens: Vec<u32> = Vec::with_capacity(text.len() + 3);
        if add_bos {
            tokens.push(LLAMA2C_BOS);
        }
        // SentencePiece's dummy prefix: a leading " " token for non-empty text.
        if !text.is_empty() {
            if let Some(&id) = self.lookup.get(b" ".as_slice()) {
                tokens.push(id);
            }
        }
        let mut buf = [0u8; 4];
        for c in text.chars() {
            let s = c.encode_utf8(&mut buf).as_bytes();
            match self.lookup.get(s) {
                Some(&id) => tokens.push(id),
                None => {
                    for &b in s {
                        // A vocabulary too small for byte fallback gets <unk> instead.
                        let id = b as u32 + BYTE_OFFSET;
                        tokens.push(if id < n { id } else { LLAMA2C_UNK });
                    }
                }
            }
        }
        self.merge(&mut tokens);
        if add_eos {
            tokens.push(LLAMA2C_EOS);
        }
        tokens
    }

    /// Repeatedly merge the adjacent pair whose concatenated piece has the best score (ties:
    /// leftmost; only scores above -1e10 qualify, as in run.c). Heap over a linked list.
    fn merge(&self, tokens: &mut Vec<u32>) {
        let len = tokens.len();
        if len < 2 {
            return;
        }
        let mut ids = tokens.clone();
        let mut next: Vec<Option<usize>> =
            (0..len).map(|i| (i + 1 < len).then_some(i + 1)).collect();
        let mut prev: Vec<Option<usize>> = (0..len).map(|i| i.checked_sub(1)).collect();
        let mut alive = vec![true; len];
        let mut heap = BinaryHeap::new();
        let mut key = Vec::new();
        let mut try_add =
            |heap: &mut BinaryHeap<Pair>, ids: &[u32], l: Option<usize>, r: Option<usize>| {
                let (Some(l), Some(r)) = (l, r) else { return };
                key.clear();
                key.extend_from_slice(&self.pieces[ids[l] as usize]);
                key.extend_from_slice(&self.pieces[ids[r] as usize]);
                if let Some(&merged) = self.lookup.get(&key) {
                    let score = self.scores[merged as usize];
                    if score > -1e10 {
                        heap.push(Pair {
                            score,
                            left: l,
                            right: r,
                            left_id: ids[l],
                            right_id: ids[r],
                            merged,
                        });
                    }
                }
            };
        for i in 1..len {
            try_add(&mut heap, &ids, Some(i - 1), Some(i));
        }
        while let Some(p) = heap.pop() {
            if !alive[p.left]
                || !alive[p.right]
                || next[p.left] != Some(p.right)
                || ids[p.left] != p.left_id
                || ids[p.right] != p.right_id
            {
                continue;
            }
            ids[p.left] = p.merged;
            alive[p.right] = false;
            next[p.left] = next[p.right];
            if let Some(nx) = next[p.right] {
                prev[nx] = Some(p.left);
            }
            try_add(&mut heap, &ids, prev[p.left], Some(p.left));
            try_add(&mut heap, &ids, Some(p.left), next[p.left]);
        }
        tokens.clear();
        let mut cur = Some(0);
        while let Some(i) = cur {
            tokens.push(ids[i]);
            cur = next[i];
        }
    }

    /// run.c's `decode(prev_token, token)`: the piece's bytes, with the leading space dropped
    /// right after BOS and `<0xXX>` turned into the byte.
    pub fn decode_piece(&self, prev: Option<u32>, id: u32) -> Vec<u8> {
        let mut piece = self.token_bytes(id);
        if prev == Some(LLAMA2C_BOS) && piece.first() == Some(&b' ') {
            piece.remove(0);
        }
        piece
    }
}

impl Tokenizer for Llama2cTokenizer {
    fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        self.encode_with_eos(text, add_bos, false)
    }
    fn token_bytes(&self, id: u32) -> Vec<u8> {
        // <unk>, <s>, </s> are control tokens: no text.
        if id <= LLAMA2C_EOS {
            return Vec::new();
        }
        let Some(piece) = self.pieces.get(id as usize) else {
            return Vec::new();
        };
        if let Some(b) = std::str::from_utf8(piece).ok().and_then(parse_byte_token) {
            return vec![b];
        }
        piece.clone()
    }
    fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        // The encoder's dummy prefix space is dropped at the start and after BOS.
        let mut prev = Some(LLAMA2C_BOS);
        for &id in ids {
            bytes.extend(self.decode_piece(prev, id));
            prev = Some(id);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
    fn vocab_size(&self) -> usize {
        self.pieces.len()
    }
    fn bos(&self) -> Option<u32> {
        Some(LLAMA2C_BOS)
    }
    fn eos(&self) -> Option<u32> {
        Some(LLAMA2C_EOS)
    }
    fn add_bos_by_default(&self) -> bool {
        true
    }
}
