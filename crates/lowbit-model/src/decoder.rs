//! `Decoder`: what the evaluators and the CLI need from a model that turns tokens into logits,
//! whatever runs it — the CPU [`Transformer`] with its KV cache ([`CpuDecoder`]) or a GPU model
//! (`lowbit_cuda::GpuModel`). Each decoder owns its sequence state.

use crate::arch::{KvState, Transformer};
use crate::config::ModelConfig;
use crate::error::Result;

pub trait Decoder {
    fn config(&self) -> &ModelConfig;
    /// Longest sequence the state holds.
    fn capacity(&self) -> usize;
    /// Forget the sequence (start again at position 0).
    fn reset(&mut self);
    /// Run `tokens` at the next positions; return the final-normed hidden states of tokens
    /// `logits_from..` (row-major, hidden_size each).
    fn forward_hidden(&mut self, tokens: &[u32], logits_from: usize) -> Result<Vec<f32>>;
    /// The output projection of hidden rows: `rows × vocab` logits.
    fn logits(&self, hidden: &[f32]) -> Result<Vec<f32>>;
    /// Like `forward_hidden`, then the output projection.
    fn forward(&mut self, tokens: &[u32], logits_from: usize) -> Result<Vec<f32>> {
        let h = self.forward_hidden(tokens, logits_from)?;
        self.logits(&h)
    }
    /// Negative log-likelihood of `targets[t]` under hidden row `t`. The default projects 16
    /// rows at a time, so memory stays at 16 × vocab floats.
    fn nll(&self, hidden: &[f32], targets: &[u32]) -> Result<Vec<f64>> {
        let h = self.config().hidden_size;
        let vocab = self.config().vocab_size;
        let mut out = Vec::with_capacity(targets.len());
        for (rows, tg) in hidden.chunks(16 * h).zip(targets.chunks(16)) {
            let logits = self.logits(rows)?;
            for (row, &t) in logits.chunks_exact(vocab).zip(tg) {
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
                let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
                out.push(max + sum.ln() - row[t as usize] as f64);
            }
        }
        Ok(out)
    }
}

/// The CPU transformer with one sequence's KV cache.
pub struct CpuDecoder<'a> {
    pub model: &'a Transformer,
    pub state: KvState,
}

impl<'a> CpuDecoder<'a> {
    pub fn new(model: &'a Transformer, capacity: usize) -> CpuDecoder<'a> {
        CpuDecoder {
            model,
            state: model.new_state(capacity),
        }
    }
}

impl Decoder for CpuDecoder<'_> {
    fn config(&self) -> &ModelConfig {
        &self.model.config
    }
    fn capacity(&self) -> usize {
        self.state.capacity()
    }
    fn reset(&mut self) {
        self.state.clear();
    }
    fn forward_hidden(&mut self, tokens: &[u32], logits_from: usize) -> Result<Vec<f32>> {
        self.model
            .forward_hidden(&mut self.state, tokens, logits_from)
    }
    fn logits(&self, hidden: &[f32]) -> Result<Vec<f32>> {
        Ok(self.model.lm_head.forward(hidden))
    }
    fn forward(&mut self, tokens: &[u32], logits_from: usize) -> Result<Vec<f32>> {
        self.model.forward(&mut self.state, tokens, logits_from)
    }
    /// Slices of the vocabulary with a running log-sum-exp: the output matrix is read once for
    /// all rows (see [`Transformer::nll`]).
    fn nll(&self, hidden: &[f32], targets: &[u32]) -> Result<Vec<f64>> {
        Ok(self.model.nll(hidden, targets))
    }
}
