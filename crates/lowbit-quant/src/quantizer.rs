//! Element quantizers with explicit codes and scales (what a checkpoint stores), following
//! compressed-tensors' conventions so the codes can be written as-is:
//! - integers: signed codes q in [-2^(b-1), 2^(b-1) - 1], value = (q - zero_point) · scale, with an
//!   integer zero point (0 when symmetric). Symmetric scale = absmax / (2^(b-1) - 1) (lowbit's
//!   fake-quantization convention); asymmetric scale = (max(hi, 0) - min(lo, 0)) / (2^b - 1).
//! - FP8 E4M3: value = e4m3(code) · scale, scale = absmax / 448 (or 1 without a scale).
//! - NVFP4 (groups of 16): value = e2m1(code) · (e4m3(s) / global_scale), compressed-tensors'
//!   convention: global_scale = 448 · 6 / absmax(tensor) (f32, per tensor, see
//!   [`Quantizer::for_tensor`]), s = e4m3(absmax(group) / 6 · global_scale). lowbit-formats'
//!   `QTensor` multiplies by the reciprocal instead; dividing as vLLM does keeps the stored
//!   checkpoint bit-exact under compressed-tensors' decompression.
//! - MXFP4 (groups of 32, OCP MX): value = e2m1(code) · 2^(e), e = floor(log2 absmax) − 2, stored
//!   as the E8M0 byte e + 127 (the same rule as `QTensor`).
//!
//! Scales are rounded to their storage format before codes are chosen, so dequantization from
//! the stored tensors reproduces [`QuantizedTensor::dequantize`] exactly.

use anyhow::{bail, Result};
use lowbit_formats::minifloat::Minifloat;
use lowbit_formats::rounding::Rounding;
use lowbit_formats::spec::{Element, Granularity, QuantSpec, ScaleFormat};

/// The element formats lowbit can write as compressed-tensors today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemKind {
    Int {
        bits: u32,
        asym: bool,
    },
    Fp8E4M3,
    /// FP4 E2M1 in groups of 16 with E4M3 group scales under an f32 global scale.
    Nvfp4,
    /// FP4 E2M1 in groups of 32 with E8M0 (power-of-two) group scales.
    Mxfp4,
}

impl ElemKind {
    /// Whether the element is FP4 E2M1 (two codes per byte, compressed-tensors `*-pack-quantized`).
    pub fn is_fp4(self) -> bool {
        matches!(self, ElemKind::Nvfp4 | ElemKind::Mxfp4)
    }
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
    /// NVFP4 only: the tensor's global scale (448 · 6 / absmax), set by [`Quantizer::for_tensor`].
    pub global_scale: Option<f32>,
    /// 8-bit symmetric integers written one code per I8 (compressed-tensors `int-quantized`,
    /// what vLLM's W8A8 kernels read) instead of packed into I32 words (`pack-quantized`, the
    /// weight-only layout). Set for `--act int8` checkpoints ([`Quantizer::set_int_quantized`]).
    pub int_quantized: bool,
}

const E4M3: Minifloat = Minifloat::E4M3FN.saturating();
const E2M1: Minifloat = Minifloat::E2M1.saturating();

/// The E8M0 byte of a power-of-two scale (0 for a zero scale: every code is then 0).
pub fn e8m0_byte(scale: f32) -> u8 {
    if scale <= 0.0 {
        return 0;
    }
    let bits = scale.to_bits();
    let exp = (bits >> 23) & 0xff;
    // 2^-127 is the f32 subnormal 1 << 22; everything else is a normal power of two.
    if exp == 0 {
        0
    } else {
        exp as u8
    }
}

