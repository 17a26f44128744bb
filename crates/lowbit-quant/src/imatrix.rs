//! Importance-weighted scale search (as llama.cpp's importance matrix): every input channel j of a
//! linear layer gets an importance imp_j, the mean squared calibration activation (the diagonal of
//! the Hessian XᵀX / N that GPTQ uses), and each group's scale (and zero point) is the candidate
//! that minimizes Σ_j imp_j (w_j − q(w_j))² instead of the plain absmax choice. Candidates are the
//! absmax range shrunk by a grid of factors (1 included, so the weighted error is never worse than
//! RTN's), then, for symmetric integers, refined by the weighted least-squares scale of the chosen
//! codes.

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use crate::quantizer::{rtn, ElemKind, Params, QuantizedTensor, Quantizer, ScaleLayout};

/// Range shrink factors tried for each group: 1.0 down to 0.60 in steps of 0.02.
fn grid() -> impl Iterator<Item = f32> {
    (0..=20).map(|k| 1.0 - 0.02 * k as f32)
}

/// Σ imp_j (w_j − q(w_j))² for one parameter set.
fn weighted_err(q: &Quantizer, w: &[f32], imp: &[f32], p: Params) -> f64 {
    w.iter()
        .zip(imp)
        .map(|(&x, &i)| {
            let d = x - q.value(q.code(x, p), p);
            (i * d * d) as f64
        })
        .sum()
}

/// The parameters minimizing the importance-weighted error of `w` (one group, row or tensor).
pub fn search_params(q: &Quantizer, w: &[f32], imp: &[f32]) -> Params {
    let (lo, hi) = w
        .iter()
        .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let mut best = q.params(&[lo, hi]);
    let mut best_err = weighted_err(q, w, imp, best);
    for m in grid().skip(1) {
        let p = q.params(&[lo * m, hi * m]);
        let e = weighted_err(q, w, imp, p);
        if e < best_err {
            (best, best_err) = (p, e);
        }
    }
    // Symmetric integers: the weighted least-squares scale of the chosen codes, iterated while it
    // helps (the codes may change with the scale).
    if let ElemKind::Int { asym: false, .. } = q.kind {
        for _ in 0..3 {
            let (mut num, mut den) = (0f64, 0f64);
            for (&x, &i) in w.iter().zip(imp) {
                let c = (q.code(x, best) as i8 as i32 - best.zero) as f64;
                num += i as f64 * x as f64 * c;
                den += i as f64 * c * c;
            }
            if den <= 0.0 || num <= 0.0 {
                break;
            }
            // Express the scale through params() so it is rounded to its storage format.
            let (_, qmax) = q.int_range();
            let s = (num / den) as f32;
            let p = q.params(&[s * qmax as f32]);
            let e = weighted_err(q, w, imp, p);
            if e < best_err {
                (best, best_err) = (p, e);
            } else {
                break;
            }
        }
    }
    best
}

/// Quantize a row-major `rows × cols` weight with per-column importances `imp` (`cols` values,
/// any positive multiple of the mean squared activations).
pub fn imatrix_quantize(
    q: &Quantizer,
    w: &[f32],
    rows: usize,
    cols: usize,
    imp: &[f64],
) -> Result<QuantizedTensor> {
    if imp.len() != cols {
        bail!("importance has {} values, expected {cols}", imp.len());
    }
    if imp.iter().any(|v| !v.is_finite() || *v < 0.0) {
        bail!("importance holds negative or non-finite values");
    }
    // Start from RTN (checks the shape and values, and fills the codes of unscaled layouts).
    let mut t = rtn(q, w, rows, cols)?;
    if q.layout == ScaleLayout::None {
        return Ok(t);
    }
    // The tensor's own quantizer (NVFP4 carries the tensor's global scale).
    let q = &t.quantizer.clone();
    // Normalize, with a small floor so channels no calibration token used still count a little.
    let mean = imp.iter().sum::<f64>() / cols.max(1) as f64;
    let imp: Vec<f32> = if mean > 0.0 {
        imp.iter().map(|v| (v / mean + 1e-3) as f32).collect()
    } else {
        vec![1.0; cols]
    };
    let (gs, groups) = (t.group_size, t.groups);
    match q.layout {
        ScaleLayout::Tensor => {
            let all_imp: Vec<f32> = (0..rows).flat_map(|_| imp.iter().copied()).collect();
            let p = search_params(q, w, &all_imp);
            t.params.iter_mut().for_each(|x| *x = p);
        }
        _ => {
            t.params
                .par_chunks_mut(groups)
                .enumerate()
                .for_each(|(r, pr)| {
                    for (g, p) in pr.iter_mut().enumerate() {
                        let a = r * cols + g * gs;
                        *p = search_params(q, &w[a..a + gs], &imp[g * gs..(g + 1) * gs]);
                    }
                });
        }
    }
    for r in 0..rows {
        for c in 0..cols {
            t.codes[r * cols + c] = q.code(w[r * cols + c], t.params[r * groups + c / gs]);
        }
    }
    Ok(t)
}

