//! Element quantizers with explicit codes and scales (what a checkpoint stores), following
//! compressed-tensors' conventions so the codes can be written as-is:
//! - integers: signed codes q in [-2^(b-1), 2^(b-1) - 1], value = (q - zero_point) · scale, with an
//!   integer zero point (0 when symmetric). Symmetric scale = absmax / (2^(b-1) - 1) (lowbit's
//!   fake-quantization convention); asymmetric scale = (max(hi, 0) - min(lo, 0)) / (2^b - 1).
//! - FP8 E4M3: value = e4m3(code) · scale, scale = absmax / 448 (or 1 without a scale).
//! Scales are rounded to their storage format before codes are chosen, so dequantization from
//! the stored tensors reproduces [`QuantizedTensor::dequantize`] exactly.

use anyhow::{bail, Result};
use lowbit_formats::minifloat::Minifloat;
use lowbit_formats::rounding::Rounding;
use lowbit_formats::spec::{Element, Granularity, QuantSpec, ScaleFormat};

/// The element formats lowbit can write as compressed-tensors today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemKind {
    Int { bits: u32, asym: bool },
    Fp8E4M3,
}

/// Where scales are shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleLayout {
    /// No scale (FP8 direct cast; written as a tensor scale of 1).
    None,
    Tensor,
    Channel,
    Group(usize),
}

/// One (scale, zero point) pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub scale: f32,
    pub zero: i32,
}

/// A quantizer derived from a [`QuantSpec`].
#[derive(Debug, Clone, PartialEq)]
pub struct Quantizer {
    pub kind: ElemKind,
    pub layout: ScaleLayout,
    pub scale_format: ScaleFormat,
}

const E4M3: Minifloat = Minifloat::E4M3FN.saturating();

impl Quantizer {
    /// The quantizer for `spec`, or an error saying why the spec cannot be written yet.
    pub fn from_spec(spec: &QuantSpec) -> Result<Quantizer> {
        let kind = match &spec.element {
            Element::Int { bits, asym } if (2..=8).contains(bits) => ElemKind::Int { bits: *bits, asym: *asym },
            Element::Float(m) if *m == Minifloat::E4M3FN => ElemKind::Fp8E4M3,
            _ => bail!(
                "scheme {spec}: lowbit quantize writes integer (2..8 bits) and fp8_e4m3 weights today; \
                 {spec} has no compressed-tensors layout in lowbit yet"
            ),
        };
        if spec.scale != lowbit_formats::spec::ScaleChoice::AbsMax {
            bail!("scheme {spec}: only absmax (min/max) scales are supported by lowbit quantize");
        }
        let layout = match (spec.granularity, kind) {
            (Granularity::None, ElemKind::Fp8E4M3) => ScaleLayout::None,
            (Granularity::Tensor, _) => ScaleLayout::Tensor,
            (Granularity::Channel, _) => ScaleLayout::Channel,
            (Granularity::Group(n), ElemKind::Int { .. }) => ScaleLayout::Group(n),
            (g, _) => bail!("scheme {spec}: granularity {g:?} is not supported for this element"),
        };
        if !matches!(
            spec.scale_format,
            ScaleFormat::F32 | ScaleFormat::F16 | ScaleFormat::Bf16
        ) {
            bail!("scheme {spec}: scales must be stored as f32, f16 or bf16");
        }
        Ok(Quantizer {
            kind,
            layout,
            scale_format: spec.scale_format,
        })
    }

    /// (qmin, qmax) of integer codes.
    pub fn int_range(&self) -> (i32, i32) {
        match self.kind {
            ElemKind::Int { bits, .. } => (-(1 << (bits - 1)), (1 << (bits - 1)) - 1),
            ElemKind::Fp8E4M3 => (0, 255),
        }
    }

    /// Group size along a row of `cols` values, and groups per row. Errors when the row does not
    /// split into whole groups.
    pub fn groups(&self, cols: usize) -> Result<(usize, usize)> {
        match self.layout {
            ScaleLayout::Group(n) => {
                if cols % n != 0 {
                    bail!("rows of {cols} values do not split into groups of {n}");
                }
                Ok((n, cols / n))
            }
            _ => Ok((cols, 1)),
        }
    }

