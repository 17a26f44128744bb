//! KL-divergence of a model against a base model over the same chunks (llama-perplexity's
//! protocol, as [`crate::perplexity`]): PPL of each, KLD(base ‖ model) per token with mean, median
//! and p99, top-1 agreement and RMS of the change in the correct token's probability. Logits are
//! computed for a few tokens at a time, never for a whole chunk × vocabulary.

use lowbit_model::{CpuDecoder, Decoder, Transformer};
use serde::Serialize;

use crate::EvalError;

#[derive(Debug, Clone, Serialize)]
pub struct KldResult {
    pub ppl: f64,
    pub ppl_stderr: f64,
    pub ppl_base: f64,
    pub ppl_base_stderr: f64,
    pub delta_ppl: f64,
    /// Mean KLD(base ‖ model) in nats.
    pub kld_mean: f64,
    pub kld_stderr: f64,
    pub kld_median: f64,
    pub kld_p99: f64,
    pub kld_max: f64,
    /// Fraction of tokens where both models' most likely token agree.
    pub top1: f64,
    pub top1_stderr: f64,
    /// RMS of p_model(correct) − p_base(correct).
    pub rms_dp: f64,
    pub rms_dp_stderr: f64,
    pub scored: usize,
    pub chunks: usize,
    pub ctx: usize,
}

/// Per-token comparison of two logit rows (one token): (KLD(p_base ‖ p_model), top-1 agreement,
/// p_model(target) − p_base(target), nll_model, nll_base).
pub fn compare_logits(model: &[f32], base: &[f32], target: usize) -> (f64, bool, f64, f64, f64) {
    let lse = |x: &[f32]| {
        let m = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
    };
    let (lq, lb) = (lse(model), lse(base));
    let mut kld = 0f64;
    for (&q, &b) in model.iter().zip(base) {
        let lpb = b as f64 - lb;
        let lpq = q as f64 - lq;
        kld += lpb.exp() * (lpb - lpq);
    }
    let argmax = |x: &[f32]| {
        x.iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |a, (i, &v)| if v > a.1 { (i, v) } else { a },
            )
            .0
    };
    let nll_q = lq - model[target] as f64;
    let nll_b = lb - base[target] as f64;
    (
        kld.max(0.0),
        argmax(model) == argmax(base),
        (-nll_q).exp() - (-nll_b).exp(),
        nll_q,
        nll_b,
    )
}

fn mean_stderr(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, (var / n).sqrt())
}

