//! Per-input-channel scaling of linear layers before quantization, folded into the operation that
//! produces their input so the full-precision model is unchanged: W·x = (W·diag(s))·(x / s).
//! - AWQ (Lin et al., 2023): s = mean|x|^α, normalized, with α searched on a grid in [0, 1] to
//!   minimize the output error ‖(W − Q(W·diag s)·diag(1/s)) X‖² of the quantized linears sharing
//!   the input, on the calibration inputs (through their Gram matrix H = XᵀX).
//! - SmoothQuant (Xiao et al., 2022): s = max|x|^α / max|W|^(1−α), moving activation outliers into
//!   the weights so per-token activation quantization (W8A8) loses less.

use anyhow::{bail, Result};

use crate::linalg::matmul_f64;
use crate::quantizer::{rtn, Quantizer};

/// Steps of the α grid (α = k / ALPHA_STEPS for k = 0..=ALPHA_STEPS).
pub const ALPHA_STEPS: usize = 10;

/// Scales are kept in this range so folding never overflows or divides by ~0.
const S_MIN: f64 = 1e-4;
const S_MAX: f64 = 1e4;

/// Σ_r d_r H d_rᵀ for the rows of `d` (`rows × cols`).
pub fn quad_form(d: &[f64], h: &[f64], rows: usize, cols: usize) -> f64 {
    let mut dh = vec![0f64; rows * cols];
    matmul_f64(&mut dh, d, h, rows, cols, cols, false, 1.0);
    dh.iter().zip(d).map(|(a, b)| a * b).sum()
}

/// Output error of RTN-quantizing the linears `ws` (each `(values, rows)`, `cols` columns) after
/// scaling their input channels by `s`: Σ ‖(W − Q(W·diag s)·diag(1/s)) X‖² through `h`.
pub fn scaled_rtn_error(
    q: &Quantizer,
    ws: &[(&[f32], usize)],
    cols: usize,
    s: &[f32],
    h: &[f64],
) -> Result<f64> {
    let mut total = 0f64;
    for &(w, rows) in ws {
        let scaled: Vec<f32> = w.iter().enumerate().map(|(k, v)| v * s[k % cols]).collect();
        let d = rtn(q, &scaled, rows, cols)?.dequantize();
        let diff: Vec<f64> = w
            .iter()
            .zip(&d)
            .enumerate()
            .map(|(k, (a, b))| (*a as f64) - (*b as f64) / s[k % cols] as f64)
            .collect();
        total += quad_form(&diff, h, rows, cols);
    }
    Ok(total)
}

/// Scales s_j = stat_j^α normalized by √(max·min), clamped.
pub fn scales_from_stat(stat: &[f64], alpha: f64) -> Vec<f32> {
    let raw: Vec<f64> = stat
        .iter()
        .map(|v| v.max(1e-8).powf(alpha).clamp(S_MIN, S_MAX))
        .collect();
    let (mn, mx) = raw
        .iter()
        .fold((f64::MAX, 0f64), |(a, b), &v| (a.min(v), b.max(v)));
    let norm = (mn * mx).sqrt().max(1e-30);
    raw.iter()
        .map(|v| (v / norm).clamp(S_MIN, S_MAX) as f32)
        .collect()
}

/// The result of an AWQ search for one input slot.
#[derive(Debug, Clone)]
pub struct AwqChoice {
    pub alpha: f64,
    pub scales: Vec<f32>,
    /// Output error with these scales and with none (α = 0 gives all-ones scales).
    pub err: f64,
    pub err_identity: f64,
}

/// AWQ: search α in [0, 1] for the linears `ws` sharing an input whose per-channel mean |x| is
/// `mean_abs` and whose Gram matrix is `h`. α = 0 (no scaling) is on the grid, so the chosen
/// scales never do worse on the calibration inputs than plain RTN.
pub fn search(
    q: &Quantizer,
    ws: &[(&[f32], usize)],
    cols: usize,
    mean_abs: &[f64],
    h: &[f64],
) -> Result<AwqChoice> {
    if mean_abs.len() != cols || h.len() != cols * cols {
        bail!(
            "AWQ statistics have {} channels and a {}-value Gram matrix, expected {cols}",
            mean_abs.len(),
            h.len()
        );
    }
    for &(w, rows) in ws {
        if w.len() != rows * cols {
            bail!("{} values do not form a {rows} × {cols} matrix", w.len());
        }
    }
    let ones = vec![1f32; cols];
    let err_identity = scaled_rtn_error(q, ws, cols, &ones, h)?;
    let mut best = AwqChoice {
        alpha: 0.0,
        scales: ones,
        err: err_identity,
        err_identity,
    };
    for k in 1..=ALPHA_STEPS {
        let alpha = k as f64 / ALPHA_STEPS as f64;
        let s = scales_from_stat(mean_abs, alpha);
        let e = scaled_rtn_error(q, ws, cols, &s, h)?;
        if e < best.err {
            best = AwqChoice {
                alpha,
                scales: s,
                err: e,
                err_identity,
            };
        }
    }
    Ok(best)
}

/// SmoothQuant: s_j = max|x_j|^α / max_r|W_rj|^(1−α) over the linears `ws` sharing the input.
pub fn smooth_scales(ws: &[(&[f32], usize)], cols: usize, abs_max: &[f32], alpha: f64) -> Vec<f32> {
    let mut wmax = vec![0f32; cols];
    for &(w, _) in ws {
        for row in w.chunks_exact(cols) {
            for (m, v) in wmax.iter_mut().zip(row) {
                *m = m.max(v.abs());
            }
        }
    }
    abs_max
        .iter()
        .zip(&wmax)
        .map(|(&a, &b)| {
            let (a, b) = ((a as f64).max(1e-5), (b as f64).max(1e-5));
            (a.powf(alpha) / b.powf(1.0 - alpha)).clamp(S_MIN, S_MAX) as f32
        })
        .collect()
}