    fn store(&self, s: f32) -> f32 {
        match self.scale_format {
            ScaleFormat::F16 => half::f16::from_f32(s).to_f32(),
            ScaleFormat::Bf16 => half::bf16::from_f32(s).to_f32(),
            _ => s,
        }
    }

    /// Parameters for a set of values (a group, a row or the whole tensor).
    pub fn params(&self, values: &[f32]) -> Params {
        let (lo, hi) = values
            .iter()
            .fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        let amax = hi.max(-lo);
        match self.kind {
            ElemKind::Int { bits, asym: false } => {
                let qmax = ((1 << (bits - 1)) - 1) as f32;
                Params {
                    scale: self.nonzero(self.store(amax / qmax)),
                    zero: 0,
                }
            }
            ElemKind::Int { bits, asym: true } => {
                let (qmin, qmax) = self.int_range();
                let levels = ((1u32 << bits) - 1) as f32;
                let scale = self.nonzero(self.store((hi - lo) / levels));
                let zero = ((qmin as f32) - lo / scale)
                    .round_ties_even()
                    .clamp(qmin as f32, qmax as f32) as i32;
                Params { scale, zero }
            }
            ElemKind::Fp8E4M3 => {
                if self.layout == ScaleLayout::None {
                    return Params {
                        scale: 1.0,
                        zero: 0,
                    };
                }
                Params {
                    scale: self.nonzero(self.store(amax / E4M3.max_value() as f32)),
                    zero: 0,
                }
            }
        }
    }

    /// An all-zero group (or one whose scale underflows) gets scale 1: every code is then 0.
    fn nonzero(&self, s: f32) -> f32 {
        if s > 0.0 && s.is_finite() {
            s
        } else {
            1.0
        }
    }

    /// The stored code of `x` (integers as two's-complement bytes, FP8 as its bit pattern).
    #[inline]
    pub fn code(&self, x: f32, p: Params) -> u8 {
        match self.kind {
            ElemKind::Int { .. } => {
                let (qmin, qmax) = self.int_range();
                let q = ((x * (1.0 / p.scale)).round_ties_even() + p.zero as f32)
                    .clamp(qmin as f32, qmax as f32);
                (q as i32) as i8 as u8
            }
            ElemKind::Fp8E4M3 => E4M3.encode(x / p.scale, Rounding::NearestEven) as u8,
        }
    }

    /// The value a code stands for.
    #[inline]
    pub fn value(&self, code: u8, p: Params) -> f32 {
        match self.kind {
            ElemKind::Int { .. } => (code as i8 as i32 - p.zero) as f32 * p.scale,
            ElemKind::Fp8E4M3 => E4M3.decode(code as u32) * p.scale,
        }
    }

    /// Bits per weight of codes plus scales (and zero points) for rows of `cols`.
    pub fn bits_per_weight(&self, rows: usize, cols: usize) -> f64 {
        let elem = match self.kind {
            ElemKind::Int { bits, .. } => bits as f64,
            ElemKind::Fp8E4M3 => 8.0,
        };
        let scale_bits = match self.scale_format {
            ScaleFormat::F32 => 32.0,
            _ => 16.0,
        };
        let zp_bits = match self.kind {
            ElemKind::Int { bits, asym: true } => bits as f64,
            _ => 0.0,
        };
        let n_params = match self.layout {
            ScaleLayout::None | ScaleLayout::Tensor => 1.0,
            ScaleLayout::Channel => rows as f64,
            ScaleLayout::Group(n) => (rows * cols.div_ceil(n)) as f64,
        };
        elem + n_params * (scale_bits + zp_bits) / (rows * cols).max(1) as f64
    }
}

/// A quantized `rows × cols` weight: codes and per-(row, group) parameters.
#[derive(Debug, Clone)]
pub struct QuantizedTensor {
    pub quantizer: Quantizer,
    pub rows: usize,
    pub cols: usize,
    /// Row-major codes, one byte each (see [`Quantizer::code`]).
    pub codes: Vec<u8>,
    /// `rows × groups` parameters (for tensor and no-scale layouts every entry is the same).
    pub params: Vec<Params>,
    pub group_size: usize,
    pub groups: usize,
}