impl Quantizer {
    /// The quantizer for `spec`, or an error saying why the spec cannot be written yet.
    pub fn from_spec(spec: &QuantSpec) -> Result<Quantizer> {
        let kind = match (&spec.element, spec.scale_format, spec.granularity) {
            (Element::Int { bits, asym }, _, _) if (2..=8).contains(bits) => {
                ElemKind::Int { bits: *bits, asym: *asym }
            }
            (Element::Float(m), _, _) if *m == Minifloat::E4M3FN => ElemKind::Fp8E4M3,
            // compressed-tensors recognises NVFP4 by group size 16, MXFP4 by group size 32.
            (Element::Float(m), ScaleFormat::E4M3, Granularity::Group(16)) if *m == Minifloat::E2M1 => {
                ElemKind::Nvfp4
            }
            (Element::Float(m), ScaleFormat::E8M0, Granularity::Group(32)) if *m == Minifloat::E2M1 => {
                ElemKind::Mxfp4
            }
            _ => bail!(
                "scheme {spec}: lowbit quantize writes integer (2..8 bits), fp8_e4m3, nvfp4 (groups of \
                 16) and mxfp4 (groups of 32) weights; {spec} has no compressed-tensors layout in lowbit yet"
            ),
        };
        if spec.scale != lowbit_formats::spec::ScaleChoice::AbsMax {
            bail!("scheme {spec}: only absmax (min/max) scales are supported by lowbit quantize");
        }
        let layout = match (spec.granularity, kind) {
            (Granularity::None, ElemKind::Fp8E4M3) => ScaleLayout::None,
            (Granularity::Tensor, _) => ScaleLayout::Tensor,
            (Granularity::Channel, _) => ScaleLayout::Channel,
            (Granularity::Group(n), ElemKind::Int { .. } | ElemKind::Nvfp4 | ElemKind::Mxfp4) => {
                ScaleLayout::Group(n)
            }
            (g, _) => bail!("scheme {spec}: granularity {g:?} is not supported for this element"),
        };
        if !kind.is_fp4()
            && !matches!(
                spec.scale_format,
                ScaleFormat::F32 | ScaleFormat::F16 | ScaleFormat::Bf16
            )
        {
            bail!("scheme {spec}: scales must be stored as f32, f16 or bf16");
        }
        Ok(Quantizer {
            kind,
            layout,
            scale_format: spec.scale_format,
            global_scale: None,
            int_quantized: false,
        })
    }

    /// Write the weights in compressed-tensors' `int-quantized` layout (unpacked I8): only 8-bit
    /// symmetric integers have it.
    pub fn set_int_quantized(&mut self) -> Result<()> {
        if self.kind
            != (ElemKind::Int {
                bits: 8,
                asym: false,
            })
        {
            bail!("the int-quantized layout holds 8-bit symmetric integers only");
        }
        self.int_quantized = true;
        Ok(())
    }

    /// The quantizer for one tensor `w`: NVFP4 gets the tensor's global scale
    /// (448 · 6 / absmax, 1 for an all-zero tensor, as compressed-tensors); other kinds are
    /// returned unchanged.
    pub fn for_tensor(&self, w: &[f32]) -> Quantizer {
        let mut q = self.clone();
        if self.kind == ElemKind::Nvfp4 {
            let amax = w.iter().fold(0f32, |m, v| m.max(v.abs()));
            let gs = (E4M3.max_value() * E2M1.max_value()) as f32 / amax;
            q.global_scale = Some(if gs.is_finite() && gs > 0.0 { gs } else { 1.0 });
        }
        q
    }

    /// (qmin, qmax) of integer codes.
    pub fn int_range(&self) -> (i32, i32) {
        match self.kind {
            ElemKind::Int { bits, .. } => (-(1 << (bits - 1)), (1 << (bits - 1)) - 1),
            ElemKind::Fp8E4M3 => (0, 255),
            ElemKind::Nvfp4 | ElemKind::Mxfp4 => (0, 15),
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
            // FP4 scales may be 0 (an all-zero group, or an E4M3 scale that underflows): the
            // stored scale code must read back as this value, so there is no fallback to 1.
            ElemKind::Nvfp4 => {
                let gs = self.global_scale.unwrap_or(1.0);
                let code = E4M3.encode(amax / E2M1.max_value() as f32 * gs, Rounding::NearestEven);
                Params {
                    scale: E4M3.decode(code) / gs,
                    zero: 0,
                }
            }
            ElemKind::Mxfp4 => {
                if amax == 0.0 {
                    return Params {
                        scale: 0.0,
                        zero: 0,
                    };
                }
                let emax = E2M1.max_value().log2().floor() as i32;
                let e = (amax.log2().floor() as i32 - emax).clamp(-127, 127);
                Params {
                    scale: lowbit_formats::qtensor::e8m0_value((e + 127) as u8),
                    zero: 0,
                }
            }
        }
    }

    /// The stored byte of a group's scale: the E4M3 code (NVFP4) or E8M0 byte (MXFP4).
    /// `p.scale` reads back exactly from it (e4m3(code) / global_scale rounds to itself).
    pub fn fp4_scale_byte(&self, p: Params) -> u8 {
        match self.kind {
            ElemKind::Nvfp4 => {
                let gs = self.global_scale.unwrap_or(1.0);
                E4M3.encode(p.scale * gs, Rounding::NearestEven) as u8
            }
            _ => e8m0_byte(p.scale),
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
            ElemKind::Nvfp4 | ElemKind::Mxfp4 => {
                if p.scale == 0.0 {
                    0
                } else {
                    E2M1.encode(x / p.scale, Rounding::NearestEven) as u8
                }
            }
        }
    }

    /// The value a code stands for.
    #[inline]
    pub fn value(&self, code: u8, p: Params) -> f32 {
        match self.kind {
            ElemKind::Int { .. } => (code as i8 as i32 - p.zero) as f32 * p.scale,
            ElemKind::Fp8E4M3 => E4M3.decode(code as u32) * p.scale,
            ElemKind::Nvfp4 | ElemKind::Mxfp4 => E2M1.decode(code as u32) * p.scale,
        }
    }

