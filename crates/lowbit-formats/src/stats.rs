//! Error statistics between a tensor and its quantized version.

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ErrorStats {
    /// Mean squared error.
    pub mse: f64,
    /// Signal-to-quantization-noise ratio, 10 log10(sum x^2 / sum (x - y)^2); +inf when exact.
    pub sqnr_db: f64,
    /// Largest |x - y|.
    pub max_abs_err: f64,
    /// sqrt(mse / mean x^2).
    pub rel_rmse: f64,
}

/// Statistics of `y` as an approximation of `x` (over the common length; f64 accumulation).
pub fn error_stats(x: &[f32], y: &[f32]) -> ErrorStats {
    let n = x.len().min(y.len());
    if n == 0 {
        return ErrorStats::default();
    }
    // Chunked accumulation: f32 differences in lanes, summed into f64 per chunk.
    let (mut sig, mut noise, mut maxe) = (0f64, 0f64, 0f64);
    for (xc, yc) in x[..n].chunks(256).zip(y[..n].chunks(256)) {
        let (mut s, mut e, mut m) = (0f64, 0f64, 0f32);
        for (a, b) in xc.iter().zip(yc) {
            let d = a - b;
            s += (*a as f64) * (*a as f64);
            e += (d as f64) * (d as f64);
            m = m.max(d.abs());
        }
        sig += s;
        noise += e;
        maxe = maxe.max(m as f64);
    }
    let mse = noise / n as f64;
    ErrorStats {
        mse,
        sqnr_db: if noise == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (sig / noise).log10()
        },
        max_abs_err: maxe,
        rel_rmse: if sig == 0.0 {
            0.0
        } else {
            (noise / sig).sqrt()
        },
    }
}
