//! Fake quantization: quantize then dequantize in f32, group by group, to measure what a format
//! does to a tensor without packing it. Elements saturate at the format's largest value.
//!
//! Work is done per group on contiguous slices with simple loops (scale, round, clamp, rescale)
//! that the compiler vectorizes; 2-D tiles are gathered into a scratch buffer first.

use crate::minifloat::Minifloat;
use crate::rounding::{round_magnitude, Rounding, SplitMix64};
use crate::simd::dispatch;
use crate::simd::kernels::FastMinifloat;
use crate::spec::{
    Element, Granularity, QuantSpec, ScaleChoice, ScaleFormat, SpecError, ELEMENT_ROUNDING,
};
use crate::stats::{error_stats, ErrorStats};
use std::cell::RefCell;

/// Fake-quantize `x` in place as one row (see [`QuantSpec::fake_quantize`]).
pub fn fake_quantize(spec: &QuantSpec, x: &mut [f32]) -> Result<(), SpecError> {
    let cols = x.len().max(1);
    fake_quantize_matrix(spec, x, cols)
}

/// Out-of-place fake quantization of a row-major matrix; returns the values and error stats.
pub fn fake_quantized(
    spec: &QuantSpec,
    x: &[f32],
    cols: usize,
) -> Result<(Vec<f32>, ErrorStats), SpecError> {
    let mut y = x.to_vec();
    fake_quantize_matrix(spec, &mut y, cols)?;
    let stats = error_stats(x, &y);
    Ok((y, stats))
}

/// Fake-quantize a row-major matrix of rows of `cols` values, in place (elements rounded to
/// nearest, ties to even).
pub fn fake_quantize_matrix(spec: &QuantSpec, x: &mut [f32], cols: usize) -> Result<(), SpecError> {
    fake_quantize_matrix_rounding(spec, x, cols, ELEMENT_ROUNDING, 0)
}