/// Multiply column j of a row-major `? × cols` matrix by `s[j]`.
pub fn scale_columns(w: &mut [f32], cols: usize, s: &[f32]) {
    for row in w.chunks_exact_mut(cols) {
        for (v, f) in row.iter_mut().zip(s) {
            *v *= f;
        }
    }
}

/// Divide row r of a row-major `rows × cols` matrix by `s[r]`.
pub fn unscale_rows(w: &mut [f32], cols: usize, s: &[f32]) {
    for (row, f) in w.chunks_exact_mut(cols).zip(s) {
        row.iter_mut().for_each(|v| *v /= f);
    }
}

/// Divide an RMSNorm weight by `s`, in its stored form: the norm multiplies by (offset + w).
pub fn unscale_norm(w: &mut [f32], offset: f32, s: &[f32]) {
    for (v, f) in w.iter_mut().zip(s) {
        *v = (offset + *v) / f - offset;
    }
}

/// Scales of the heads' output (o_proj's input, `n_heads × head_dim`) that can be folded into
/// v_proj's rows: heads sharing a KV head must share scales, so the statistic is averaged over
/// them first. Returns the statistic to search over (`n_heads × head_dim`).
pub fn tie_heads(stat: &[f64], n_heads: usize, n_kv_heads: usize, head_dim: usize) -> Vec<f64> {
    let g = n_heads / n_kv_heads.max(1);
    let mut kv = vec![0f64; n_kv_heads * head_dim];
    for h in 0..n_heads {
        for d in 0..head_dim {
            kv[(h / g) * head_dim + d] += stat[h * head_dim + d] / g as f64;
        }
    }
    (0..n_heads * head_dim)
        .map(|k| kv[(k / head_dim / g) * head_dim + k % head_dim])
        .collect()
}

/// The v_proj row scales (`n_kv_heads × head_dim`) of tied o_proj column scales.
pub fn kv_rows_of(s: &[f32], n_heads: usize, n_kv_heads: usize, head_dim: usize) -> Vec<f32> {
    let g = n_heads / n_kv_heads.max(1);
    (0..n_kv_heads * head_dim)
        .map(|k| s[(k / head_dim) * g * head_dim + k % head_dim])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lowbit_formats::QuantSpec;

    #[test]
    fn awq_beats_rtn_on_outlier_channels_and_folding_is_exact() {
        let (rows, cols, tokens) = (16, 32, 64);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i as f32 * 0.7137).sin() * 1.3).powi(3))
            .collect();
        // Activations with a few large channels.
        let x: Vec<f32> = (0..tokens * cols)
            .map(|i| {
                let c = i % cols;
                let v = (i as f32 * 0.311).cos();
                if c % 7 == 0 {
                    v * 20.0
                } else {
                    v
                }
            })
            .collect();
        let mut h = vec![0f64; cols * cols];
        crate::linalg::add_gram(&mut h, &x, cols);
        let mut mean_abs = vec![0f64; cols];
        for r in x.chunks_exact(cols) {
            for (m, v) in mean_abs.iter_mut().zip(r) {
                *m += v.abs() as f64 / tokens as f64;
            }
        }
        let q = Quantizer::from_spec(&QuantSpec::parse("int3_g16_sym").unwrap()).unwrap();
        let c = search(&q, &[(&w, rows)], cols, &mean_abs, &h).unwrap();
        assert!(c.alpha > 0.0 && c.err < 0.9 * c.err_identity, "{c:?}");
        let again = search(&q, &[(&w, rows)], cols, &mean_abs, &h).unwrap();
        assert_eq!(again.scales, c.scales);

        // Folding: norm(x)·W == (norm(x)/s)·(W·s) with Gemma's +1 offset.
        let mut norm = vec![0.3f32; cols];
        let mut ws = w.clone();
        scale_columns(&mut ws, cols, &c.scales);
        unscale_norm(&mut norm, 1.0, &c.scales);
        for j in 0..cols {
            let lhs = (1.0 + 0.3) * w[j];
            let rhs = (1.0 + norm[j]) * ws[j];
            assert!(
                (lhs - rhs).abs() <= 1e-5 * lhs.abs().max(1.0),
                "{lhs} {rhs}"
            );
        }
    }

    #[test]
    fn head_tying_and_smooth_scales() {
        let stat: Vec<f64> = (0..8).map(|k| k as f64 + 1.0).collect();
        // 4 heads of dim 2 sharing 2 KV heads.
        let t = tie_heads(&stat, 4, 2, 2);
        assert_eq!(t, vec![2.0, 3.0, 2.0, 3.0, 6.0, 7.0, 6.0, 7.0]);
        let s: Vec<f32> = t.iter().map(|v| *v as f32).collect();
        assert_eq!(kv_rows_of(&s, 4, 2, 2), vec![2.0, 3.0, 6.0, 7.0]);
        let w = [1.0f32, -4.0, 0.5, 2.0];
        let s = smooth_scales(&[(&w, 2)], 2, &[16.0, 1.0], 0.5);
        assert!(
            (s[0] - 4.0).abs() < 1e-6 && (s[1] - 0.5).abs() < 1e-6,
            "{s:?}"
        );
    }
}