/// Saved importance values (`lowbit quantize --imatrix-out FILE`, read back by `--imatrix FILE`):
/// a JSON object
/// `{"format": "lowbit-imatrix", "version": 1, "tokens": N, "importance": {MODULE: [f32; in]}}`,
/// MODULE being the linear's HF name without `.weight` and each value the mean squared calibration
/// activation of that input channel (the diagonal of XᵀX / N).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImatrixFile {
    pub format: String,
    pub version: u32,
    /// Calibration tokens the means were taken over.
    pub tokens: usize,
    pub importance: std::collections::BTreeMap<String, Vec<f32>>,
}

impl ImatrixFile {
    pub const FORMAT: &'static str = "lowbit-imatrix";

    pub fn new(tokens: usize) -> ImatrixFile {
        ImatrixFile {
            format: Self::FORMAT.into(),
            version: 1,
            tokens,
            importance: Default::default(),
        }
    }

    pub fn load(path: &std::path::Path) -> Result<ImatrixFile> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read importance file {}", path.display()))?;
        let f: ImatrixFile = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{}: not a lowbit importance file (JSON with format, version, tokens, importance)",
                path.display()
            )
        })?;
        if f.format != Self::FORMAT || f.version != 1 {
            bail!(
                "{}: format {:?} version {}, expected {:?} version 1",
                path.display(),
                f.format,
                f.version,
                Self::FORMAT
            );
        }
        if let Some((m, _)) = f
            .importance
            .iter()
            .find(|(_, v)| v.iter().any(|x| !x.is_finite() || *x < 0.0))
        {
            bail!(
                "{}: importance of {m} holds negative or non-finite values",
                path.display()
            );
        }
        Ok(f)
    }

    /// Write atomically (a temporary file renamed into place).
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        let tmp = path.with_extension("tmp-lowbit");
        std::fs::write(&tmp, serde_json::to_vec(self)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    /// The importance of `module`'s `cols` input channels.
    pub fn get(&self, module: &str, cols: usize) -> Result<Vec<f64>> {
        let v = self
            .importance
            .get(module)
            .with_context(|| format!("the importance file has no entry for {module}"))?;
        if v.len() != cols {
            bail!(
                "the importance file has {} values for {module}, which has {cols} input channels",
                v.len()
            );
        }
        Ok(v.iter().map(|&x| x as f64).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lowbit_formats::QuantSpec;

    fn quantizer(name: &str) -> Quantizer {
        Quantizer::from_spec(&QuantSpec::parse(name).unwrap()).unwrap()
    }

    fn werr(w: &[f32], d: &[f32], imp: &[f64], cols: usize) -> f64 {
        w.iter()
            .zip(d)
            .enumerate()
            .map(|(k, (a, b))| imp[k % cols] * ((a - b) as f64).powi(2))
            .sum()
    }

    #[test]
    fn weighted_error_never_worse_than_rtn_and_usually_better() {
        let (rows, cols) = (8, 64);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i as f32 * 0.917).sin() * 1.7).powi(3))
            .collect();
        // A few channels matter far more than the rest (outlier activations).
        let imp: Vec<f64> = (0..cols)
            .map(|c| {
                if c % 13 == 0 {
                    50.0
                } else {
                    0.2 + (c % 5) as f64
                }
            })
            .collect();
        for name in [
            "int4_g32_sym",
            "int3_channel_sym",
            "uint4_g16",
            "fp8_e4m3_channel",
            "int4_tensor_sym",
            "nvfp4",
            "mxfp4",
        ] {
            let q = quantizer(name);
            let got = imatrix_quantize(&q, &w, rows, cols, &imp).unwrap();
            let r = rtn(&q, &w, rows, cols).unwrap();
            let (ei, er) = (
                werr(&w, &got.dequantize(), &imp, cols),
                werr(&w, &r.dequantize(), &imp, cols),
            );
            assert!(ei <= er * (1.0 + 1e-9), "{name}: imatrix {ei} vs rtn {er}");
            if name.starts_with("int") && !name.contains("tensor") {
                assert!(ei < 0.95 * er, "{name}: imatrix {ei} vs rtn {er}");
            }
            // Deterministic.
            let again = imatrix_quantize(&q, &w, rows, cols, &imp).unwrap();
            assert_eq!(again.codes, got.codes);
        }
        let q = quantizer("int4_g32_sym");
        assert!(imatrix_quantize(&q, &w, rows, cols, &imp[1..]).is_err());
        let mut f = ImatrixFile::new(100);
        f.importance
            .insert("m".into(), imp.iter().map(|&v| v as f32).collect());
        let path = std::env::temp_dir().join(format!("lowbit-imatrix-{}.json", std::process::id()));
        f.save(&path).unwrap();
        let g = ImatrixFile::load(&path).unwrap();
        assert_eq!(g, f);
        let want: Vec<f64> = imp.iter().map(|&v| v as f32 as f64).collect();
        assert_eq!(g.get("m", cols).unwrap(), want);
        assert!(g.get("m", cols + 1).is_err() && g.get("other", cols).is_err());
        std::fs::write(&path, b"{\"format\": \"gguf\"}").unwrap();
        assert!(ImatrixFile::load(&path).is_err());
        std::fs::remove_file(&path).ok();
        let mut bad = imp.clone();
        bad[3] = f64::NAN;
        assert!(imatrix_quantize(&q, &w, rows, cols, &bad).is_err());
    }
}