/// [`fake_quantize_matrix`] with another rounding mode for the elements: nearest-even,
/// nearest-away, toward zero, up, down, or stochastic (SplitMix64 seeded with `seed`, one
/// draw per value rounded, in processing order, so a seed reproduces the result). Scales are computed and
/// stored exactly as with nearest-even (their own format's rounding); only the element codes
/// change. Integer and ternary elements round `x / s` to an integer; float elements round to
/// the minifloat grid (saturating). Codebook elements (NF4, IQ4_NL tables) only support
/// nearest rounding. Nearest-even takes the SIMD paths; other modes run scalar code. (With the
/// `mse` scale choice the search's trial roundings draw from the same generator.)
pub fn fake_quantize_matrix_rounding(
    spec: &QuantSpec,
    x: &mut [f32],
    cols: usize,
    rounding: Rounding,
    seed: u64,
) -> Result<(), SpecError> {
    if rounding != Rounding::NearestEven && matches!(spec.element, Element::Codebook(_)) {
        return Err(SpecError(format!(
            "{spec}: codebook elements only support nearest rounding, not {rounding:?}"
        )));
    }
    if x.is_empty() {
        return Ok(());
    }
    if cols == 0 || x.len() % cols != 0 {
        return Err(SpecError(format!(
            "{spec}: {} values do not form rows of {cols}",
            x.len()
        )));
    }
    if let Some(v) = x.iter().find(|v| !v.is_finite()) {
        return Err(SpecError(format!(
            "{spec}: input holds a non-finite value ({v})"
        )));
    }
    // NVFP4's second level: one f32 scale for the tensor so that block scales fit E4M3.
    let tensor_scale = if spec.scale_format == ScaleFormat::E4M3 {
        let amax = absmax(x);
        let elem_max = element_max(&spec.element);
        if amax > 0.0 {
            amax / (Minifloat::UE4M3.max_value() as f32 * elem_max)
        } else {
            1.0
        }
    } else {
        1.0
    };
    // Exact bit-level rounding for the SIMD paths (None: the format needs the general encoder).
    let fast_element = match &spec.element {
        Element::Float(m) => FastMinifloat::new(&m.saturating()),
        _ => None,
    };
    let fast_e4m3 = FastMinifloat::new(&Minifloat::E4M3FN.saturating());
    let q = GroupQuantizer {
        spec,
        tensor_scale,
        fast_element,
        fast_e4m3,
        rounding,
        rng: RefCell::new(SplitMix64::new(seed)),
    };
    let mut scratch = Vec::new();
    match spec.granularity {
        Granularity::None => {
            let m = match &spec.element {
                Element::Float(m) => m.saturating(),
                _ => {
                    return Err(SpecError(format!(
                        "{spec}: no-scale cast needs a float element"
                    )))
                }
            };
            for v in x.iter_mut() {
                *v = q.float_element(&m, *v);
            }
        }
        Granularity::Tensor => q.group(x, &mut scratch),
        Granularity::Channel => {
            for row in x.chunks_mut(cols) {
                q.group(row, &mut scratch);
            }
        }
        Granularity::Group(n) => {
            for row in x.chunks_mut(cols) {
                if q.float_groups_fast(row, n) {
                    continue;
                }
                for g in row.chunks_mut(n) {
                    q.group(g, &mut scratch);
                }
            }
        }
        Granularity::Block2d { rows: br, cols: bc } => {
            let nrows = x.len() / cols;
            let mut tile = Vec::with_capacity(br * bc);
            for r0 in (0..nrows).step_by(br) {
                for c0 in (0..cols).step_by(bc) {
                    let r1 = (r0 + br).min(nrows);
                    let c1 = (c0 + bc).min(cols);
                    tile.clear();
                    for r in r0..r1 {
                        tile.extend_from_slice(&x[r * cols + c0..r * cols + c1]);
                    }
                    q.group(&mut tile, &mut scratch);
                    for (i, r) in (r0..r1).enumerate() {
                        let w = c1 - c0;
                        x[r * cols + c0..r * cols + c1].copy_from_slice(&tile[i * w..(i + 1) * w]);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Largest magnitude (inputs are finite here).
fn absmax(x: &[f32]) -> f32 {
    dispatch!(absmax(x), scalar: x.iter().fold(0.0f32, |m, v| m.max(v.abs())))
}

fn element_max(e: &Element) -> f32 {
    match e {
        Element::Int { bits, .. } => ((1u32 << (bits - 1)) - 1).max(1) as f32,
        Element::Ternary => 1.0,
        Element::Float(m) => m.max_value() as f32,
        Element::Codebook(c) => c.max_abs(),
    }
}

struct GroupQuantizer<'a> {
    spec: &'a QuantSpec,
    tensor_scale: f32,
    fast_element: Option<FastMinifloat>,
    fast_e4m3: Option<FastMinifloat>,
    /// Element rounding; anything but NearestEven takes the scalar `rounded_*` paths.
    rounding: Rounding,
    rng: RefCell<SplitMix64>,
}

impl GroupQuantizer<'_> {
    fn nearest_even(&self) -> bool {
        self.rounding == Rounding::NearestEven
    }

    /// `t` rounded to an integer in the element rounding mode (stochastic: floor(|t| + u) with
    /// the sign put back, which is unbiased on both sides of zero).
    fn round_int(&self, t: f32) -> f32 {
        let mut rng = self.rng.borrow_mut();
        let r = round_magnitude(t.abs() as f64, t < 0.0, self.rounding, Some(&mut rng)) as f32;
        if t < 0.0 {
            -r
        } else {
            r
        }
    }

    /// A value rounded to the saturating minifloat `m` in the element rounding mode.
    fn float_element(&self, m: &Minifloat, v: f32) -> f32 {
        match self.rounding {
            Rounding::Stochastic => m.decode(m.encode_stochastic(v, &mut self.rng.borrow_mut())),
            mode => m.quantize(v, mode),
        }
    }

    /// Quantize one group in place, choosing the clipping ratio by the spec's scale choice.
    fn group(&self, g: &mut [f32], scratch: &mut Vec<f32>) {
        match self.spec.scale {
            ScaleChoice::AbsMax => self.apply(g, 1.0, None),
            ScaleChoice::Given(s) => self.apply(g, 1.0, Some(s)),
            ScaleChoice::Mse => {
                let mut best = (f64::INFINITY, 1.0f32);
                for k in 0..=40 {
                    let ratio = 1.0 - 0.01 * k as f32;
                    scratch.clear();
                    scratch.extend_from_slice(g);
                    self.apply(scratch, ratio, None);
                    let sse: f64 = g
                        .iter()
                        .zip(scratch.iter())
                        .map(|(a, b)| ((a - b) as f64).powi(2))
                        .sum();
                    if sse < best.0 {
                        best = (sse, ratio);
                    }
                }
                self.apply(g, best.1, None);
            }
        }
    }

    /// A scale as stored in the spec's scale format.
    fn store(&self, s: f32) -> f32 {
        match self.spec.scale_format {
            ScaleFormat::F32 => s,
            ScaleFormat::F16 => half::f16::from_f32(s).to_f32(),
            ScaleFormat::Bf16 => half::bf16::from_f32(s).to_f32(),
            // Power of two at or above s (so nothing clips), within E8M0's range.
            ScaleFormat::E8M0 => {
                if s > 0.0 {
                    2f32.powi((s.log2().ceil() as i32).clamp(-127, 127))
                } else {
                    0.0
                }
            }
            ScaleFormat::E4M3 => {
                let v = s / self.tensor_scale;
                // Positive finite values round the same in UE4M3 and E4M3FN (same grid, same
                // max 448); the SIMD levels use the bit-level rounding for them.
                if let (Some(f), true) = (&self.fast_e4m3, v > 0.0 && v.is_finite()) {
                    if crate::simd::current() != crate::simd::Level::Scalar {
                        return f.quantize_saturating(v) * self.tensor_scale;
                    }
                }
                let m = Minifloat::UE4M3.saturating();
                m.quantize(s / self.tensor_scale, ELEMENT_ROUNDING) * self.tensor_scale
            }
        }
    }

    /// The (stored) scale of a float-element group whose clipped magnitude is `clip`.
    fn float_scale(&self, m: &Minifloat, clip: f32, given: Option<f32>) -> f32 {
        match (given, self.spec.scale_format) {
            (Some(s), _) => s,
            // OCP MX: shared exponent floor(log2(amax)) - emax of the element format.
            (None, ScaleFormat::E8M0) => {
                if clip > 0.0 {
                    let emax = (m.max_value() as f32).log2().floor() as i32;
                    let e = (clip.log2().floor() as i32 - emax).clamp(-127, 127);
                    2f32.powi(e)
                } else {
                    0.0
                }
            }
            (None, _) => self.store(clip / m.max_value() as f32),
        }
    }

    /// Whole rows of small float-element groups with absmax scales in one SIMD kernel call
    /// (per-group dispatch costs as much as the work for groups of 16 or 32). Same operations
    /// as `group` -> `apply`; false when this spec or level has no such path.
    fn float_groups_fast(&self, row: &mut [f32], n: usize) -> bool {
        let (Element::Float(m), Some(f), ScaleChoice::AbsMax) =
            (&self.spec.element, &self.fast_element, self.spec.scale)
        else {
            return false;
        };
        if crate::simd::current() == crate::simd::Level::Scalar || !self.nearest_even() {
            return false;
        }
        let m = m.saturating();
        let scale = |clip: f32| self.float_scale(&m, clip * 1.0, None);
        dispatch!(minifloat_groups(row, n, f, &m, &scale), scalar: false)
    }

    fn apply(&self, g: &mut [f32], ratio: f32, given: Option<f32>) {
        let clip = absmax(g) * ratio;
        match &self.spec.element {
            Element::Int { bits, asym: false } => {
                let qmax = ((1i32 << (bits - 1)) - 1) as f32;
                if *bits == 1 {
                    let s = self.store(given.unwrap_or(clip));
                    for v in g.iter_mut() {
                        *v = if *v < 0.0 { -s } else { s };
                    }
                    return;
                }
                let s = self.store(given.unwrap_or(clip / qmax));
                self.round_clamp(g, s, -qmax - 1.0, qmax);
            }
            Element::Int { bits, asym: true } => {
                let levels = ((1u32 << bits) - 1) as f32;
                let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
                for &v in g.iter() {
                    lo = lo.min(v);
                    hi = hi.max(v);
                }
                let (lo, hi) = (lo * ratio, hi * ratio);
                let s = self.store(given.unwrap_or((hi - lo) / levels));
                let z = self.store(lo);
                if s == 0.0 || !s.is_finite() {
                    g.fill(z);
                    return;
                }
                let inv = 1.0 / s;
                for v in g.iter_mut() {
                    let t = (*v - z) * inv;
                    let r = if self.nearest_even() {
                        t.round_ties_even()
                    } else {
                        self.round_int(t)
                    };
                    *v = r.clamp(0.0, levels) * s + z;
                }
            }
            Element::Ternary => {
                let s = self.store(given.unwrap_or(clip));
                self.round_clamp(g, s, -1.0, 1.0);
            }
            Element::Float(m) => {
                let m = m.saturating();
                let s = self.float_scale(&m, clip, given);
                if s == 0.0 || !s.is_finite() {
                    g.fill(0.0);
                    return;
                }
                let inv = 1.0 / s;
                if !self.nearest_even() {
                    for v in g.iter_mut() {
                        *v = self.float_element(&m, *v * inv) * s;
                    }
                    return;
                }
                // The fast rounding needs finite v * inv (an infinite inv could make 0 * inf).
                if let (Some(f), true) = (&self.fast_element, inv.is_finite()) {
                    dispatch!(minifloat_fake(g, f, inv, s), scalar: {
                        for v in g.iter_mut() {
                            *v = m.quantize(*v * inv, ELEMENT_ROUNDING) * s;
                        }
                    });
                    return;
                }
                for v in g.iter_mut() {
                    *v = m.quantize(*v * inv, ELEMENT_ROUNDING) * s;
                }
            }
            Element::Codebook(cb) => {
                let s = self.store(given.unwrap_or(clip / cb.max_abs()));
                if s == 0.0 || !s.is_finite() {
                    g.fill(0.0);
                    return;
                }
                let inv = 1.0 / s;
                for v in g.iter_mut() {
                    *v = cb.nearest(*v * inv) * s;
                }
            }
        }
    }
}

impl GroupQuantizer<'_> {
    /// x = clamp(round(x / s), lo, hi) * s in the element rounding mode (zeros for a zero or
    /// non-finite scale).
    fn round_clamp(&self, g: &mut [f32], s: f32, lo: f32, hi: f32) {
        if self.nearest_even() {
            return scale_round_clamp(g, s, lo, hi);
        }
        if s == 0.0 || !s.is_finite() {
            g.fill(0.0);
            return;
        }
        let inv = 1.0 / s;
        for v in g.iter_mut() {
            *v = self.round_int(*v * inv).clamp(lo, hi) * s;
        }
    }
}

/// x = clamp(round(x / s), lo, hi) * s, with zeros for a zero scale. The loop is branch-free so
/// it vectorizes.
fn scale_round_clamp(g: &mut [f32], s: f32, lo: f32, hi: f32) {
    if s == 0.0 || !s.is_finite() {
        g.fill(0.0);
        return;
    }
    let inv = 1.0 / s;
    dispatch!(scale_round_clamp(g, inv, s, lo, hi), scalar: {
        for v in g.iter_mut() {
            *v = (*v * inv).round_ties_even().clamp(lo, hi) * s;
        }
    })
}