/// Run `model` and `base` over the same chunks of `tokens` and compare their predictions.
#[allow(clippy::too_many_arguments)]
pub fn kl_divergence(
    model: &Transformer,
    base: &Transformer,
    tokens: &[u32],
    bos: Option<u32>,
    ctx: usize,
    max_chunks: Option<usize>,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<KldResult, EvalError> {
    let mut r = kl_divergence_many(&[model], base, tokens, bos, ctx, max_chunks, |d, n, k| {
        progress(d, n, k[0])
    })?;
    Ok(r.remove(0))
}

/// Per-token statistics of one model against the base, gathered chunk by chunk.
#[derive(Default)]
struct Acc {
    klds: Vec<f64>,
    dps: Vec<f64>,
    nll: Vec<f64>,
    nll_base: Vec<f64>,
    agree: usize,
}

impl Acc {
    fn mean_kld(&self) -> f64 {
        self.klds.iter().sum::<f64>() / self.klds.len().max(1) as f64
    }

    fn finish(self, chunks: usize, ctx: usize) -> KldResult {
        let n = self.klds.len();
        let (kld_mean, kld_stderr) = mean_stderr(&self.klds);
        let (mq, sq_err) = mean_stderr(&self.nll);
        let (mb, sb_err) = mean_stderr(&self.nll_base);
        let dp2: Vec<f64> = self.dps.iter().map(|d| d * d).collect();
        let (ms, ms_err) = mean_stderr(&dp2);
        let rms_dp = ms.sqrt();
        let mut sorted = self.klds;
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        let pct = |p: f64| sorted[((p * (n - 1) as f64).round() as usize).min(n - 1)];
        let top1 = self.agree as f64 / n as f64;
        KldResult {
            ppl: mq.exp(),
            ppl_stderr: mq.exp() * sq_err,
            ppl_base: mb.exp(),
            ppl_base_stderr: mb.exp() * sb_err,
            delta_ppl: mq.exp() - mb.exp(),
            kld_mean,
            kld_stderr,
            kld_median: pct(0.5),
            kld_p99: pct(0.99),
            kld_max: sorted[n - 1],
            top1,
            top1_stderr: (top1 * (1.0 - top1) / n as f64).sqrt(),
            rms_dp,
            // Delta method: d sqrt(m) = dm / (2 sqrt(m)).
            rms_dp_stderr: if rms_dp > 0.0 {
                ms_err / (2.0 * rms_dp)
            } else {
                0.0
            },
            scored: n,
            chunks,
            ctx,
        }
    }
}

/// Compare several models with one base over the same chunks: the base runs once per chunk and
/// each slice of its logits is compared with every model's (`lowbit eval compare`). Results are
/// in the order of `models`; `progress(done, total, running mean KLD of each model)`.
#[allow(clippy::too_many_arguments)]
pub fn kl_divergence_many(
    models: &[&Transformer],
    base: &Transformer,
    tokens: &[u32],
    bos: Option<u32>,
    ctx: usize,
    max_chunks: Option<usize>,
    progress: impl FnMut(usize, usize, &[f64]),
) -> Result<Vec<KldResult>, EvalError> {
    let mut decoders: Vec<CpuDecoder> = models.iter().map(|m| CpuDecoder::new(m, ctx)).collect();
    let mut refs: Vec<&mut dyn Decoder> =
        decoders.iter_mut().map(|d| d as &mut dyn Decoder).collect();
    let mut b = CpuDecoder::new(base, ctx);
    kl_divergence_many_with(&mut refs, &mut b, tokens, bos, ctx, max_chunks, progress)
}

/// [`kl_divergence_many`] for any [`Decoder`]s (CPU or GPU); their states must hold `ctx` tokens.
#[allow(clippy::too_many_arguments)]
pub fn kl_divergence_many_with(
    models: &mut [&mut dyn Decoder],
    base: &mut dyn Decoder,
    tokens: &[u32],
    bos: Option<u32>,
    ctx: usize,
    max_chunks: Option<usize>,
    mut progress: impl FnMut(usize, usize, &[f64]),
) -> Result<Vec<KldResult>, EvalError> {
    if ctx < 4 {
        return Err(EvalError::BadCtx(ctx));
    }
    let vocab = base.config().vocab_size;
    for m in models.iter() {
        if m.config().vocab_size != vocab {
            return Err(EvalError::Model(lowbit_model::ModelError::Other(format!(
                "the models have different vocabularies ({} vs {} tokens): KL-divergence needs the same tokenizer",
                m.config().vocab_size, vocab
            ))));
        }
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
    let hb = base.config().hidden_size;
    let mut accs: Vec<Acc> = models.iter().map(|_| Acc::default()).collect();
    // Tokens per logits slice: bounds memory to (models + 1) × SLICE × vocab floats.
    const SLICE: usize = 16;
    for c in 0..chunks {
        let mut chunk = tokens[c * ctx..(c + 1) * ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        base.reset();
        let xb = base.forward_hidden(&chunk, first)?;
        let mut xs = Vec::with_capacity(models.len());
        for m in models.iter_mut() {
            m.reset();
            xs.push(m.forward_hidden(&chunk, first)?);
        }
        let scored = ctx - 1 - first;
        for t0 in (0..scored).step_by(SLICE) {
            let t1 = (t0 + SLICE).min(scored);
            let lb = base.logits(&xb[t0 * hb..t1 * hb])?;
            for ((m, xq), acc) in models.iter().zip(&xs).zip(accs.iter_mut()) {
                let hq = m.config().hidden_size;
                let lq = m.logits(&xq[t0 * hq..t1 * hq])?;
                for t in t0..t1 {
                    let target = tokens[c * ctx + first + t + 1] as usize;
                    let r = t - t0;
                    let (k, a, dp, q, b) = compare_logits(
                        &lq[r * vocab..(r + 1) * vocab],
                        &lb[r * vocab..(r + 1) * vocab],
                        target,
                    );
                    acc.klds.push(k);
                    acc.agree += a as usize;
                    acc.dps.push(dp);
                    acc.nll.push(q);
                    acc.nll_base.push(b);
                }
            }
        }
        let means: Vec<f64> = accs.iter().map(Acc::mean_kld).collect();
        progress(c + 1, chunks, &means);
    }
    Ok(accs.into_iter().map(|a| a.finish(chunks, ctx)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_logits_have_zero_divergence() {
        let x = [1.0f32, 2.0, -0.5, 0.25];
        let (k, a, dp, q, b) = compare_logits(&x, &x, 1);
        assert!(k.abs() < 1e-12 && a && dp == 0.0 && q == b);
        let y = [1.0f32, 0.0, -0.5, 3.0];
        let (k, a, _, _, _) = compare_logits(&y, &x, 1);
        assert!(k > 0.0 && !a);
    }
}
