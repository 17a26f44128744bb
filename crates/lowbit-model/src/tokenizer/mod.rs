//! Tokenizers: SentencePiece-style (llama, gemma) and byte-level BPE (gpt2, qwen2) read from GGUF
//! metadata, the llama2.c `tok*.bin` vocabulary, and HF `tokenizer.json` through the `tokenizers` crate.

pub mod bpe;
pub mod gguf;
pub mod hf;
pub mod llama2c;
pub mod spm;

/// What every tokenizer offers. Token ids are u32.
pub trait Tokenizer: Send + Sync {
    /// Encode text. `add_bos` prepends the BOS token when the tokenizer has one.
    fn encode(&self, text: &str, add_bos: bool) -> Vec<u32>;
    /// The bytes one token stands for (byte tokens decode to their byte; control tokens to nothing).
    /// Streaming output concatenates these and emits whole UTF-8 characters.
    fn token_bytes(&self, id: u32) -> Vec<u8>;
    /// Decode a sequence to text. The default concatenates `token_bytes` and, for
    /// SentencePiece-style vocabularies, strips the space the encoder added at the start.
    fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend(self.token_bytes(id));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
    fn vocab_size(&self) -> usize;
    fn bos(&self) -> Option<u32>;
    fn eos(&self) -> Option<u32>;
    /// Whether the model expects BOS at the start of a sequence.
    fn add_bos_by_default(&self) -> bool;
}
