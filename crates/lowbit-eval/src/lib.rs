//! lowbit-eval: perplexity with llama.cpp's llama-perplexity protocol, KL-divergence against a base
//! model (`kld`), and several models compared at once in a table / SVG plot (`compare`).

use std::time::Instant;

use lowbit_model::{CpuDecoder, Decoder, Transformer};
use serde::Serialize;

/// What `perplexity` measured. `ppl_stderr` is llama.cpp's: PPL · sqrt(var(nll) / (N − 1)).
#[derive(Debug, Clone, Serialize)]
pub struct PplResult {
    pub ppl: f64,
    pub ppl_stderr: f64,
    /// Tokens run through the model (chunks × ctx).
    pub tokens: usize,
    /// Tokens whose log-probability was scored.
    pub scored: usize,
    pub chunks: usize,
    pub ctx: usize,
    pub seconds: f64,
    pub tokens_per_second: f64,
    /// Mean negative log-likelihood (nats).
    pub nll: f64,
    /// PPL of each chunk on its own.
    pub chunk_ppl: Vec<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("the text has {tokens} tokens, fewer than one chunk of {ctx}: use a longer text or a smaller --ctx")]
    TooShort { tokens: usize, ctx: usize },
    #[error("--ctx must be at least 4, got {0}")]
    BadCtx(usize),
    #[error(transparent)]
    Model(#[from] lowbit_model::ModelError),
}

/// llama-perplexity: the token stream is cut into `chunks` pieces of `ctx` tokens; each runs from
/// an empty cache with its first token replaced by `bos` (when the model uses one), and only the
/// second half is scored: logits at position j predict token j+1 for j in ctx/2 .. ctx-1.
/// `progress(done, total, running_ppl)` is called after each chunk.
pub fn perplexity(
    model: &Transformer,
    tokens: &[u32],
    bos: Option<u32>,
    ctx: usize,
    max_chunks: Option<usize>,
    progress: impl FnMut(usize, usize, f64),
) -> Result<PplResult, EvalError> {
    let mut d = CpuDecoder::new(model, ctx);
    perplexity_with(&mut d, tokens, bos, ctx, max_chunks, progress)
}

/// [`perplexity`] for any [`Decoder`] (the CPU transformer, a GPU model); its state must hold
/// `ctx` tokens.
pub fn perplexity_with(
    model: &mut dyn Decoder,
    tokens: &[u32],
    bos: Option<u32>,
    ctx: usize,
    max_chunks: Option<usize>,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<PplResult, EvalError> {
    if ctx < 4 {
        return Err(EvalError::BadCtx(ctx));
    }
    let available = tokens.len() / ctx;
    if available == 0 {
        return Err(EvalError::TooShort {
            tokens: tokens.len(),
            ctx,
        });
    }
    let chunks = max_chunks.map_or(available, |m| m.min(available));
    let first = ctx / 2;
    let (mut sum, mut sum2, mut count) = (0f64, 0f64, 0usize);
    let mut chunk_ppl = Vec::with_capacity(chunks);
    let start = Instant::now();
    for c in 0..chunks {
        let mut chunk = tokens[c * ctx..(c + 1) * ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        model.reset();
        let hidden = model.forward_hidden(&chunk, first)?;
        // Row j - first of `hidden` predicts token j + 1; the last row predicts nothing.
        let h = model.config().hidden_size;
        let targets: Vec<u32> = (first..ctx - 1).map(|j| tokens[c * ctx + j + 1]).collect();
        let nlls = model.nll(&hidden[..targets.len() * h], &targets)?;
        let mut chunk_sum = 0f64;
        for nll in nlls {
            sum += nll;
            sum2 += nll * nll;
            chunk_sum += nll;
            count += 1;
        }
        chunk_ppl.push((chunk_sum / (ctx - 1 - first) as f64).exp());
        progress(c + 1, chunks, (sum / count as f64).exp());
    }
    let seconds = start.elapsed().as_secs_f64();
    let mean = sum / count as f64;
    let var = sum2 / count as f64 - mean * mean;
    let ppl = mean.exp();
    let ppl_stderr = if var > 0.0 && count > 1 {
        ppl * (var / (count - 1) as f64).sqrt()
    } else {
        0.0
    };
    Ok(PplResult {
        ppl,
        ppl_stderr,
        tokens: chunks * ctx,
        scored: count,
        chunks,
        ctx,
        seconds,
        tokens_per_second: (chunks * ctx) as f64 / seconds.max(1e-9),
        nll: mean,
        chunk_ppl,
    })
}
pub mod compare;
pub mod kld;
