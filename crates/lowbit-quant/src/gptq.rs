//! GPTQ (Frantar et al., 2022): quantize a weight column by column, spreading each column's
//! rounding error over the columns not yet quantized so as to minimize ‖(W − Q) X‖² for the
//! calibration inputs X, through the Hessian H = 2 XᵀX.
//!
//! As published: dead inputs (H_ii = 0) are zeroed, H is dampened by `damp` × mean(diag H), the
//! upper Cholesky factor U of H⁻¹ gives the error propagation row by row, and updates outside the
//! current block of `block` columns are applied lazily, once per block, as one matrix product.
//! Optional activation ordering quantizes columns by decreasing H_ii; with groups it uses "static
//! groups" (each group's scale is fixed from the original weights before the loop), so the
//! checkpoint keeps the plain group layout (no g_idx). Without act-order, a group's scale is
//! chosen from the updated weights when the loop reaches the group's first column, as published.
//! Rows are independent given U, so each block is processed in parallel over rows.

use anyhow::{bail, Result};
use rayon::prelude::*;

use crate::linalg::{matmul_f64_strided, upper_cholesky_of_inverse};
use crate::quantizer::{all_params, Params, QuantizedTensor, Quantizer, ScaleLayout};

#[derive(Debug, Clone, Copy)]
pub struct GptqOptions {
    /// Fraction of the mean diagonal added to the diagonal (0.01 in the paper).
    pub damp: f64,
    /// Columns per lazy-update block.
    pub block: usize,
    pub act_order: bool,
}

impl Default for GptqOptions {
    fn default() -> Self {
        GptqOptions {
            damp: 0.01,
            block: 128,
            act_order: false,
        }
    }
}