    /// Bits per weight of codes plus scales (and zero points) for rows of `cols`.
    pub fn bits_per_weight(&self, rows: usize, cols: usize) -> f64 {
        let elem = match self.kind {
            ElemKind::Int { bits, .. } => bits as f64,
            ElemKind::Fp8E4M3 => 8.0,
            ElemKind::Nvfp4 | ElemKind::Mxfp4 => 4.0,
        };
        let scale_bits = match self.scale_format {
            ScaleFormat::F32 => 32.0,
            ScaleFormat::E4M3 | ScaleFormat::E8M0 => 8.0,
            _ => 16.0,
        };
        // NVFP4's f32 global scale.
        let tensor_bits = if self.kind == ElemKind::Nvfp4 {
            32.0
        } else {
            0.0
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
        elem + (n_params * (scale_bits + zp_bits) + tensor_bits) / (rows * cols).max(1) as f64
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
    let q = &q.for_tensor(w);
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
        // FP4 only in compressed-tensors' group sizes.
        assert!(Quantizer::from_spec(&QuantSpec::parse("fp4_e2m1_g64").unwrap()).is_err());
        assert!(Quantizer::from_spec(&QuantSpec::parse("int4_g32_mse").unwrap()).is_err());
        assert!(rtn(&quantizer("int4_g32"), &w, 2, 16).is_err());
    }

    fn wave(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 % 1009) as f32 - 504.0) / 97.0 * (1.0 + (i % 13) as f32))
            .collect()
    }

    #[test]
    fn mxfp4_matches_lowbit_formats_qtensor_bit_for_bit() {
        let spec = QuantSpec::parse("mxfp4").unwrap();
        let (rows, cols) = (6, 96);
        let mut w = wave(rows * cols);
        w[32..64].fill(0.0); // an all-zero group
        let t = rtn(&Quantizer::from_spec(&spec).unwrap(), &w, rows, cols).unwrap();
        let qt = lowbit_formats::QTensor::encode(&spec, &w, rows, cols).unwrap();
        let mut reference = vec![0f32; rows * cols];
        qt.decode(&mut reference).unwrap();
        let mine = t.dequantize();
        for (a, b) in mine.iter().zip(&reference) {
            assert_eq!(
                a.to_bits() & 0x7fff_ffff,
                b.to_bits() & 0x7fff_ffff,
                "{a} vs {b}"
            );
        }
        // Scale bytes are QTensor's E8M0 bytes.
        let lowbit_formats::qtensor::StoredScales::E8M0(bytes) = qt.scales() else {
            panic!("mxfp4 has E8M0 scales")
        };
        let mine: Vec<u8> = t
            .params
            .iter()
            .map(|p| t.quantizer.fp4_scale_byte(*p))
            .collect();
        assert_eq!(&mine, bytes);
    }

    #[test]
    fn nvfp4_scales_read_back_from_their_codes_and_match_qtensor_closely() {
        let spec = QuantSpec::parse("nvfp4").unwrap();
        let (rows, cols) = (4, 64);
        let w = wave(rows * cols);
        let t = rtn(&Quantizer::from_spec(&spec).unwrap(), &w, rows, cols).unwrap();
        let gs = t.quantizer.global_scale.unwrap();
        let amax = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(gs, 2688.0 / amax);
        for p in &t.params {
            let code = t.quantizer.fp4_scale_byte(*p);
            assert_eq!(E4M3.decode(code as u32) / gs, p.scale);
        }
        // The same codes and (up to the reciprocal's rounding) the same values as QTensor.
        let qt = lowbit_formats::QTensor::encode(&spec, &w, rows, cols).unwrap();
        let mut reference = vec![0f32; rows * cols];
        qt.decode(&mut reference).unwrap();
        for (a, b) in t.dequantize().iter().zip(&reference) {
            assert!((a - b).abs() <= b.abs() * 1e-6, "{a} vs {b}");
        }
        // An all-zero tensor: global scale 1, zero scales, zero codes.
        let z = rtn(&t.quantizer, &[0.0; 32], 1, 32).unwrap();
        assert_eq!(z.quantizer.global_scale, Some(1.0));
        assert!(z.dequantize().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn fp4_bits_per_weight() {
        let nv = Quantizer::from_spec(&QuantSpec::parse("nvfp4").unwrap()).unwrap();
        let mx = Quantizer::from_spec(&QuantSpec::parse("mxfp4").unwrap()).unwrap();
        assert!((nv.bits_per_weight(1024, 1024) - 4.5).abs() < 1e-3);
        assert_eq!(mx.bits_per_weight(64, 64), 4.25);
    }
}