impl QuantizedTensor {
    pub fn param(&self, r: usize, c: usize) -> Params {
        self.params[r * self.groups + c / self.group_size]
    }

    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for r in 0..self.rows {
            for c in 0..self.cols {
                out[r * self.cols + c] = self
                    .quantizer
                    .value(self.codes[r * self.cols + c], self.param(r, c));
            }
        }
        out
    }
}

/// Parameters for every (row, group) of `w` from its current values.
pub fn all_params(
    q: &Quantizer,
    w: &[f32],
    rows: usize,
    cols: usize,
) -> Result<(Vec<Params>, usize, usize)> {
    let (gs, groups) = q.groups(cols)?;
    let params = match q.layout {
        ScaleLayout::None | ScaleLayout::Tensor => vec![q.params(w); rows],
        _ => (0..rows)
            .flat_map(|r| (0..groups).map(move |g| (r, g)))
            .map(|(r, g)| q.params(&w[r * cols + g * gs..r * cols + (g + 1) * gs]))
            .collect(),
    };
    Ok((params, gs, groups))
}

/// Round-to-nearest quantization of a row-major `rows × cols` matrix.
pub fn rtn(q: &Quantizer, w: &[f32], rows: usize, cols: usize) -> Result<QuantizedTensor> {
    if w.len() != rows * cols {
        bail!("{} values do not form a {rows} × {cols} matrix", w.len());
    }
    if let Some(v) = w.iter().find(|v| !v.is_finite()) {
        bail!("weight holds a non-finite value ({v})");
    }
    let (params, group_size, groups) = all_params(q, w, rows, cols)?;
    let mut codes = vec![0u8; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            codes[r * cols + c] = q.code(w[r * cols + c], params[r * groups + c / group_size]);
        }
    }
    Ok(QuantizedTensor {
        quantizer: q.clone(),
        rows,
        cols,
        codes,
        params,
        group_size,
        groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quantizer(name: &str) -> Quantizer {
        Quantizer::from_spec(&QuantSpec::parse(name).unwrap()).unwrap()
    }

    #[test]
    fn int_codes_match_fake_quantization_when_symmetric() {
        let w: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
            .collect();
        for name in ["int4_g32_sym", "int8_channel_sym", "int3_g64_sym"] {
            let spec = QuantSpec::parse(name).unwrap();
            let t = rtn(&quantizer(name), &w, 4, 64).unwrap();
            let mut fake = w.clone();
            spec.fake_quantize_matrix(&mut fake, 64).unwrap();
            assert_eq!(t.dequantize(), fake, "{name}");
        }
    }

    #[test]
    fn asym_zero_point_is_an_integer_in_range() {
        let w: Vec<f32> = (0..64).map(|i| 0.3 + i as f32 / 50.0).collect();
        let t = rtn(&quantizer("uint4_g16"), &w, 2, 32).unwrap();
        for p in &t.params {
            assert!((-8..=7).contains(&p.zero));
        }
        let d = t.dequantize();
        let max_err = w
            .iter()
            .zip(&d)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            max_err <= t.params.iter().map(|p| p.scale).fold(0f32, f32::max) * 0.51,
            "{max_err}"
        );
    }

    #[test]
    fn fp8_roundtrip_and_unsupported_specs() {
        let w: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) * 0.37).collect();
        let t = rtn(&quantizer("fp8_e4m3_channel"), &w, 2, 16).unwrap();
        let d = t.dequantize();
        for (a, b) in w.iter().zip(&d) {
            assert!((a - b).abs() <= a.abs() / 16.0 + 1e-6, "{a} {b}");
        }
        assert!(Quantizer::from_spec(&QuantSpec::parse("nf4_g64").unwrap()).is_err());
        assert!(Quantizer::from_spec(&QuantSpec::parse("int4_g32_mse").unwrap()).is_err());
        assert!(rtn(&quantizer("int4_g32"), &w, 2, 16).is_err());
    }
}