/// GPTQ of a row-major `rows × cols` weight `w` with Hessian `h` (`cols × cols`, any positive
/// multiple of XᵀX: the algorithm is scale-invariant in H).
pub fn gptq(
    q: &Quantizer,
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &[f64],
    opts: GptqOptions,
) -> Result<QuantizedTensor> {
    if w.len() != rows * cols {
        bail!("{} values do not form a {rows} × {cols} matrix", w.len());
    }
    if h.len() != cols * cols {
        bail!("Hessian has {} values, expected {cols} × {cols}", h.len());
    }
    if let Some(v) = w.iter().find(|v| !v.is_finite()) {
        bail!("weight holds a non-finite value ({v})");
    }
    if h.iter().any(|v| !v.is_finite()) {
        bail!("Hessian holds non-finite values (calibration activations overflowed?)");
    }
    // NVFP4's per-tensor global scale comes from the original weights.
    let q = &q.for_tensor(w);
    let (gs, groups) = q.groups(cols)?;
    let dynamic_groups = matches!(q.layout, ScaleLayout::Group(_)) && !opts.act_order;
    // Static parameters: from the original weights (channel, tensor, or act-order groups).
    let (mut params, _, _) = all_params(q, w, rows, cols)?;

    let mut h = h.to_vec();
    let mut w64: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    for i in 0..cols {
        if h[i * cols + i] == 0.0 {
            h[i * cols + i] = 1.0;
            for r in 0..rows {
                w64[r * cols + i] = 0.0;
            }
        }
    }
    // perm[j] = original column quantized at step j.
    let mut perm: Vec<usize> = (0..cols).collect();
    if opts.act_order {
        perm.sort_by(|&a, &b| {
            h[b * cols + b]
                .partial_cmp(&h[a * cols + a])
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let hp: Vec<f64> = (0..cols * cols)
            .map(|k| h[perm[k / cols] * cols + perm[k % cols]])
            .collect();
        h = hp;
        let wp: Vec<f64> = (0..rows * cols)
            .map(|k| w64[(k / cols) * cols + perm[k % cols]])
            .collect();
        w64 = wp;
    }
    let mean_diag = (0..cols).map(|i| h[i * cols + i]).sum::<f64>() / cols as f64;
    for i in 0..cols {
        h[i * cols + i] += opts.damp * mean_diag;
    }
    let u = upper_cholesky_of_inverse(&h, cols)?;
    drop(h);

    // A block never splits a group, so a dynamic group's columns are all current when it starts.
    let block = if dynamic_groups {
        opts.block.max(1).div_ceil(gs) * gs
    } else {
        opts.block.max(1)
    };
    let mut codes = vec![0u8; rows * cols];
    let mut err = vec![0f64; rows * block];
    for i1 in (0..cols).step_by(block) {
        let i2 = (i1 + block).min(cols);
        let bw = i2 - i1;
        w64.par_chunks_mut(cols)
            .zip(codes.par_chunks_mut(cols))
            .zip(params.par_chunks_mut(groups))
            .zip(err.par_chunks_mut(block))
            .for_each(|(((wr, cr), pr), er)| {
                let mut vals = vec![0f32; gs];
                for j in i1..i2 {
                    let c = perm[j];
                    if dynamic_groups && c % gs == 0 {
                        for (v, x) in vals.iter_mut().zip(&wr[j..j + gs]) {
                            *v = *x as f32;
                        }
                        pr[c / gs] = q.params(&vals);
                    }
                    let p: Params = pr[c / gs];
                    let x = wr[j];
                    let code = q.code(x as f32, p);
                    cr[c] = code;
                    let e = (x - q.value(code, p) as f64) / u[j * cols + j];
                    let urow = &u[j * cols + j + 1..j * cols + i2];
                    for (wk, uk) in wr[j + 1..i2].iter_mut().zip(urow) {
                        *wk -= e * uk;
                    }
                    er[j - i1] = e;
                }
            });
        // Lazy update of the columns after the block: W[:, i2:] -= E · U[i1:i2, i2:].
        if i2 < cols {
            let n = cols - i2;
            matmul_f64_strided(
                &mut w64[i2..],
                cols,
                &err,
                block,
                &u[i1 * cols + i2..],
                cols,
                rows,
                bw,
                n,
                true,
                -1.0,
            );
        }
    }
    Ok(QuantizedTensor {
        quantizer: q.clone(),
        rows,
        cols,
        codes,
        params,
        group_size: gs,
        groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lowbit_formats::QuantSpec;

    fn quantizer(name: &str) -> Quantizer {
        Quantizer::from_spec(&QuantSpec::parse(name).unwrap()).unwrap()
    }

    /// Gauss-Jordan inverse in f64 (test reference).
    fn inverse(a: &[f64], n: usize) -> Vec<f64> {
        let mut m = a.to_vec();
        let mut inv: Vec<f64> = (0..n * n)
            .map(|k| if k / n == k % n { 1.0 } else { 0.0 })
            .collect();
        for c in 0..n {
            let p = (c..n)
                .max_by(|&x, &y| m[x * n + c].abs().partial_cmp(&m[y * n + c].abs()).unwrap())
                .unwrap();
            for k in 0..n {
                m.swap(c * n + k, p * n + k);
                inv.swap(c * n + k, p * n + k);
            }
            let d = m[c * n + c];
            for k in 0..n {
                m[c * n + k] /= d;
                inv[c * n + k] /= d;
            }
            for r in 0..n {
                if r != c {
                    let f = m[r * n + c];
                    for k in 0..n {
                        m[r * n + k] -= f * m[c * n + k];
                        inv[r * n + k] -= f * inv[c * n + k];
                    }
                }
            }
        }
        inv
    }

    /// The published algorithm without Cholesky or lazy blocks (OBQ in fixed order): after
    /// quantizing column j, update the rest with the full inverse, then remove j from the
    /// inverse by its Schur complement.
    fn reference(
        q: &Quantizer,
        w: &[f32],
        rows: usize,
        cols: usize,
        h: &[f64],
        damp: f64,
    ) -> Vec<f32> {
        let mut h = h.to_vec();
        let mean = (0..cols).map(|i| h[i * cols + i]).sum::<f64>() / cols as f64;
        for i in 0..cols {
            h[i * cols + i] += damp * mean;
        }
        let mut hinv = inverse(&h, cols);
        let mut w: Vec<f64> = w.iter().map(|&v| v as f64).collect();
        let (gs, groups) = q.groups(cols).unwrap();
        let mut out = vec![0f32; rows * cols];
        let mut params = vec![
            Params {
                scale: 1.0,
                zero: 0
            };
            rows * groups
        ];
        for j in 0..cols {
            for r in 0..rows {
                if j % gs == 0 {
                    let vals: Vec<f32> = (j..j + gs).map(|k| w[r * cols + k] as f32).collect();
                    params[r * groups + j / gs] = q.params(&vals);
                }
                let p = params[r * groups + j / gs];
                let x = w[r * cols + j];
                let deq = q.value(q.code(x as f32, p), p);
                out[r * cols + j] = deq;
                let e = (x - deq as f64) / hinv[j * cols + j];
                for k in j + 1..cols {
                    w[r * cols + k] -= e * hinv[j * cols + k];
                }
            }
            let d = hinv[j * cols + j];
            let col: Vec<f64> = (0..cols).map(|k| hinv[k * cols + j]).collect();
            for a in 0..cols {
                for b in 0..cols {
                    hinv[a * cols + b] -= col[a] * col[b] / d;
                }
            }
        }
        out
    }

    fn problem(rows: usize, cols: usize, tokens: usize) -> (Vec<f32>, Vec<f64>) {
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i as f32 * 0.7137).sin() * 1.3).powi(3))
            .collect();
        // Correlated inputs: a shared component plus noise, so H is far from diagonal.
        let x: Vec<f32> = (0..tokens * cols)
            .map(|i| (i as f32 * 0.311).cos() + 0.8 * ((i / cols) as f32 * 1.7).sin())
            .collect();
        let mut h = vec![0f64; cols * cols];
        crate::linalg::add_gram(&mut h, &x, cols);
        (w, h)
    }

    fn output_error(w: &[f32], d: &[f32], h: &[f64], rows: usize, cols: usize) -> f64 {
        (0..rows)
            .map(|r| {
                let dr: Vec<f64> = (0..cols)
                    .map(|c| (w[r * cols + c] - d[r * cols + c]) as f64)
                    .collect();
                (0..cols)
                    .map(|a| {
                        (0..cols)
                            .map(|b| dr[a] * h[a * cols + b] * dr[b])
                            .sum::<f64>()
                    })
                    .sum::<f64>()
            })
            .sum()
    }

    #[test]
    fn matches_the_unblocked_reference_and_beats_rtn() {
        let (rows, cols) = (6, 32);
        let (w, h) = problem(rows, cols, 48);
        for name in ["int4_g8_sym", "int3_channel_sym", "uint4_g16"] {
            let q = quantizer(name);
            let opts = GptqOptions {
                damp: 0.01,
                block: 8,
                act_order: false,
            };
            let got = gptq(&q, &w, rows, cols, &h, opts).unwrap().dequantize();
            let want = reference(&q, &w, rows, cols, &h, 0.01);
            let max_diff = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(max_diff < 1e-5, "{name}: max diff {max_diff}");
            let rtn = crate::quantizer::rtn(&q, &w, rows, cols)
                .unwrap()
                .dequantize();
            let (eg, er) = (
                output_error(&w, &got, &h, rows, cols),
                output_error(&w, &rtn, &h, rows, cols),
            );
            assert!(eg < er, "{name}: gptq {eg} vs rtn {er}");
        }
    }

    #[test]
    fn act_order_and_block_sizes_work() {
        let (rows, cols) = (5, 24);
        let (w, h) = problem(rows, cols, 40);
        let q = quantizer("int4_g8_sym");
        let rtn = crate::quantizer::rtn(&q, &w, rows, cols)
            .unwrap()
            .dequantize();
        let er = output_error(&w, &rtn, &h, rows, cols);
        for block in [1, 5, 128] {
            for act_order in [false, true] {
                let t = gptq(
                    &q,
                    &w,
                    rows,
                    cols,
                    &h,
                    GptqOptions {
                        damp: 0.01,
                        block,
                        act_order,
                    },
                )
                .unwrap();
                let eg = output_error(&w, &t.dequantize(), &h, rows, cols);
                assert!(eg < er, "block {block} act_order {act_order}: {eg} vs {er}");
            }
        }
        // Dead input columns are zeroed, not a failure.
        let mut h0 = h.clone();
        for k in 0..cols {
            h0[3 * cols + k] = 0.0;
            h0[k * cols + 3] = 0.0;
        }
        let t = gptq(&q, &w, rows, cols, &h0, GptqOptions::default()).unwrap();
        assert!(t.dequantize().iter().all(|v| v.is_finite()));
        assert!(gptq(&q, &w, rows, cols, &h[1..], GptqOptions::default()).is_err());
    }
}
