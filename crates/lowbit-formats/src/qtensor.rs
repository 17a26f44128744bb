//! Stored (really quantized) tensors for [`QuantSpec`] formats: packed element codes plus
//! scales in the spec's scale format, and decoding back to f32.
//!
//! Supported: integer elements (`int<b>` sym, `uint<b>` / `_asym`) per tensor, per channel or
//! in groups; float elements (NVFP4 with E4M3 scales under an f32 tensor scale, MXFP4/6/8 with
//! E8M0 scales, or plain f32/f16/bf16 scales) per tensor, per channel or in groups. Absmax
//! scales only. Other specs return an error.
//!
//! The arithmetic repeats `fake.rs` step for step, so `decode(encode(x))` equals
//! `fake_quantize(spec, x)` bit for bit (integers have no -0: a fake-quantized -0.0 decodes
//! as +0.0). `tests/qtensor.rs` checks this.
//!
//! Layout: groups are taken in row-major order (whole tensor / one per row / `n` consecutive
//! values of a row, the last group of a row possibly shorter); `scales` (and `zeros`) hold
//! one entry per group in that order. `codes` holds one code per value, row-major, as one
//! bit stream in the `pack.rs` layout. Integer codes are two's complement in `bits` bits
//! (sym) or unsigned offsets from the zero point (asym); float codes are the minifloat's bits.

use crate::minifloat::Minifloat;
use crate::pack;
use crate::rounding::Rounding;
use crate::simd::dispatch;
use crate::simd::kernels::FastMinifloat;
use crate::spec::{Element, Granularity, QuantSpec, ScaleChoice, ScaleFormat, SpecError};

/// Per-group scales (or zero points) as stored.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredScales {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
    Bf16(Vec<half::bf16>),
    /// Biased exponent byte e + 127 of the power of two 2^e, e in [-127, 127].
    E8M0(Vec<u8>),
    /// Unsigned E4M3 codes, multiplied by the tensor scale.
    E4M3(Vec<u8>),
}

impl StoredScales {
    pub fn len(&self) -> usize {
        match self {
            StoredScales::F32(v) => v.len(),
            StoredScales::F16(v) => v.len(),
            StoredScales::Bf16(v) => v.len(),
            StoredScales::E8M0(v) | StoredScales::E4M3(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of storage.
    pub fn bytes(&self) -> usize {
        match self {
            StoredScales::F32(v) => v.len() * 4,
            StoredScales::F16(v) => v.len() * 2,
            StoredScales::Bf16(v) => v.len() * 2,
            StoredScales::E8M0(v) | StoredScales::E4M3(v) => v.len(),
        }
    }

    fn with_capacity(format: ScaleFormat, n: usize) -> StoredScales {
        match format {
            ScaleFormat::F32 => StoredScales::F32(Vec::with_capacity(n)),
            ScaleFormat::F16 => StoredScales::F16(Vec::with_capacity(n)),
            ScaleFormat::Bf16 => StoredScales::Bf16(Vec::with_capacity(n)),
            ScaleFormat::E8M0 => StoredScales::E8M0(Vec::with_capacity(n)),
            ScaleFormat::E4M3 => StoredScales::E4M3(Vec::with_capacity(n)),
        }
    }

    /// Store `s` (f32/f16/bf16 only: E8M0 and E4M3 are pushed as codes) and return the value
    /// it reads back as.
    fn push_plain(&mut self, s: f32) -> f32 {
        match self {
            StoredScales::F32(v) => {
                v.push(s);
                s
            }
            StoredScales::F16(v) => {
                let h = half::f16::from_f32(s);
                v.push(h);
                h.to_f32()
            }
            StoredScales::Bf16(v) => {
                let h = half::bf16::from_f32(s);
                v.push(h);
                h.to_f32()
            }
            StoredScales::E8M0(_) | StoredScales::E4M3(_) => {
                unreachable!("push_plain is only called for f32/f16/bf16 scales")
            }
        }
    }

    /// The value of entry `i` (times `tensor_scale` for E4M3).
    fn value(&self, i: usize, tensor_scale: f32) -> f32 {
        match self {
            StoredScales::F32(v) => v[i],
            StoredScales::F16(v) => v[i].to_f32(),
            StoredScales::Bf16(v) => v[i].to_f32(),
            StoredScales::E8M0(v) => e8m0_value(v[i]),
            StoredScales::E4M3(v) => Minifloat::UE4M3.decode(v[i] as u32) * tensor_scale,
        }
    }
}

/// 2^(byte - 127), exactly (byte 0 is the subnormal 2^-127).
pub fn e8m0_value(byte: u8) -> f32 {
    if byte == 0 {
        f32::from_bits(1 << 22)
    } else {
        f32::from_bits((byte as u32) << 23)
    }
}

/// A quantized row-major matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct QTensor {
    spec: QuantSpec,
    rows: usize,
    cols: usize,
    codes: Vec<u32>,
    scales: StoredScales,
    zeros: Option<StoredScales>,
    tensor_scale: Option<f32>,
}

/// What kind of element the codes are (resolved once from the spec).
enum Kind {
    IntSym {
        bits: u32,
    },
    IntAsym {
        bits: u32,
    },
    Float {
        m: Minifloat,
        fast: Option<FastMinifloat>,
    },
}

impl QTensor {
    pub fn spec(&self) -> &QuantSpec {
        &self.spec
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Packed codes (see the module docs for the layout).
    pub fn codes(&self) -> &[u32] {
        &self.codes
    }
    pub fn scales(&self) -> &StoredScales {
        &self.scales
    }
    /// Zero points (asymmetric integers), in the scale format.
    pub fn zeros(&self) -> Option<&StoredScales> {
        self.zeros.as_ref()
    }
    /// The f32 second-level scale (E4M3 scales, i.e. NVFP4).
    pub fn tensor_scale(&self) -> Option<f32> {
        self.tensor_scale
    }
    /// Bytes of storage: codes, scales, zeros and the tensor scale.
    pub fn storage_bytes(&self) -> usize {
        self.codes.len() * 4
            + self.scales.bytes()
            + self.zeros.as_ref().map_or(0, |z| z.bytes())
            + self.tensor_scale.map_or(0, |_| 4)
    }

    fn kind(spec: &QuantSpec) -> Result<(Kind, u32), SpecError> {
        let unsupported = |what: &str| {
            Err(SpecError(format!(
                "{spec}: QTensor does not support {what}"
            )))
        };
        if spec.scale != ScaleChoice::AbsMax {
            return unsupported("non-absmax scale choices (mse, given)");
        }
        match spec.granularity {
            Granularity::Tensor | Granularity::Channel | Granularity::Group(_) => {}
            Granularity::None => return unsupported("unscaled casts"),
            Granularity::Block2d { .. } => return unsupported("2-D blocks"),
        }
        match &spec.element {
            Element::Int { bits, asym } => {
                if !(1..=8).contains(bits) {
                    return unsupported("integer widths outside 1..=8");
                }
                if matches!(spec.scale_format, ScaleFormat::E8M0 | ScaleFormat::E4M3) {
                    return unsupported("E8M0/E4M3 scales for integer elements");
                }
                if *asym {
                    if *bits == 1 {
                        return unsupported("1-bit asymmetric integers");
                    }
                    Ok((Kind::IntAsym { bits: *bits }, *bits))
                } else {
                    Ok((Kind::IntSym { bits: *bits }, *bits))
                }
            }
            Element::Float(m) => {
                if m.bits() > 8 || !m.signed {
                    return unsupported("float elements wider than 8 bits or unsigned");
                }
                let m = m.saturating();
                Ok((
                    Kind::Float {
                        m,
                        fast: FastMinifloat::new(&m),
                    },
                    m.bits(),
                ))
            }
            Element::Ternary => unsupported("ternary elements"),
            Element::Codebook(_) => unsupported("codebook elements"),
        }
    }

    /// Group boundaries (start, len) in storage order.
    fn groups(spec: &QuantSpec, rows: usize, cols: usize, mut f: impl FnMut(usize, usize)) {
        let n = rows * cols;
        if n == 0 {
            return;
        }
        match spec.granularity {
            Granularity::Tensor => f(0, n),
            Granularity::Channel => (0..rows).for_each(|r| f(r * cols, cols)),
            Granularity::Group(g) => {
                for r in 0..rows {
                    let mut c = 0;
                    while c < cols {
                        let len = g.min(cols - c);
                        f(r * cols + c, len);
                        c += len;
                    }
                }
            }
            // Rejected by `kind`.
            Granularity::None | Granularity::Block2d { .. } => {}
        }
    }

    /// Quantize a row-major `rows` x `cols` matrix.
    pub fn encode(
        spec: &QuantSpec,
        x: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<QTensor, SpecError> {
        let (kind, bits) = Self::kind(spec)?;
        match rows.checked_mul(cols) {
            Some(n) if n == x.len() => {}
            _ => {
                return Err(SpecError(format!(
                    "{spec}: {} values do not form {rows} rows of {cols}",
                    x.len()
                )))
            }
        }
        if let Some(v) = x.iter().find(|v| !v.is_finite()) {
            return Err(SpecError(format!(
                "{spec}: input holds a non-finite value ({v})"
            )));
        }
        let ngroups = match spec.granularity {
            Granularity::Tensor => usize::from(!x.is_empty()),
            Granularity::Channel => rows,
            Granularity::Group(g) => rows * cols.div_ceil(g),
            _ => 0,
        };
        let mut scales = StoredScales::with_capacity(spec.scale_format, ngroups);
        let mut zeros = matches!(kind, Kind::IntAsym { .. })
            .then(|| StoredScales::with_capacity(spec.scale_format, ngroups));
        // NVFP4's second level, as fake.rs computes it.
        let tensor_scale = (spec.scale_format == ScaleFormat::E4M3).then(|| {
            let amax = absmax(x);
            let elem_max = match &kind {
                Kind::Float { m, .. } => m.max_value() as f32,
                _ => 1.0,
            };
            if amax > 0.0 {
                amax / (Minifloat::UE4M3.max_value() as f32 * elem_max)
            } else {
                1.0
            }
        });
        let mut codes = vec![0u8; x.len()];
        let mut scaled = Vec::new();
        let ue4m3 = Minifloat::UE4M3.saturating();
        Self::groups(spec, rows, cols, |start, len| {
            let g = &x[start..start + len];
            let out = &mut codes[start..start + len];
            match &kind {
                Kind::IntSym { bits } => {
                    let clip = absmax(g);
                    if *bits == 1 {
                        scales.push_plain(clip);
                        for (c, &v) in out.iter_mut().zip(g) {
                            *c = u8::from(v < 0.0);
                        }
                        return;
                    }
                    let qmax = ((1i32 << (bits - 1)) - 1) as f32;
                    let s = scales.push_plain(clip / qmax);
                    if s == 0.0 || !s.is_finite() {
                        return; // codes stay 0, the decoder writes zeros
                    }
                    let inv = 1.0 / s;
                    let mask = ((1u32 << bits) - 1) as i32;
                    for (c, &v) in out.iter_mut().zip(g) {
                        *c = (round_small(v * inv).clamp(-qmax - 1.0, qmax) as i32 & mask) as u8;
                    }
                }
                Kind::IntAsym { bits } => {
                    let levels = ((1u32 << bits) - 1) as f32;
                    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
                    for &v in g {
                        lo = lo.min(v);
                        hi = hi.max(v);
                    }
                    // fake.rs multiplies by the clipping ratio, 1.0 for absmax.
                    let (lo, hi) = (lo * 1.0, hi * 1.0);
                    let s = scales.push_plain((hi - lo) / levels);
                    let z = zeros.as_mut().expect("asym has zeros").push_plain(lo);
                    if s == 0.0 || !s.is_finite() {
                        return; // the decoder writes z
                    }
                    let inv = 1.0 / s;
                    for (c, &v) in out.iter_mut().zip(g) {
                        *c = round_small((v - z) * inv).clamp(0.0, levels) as u8;
                    }
                }
                Kind::Float { m, fast } => {
                    let clip = absmax(g) * 1.0;
                    let s = match &mut scales {
                        // OCP MX: shared exponent floor(log2(amax)) - emax of the element.
                        StoredScales::E8M0(v) => {
                            if clip > 0.0 {
                                let emax = (m.max_value() as f32).log2().floor() as i32;
                                let e = (clip.log2().floor() as i32 - emax).clamp(-127, 127);
                                v.push((e + 127) as u8);
                                e8m0_value((e + 127) as u8)
                            } else {
                                v.push(0);
                                0.0
                            }
                        }
                        StoredScales::E4M3(v) => {
                            let ts = tensor_scale.expect("E4M3 has a tensor scale");
                            let code = ue4m3
                                .encode(clip / m.max_value() as f32 / ts, Rounding::NearestEven);
                            v.push(code as u8);
                            ue4m3.decode(code) * ts
                        }
                        plain => plain.push_plain(clip / m.max_value() as f32),
                    };
                    if s == 0.0 || !s.is_finite() {
                        return; // codes stay 0 (+0.0)
                    }
                    let inv = 1.0 / s;
                    match (fast, inv.is_finite()) {
                        (Some(f), true) => {
                            scaled.clear();
                            scaled.extend(g.iter().map(|&v| v * inv));
                            dispatch!(minifloat_encode(f, &scaled, out), scalar: {
                                for (c, &v) in out.iter_mut().zip(&scaled) {
                                    *c = m.encode(v, Rounding::NearestEven) as u8;
                                }
                            });
                        }
                        _ => {
                            for (c, &v) in out.iter_mut().zip(g) {
                                *c = m.encode(v * inv, Rounding::NearestEven) as u8;
                            }
                        }
                    }
                }
            }
        });
        let packed = pack::pack(&codes, bits).map_err(|e| SpecError(format!("{spec}: {e}")))?;
        Ok(QTensor {
            spec: spec.clone(),
            rows,
            cols,
            codes: packed,
            scales,
            zeros,
            tensor_scale,
        })
    }

    /// Dequantize into `out` (rows x cols values).
    pub fn decode(&self, out: &mut [f32]) -> Result<(), SpecError> {
        let n = self.rows * self.cols;
        if out.len() != n {
            return Err(SpecError(format!(
                "{}: decoding {} x {} needs {n} output values, got {}",
                self.spec,
                self.rows,
                self.cols,
                out.len()
            )));
        }
        let (kind, bits) = Self::kind(&self.spec)?;
        // Value of each code before scaling.
        let table: Vec<f32> = (0..1u32 << bits)
            .map(|c| match &kind {
                Kind::IntSym { bits: 1 } => {
                    if c == 1 {
                        -1.0
                    } else {
                        1.0
                    }
                }
                // Sign-extend the two's-complement code.
                Kind::IntSym { bits } => (((c << (32 - bits)) as i32) >> (32 - bits)) as f32,
                Kind::IntAsym { .. } => c as f32,
                Kind::Float { m, .. } => m.decode(c),
            })
            .collect();
        let ts = self.tensor_scale.unwrap_or(1.0);
        // E4M3 scales through a table of their 256 values (the same values `value` computes).
        let e4m3: Option<Vec<f32>> = match &self.scales {
            StoredScales::E4M3(_) => {
                Some((0..256u32).map(|c| Minifloat::UE4M3.decode(c)).collect())
            }
            _ => None,
        };
        let scale_at = |gi: usize| match (&self.scales, &e4m3) {
            (StoredScales::E4M3(v), Some(lut)) => lut[v[gi] as usize] * ts,
            _ => self.scales.value(gi, ts),
        };
        // Looked up once: groups can be as small as 16 values.
        let level = crate::simd::current();
        let mut gi = 0;
        Self::groups(&self.spec, self.rows, self.cols, |start, len| {
            let s = scale_at(gi);
            let o = &mut out[start..start + len];
            match &kind {
                Kind::IntSym { bits: 1 } => {
                    // ±s even for a zero or infinite scale, as fake.rs writes.
                    for (k, v) in o.iter_mut().enumerate() {
                        let c = code_at(&self.codes, start + k, 1);
                        *v = if c == 1 { -s } else { s };
                    }
                }
                Kind::IntAsym { .. } => {
                    let z = self.zeros.as_ref().map_or(0.0, |z| z.value(gi, ts));
                    if s == 0.0 || !s.is_finite() {
                        o.fill(z);
                    } else {
                        for (k, v) in o.iter_mut().enumerate() {
                            *v = table[code_at(&self.codes, start + k, bits)] * s + z;
                        }
                    }
                }
                Kind::IntSym { .. } | Kind::Float { .. } => {
                    if s == 0.0 || !s.is_finite() {
                        o.fill(0.0);
                    } else {
                        decode_group(&self.codes, start, bits, &table, s, o, level);
                    }
                }
            }
            gi += 1;
        });
        Ok(())
    }
}

/// out[k] = table[code(start + k)] * s, with fast paths for 4- and 8-bit codes (4-bit codes
/// through the AVX2 / AVX-512 table permutes of `simd::decode`, bit-identical).
#[inline]
fn decode_group(
    words: &[u32],
    start: usize,
    bits: u32,
    table: &[f32],
    s: f32,
    out: &mut [f32],
    level: crate::simd::Level,
) {
    match bits {
        8 => {
            for (k, v) in out.iter_mut().enumerate() {
                let i = start + k;
                let c = (words[i >> 2] >> ((i & 3) * 8)) & 0xFF;
                *v = table[c as usize] * s;
            }
        }
        4 => {
            let table: &[f32; 16] = table[..16].try_into().unwrap();
            use crate::simd::Level;
            match level {
                // SAFETY: `level` comes from simd::current(), never above what the CPU has.
                #[cfg(target_arch = "x86_64")]
                Level::Avx512 => unsafe {
                    crate::simd::x86::avx512::decode4(words, start, table, s, out)
                },
                #[cfg(target_arch = "x86_64")]
                Level::Avx2 => unsafe {
                    crate::simd::x86::avx2::decode4(words, start, table, s, out)
                },
                _ => {
                    for (k, v) in out.iter_mut().enumerate() {
                        let i = start + k;
                        let c = (words[i >> 3] >> ((i & 7) * 4)) & 0xF;
                        *v = table[c as usize & 0xF] * s;
                    }
                }
            }
        }
        _ => {
            for (k, v) in out.iter_mut().enumerate() {
                *v = table[code_at(words, start + k, bits)] * s;
            }
        }
    }
}

/// Code `i` of a `pack.rs` bit stream of `bits`-bit codes.
#[inline(always)]
fn code_at(words: &[u32], i: usize, bits: u32) -> usize {
    let bit = i * bits as usize;
    let (w, off) = (bit / 32, (bit % 32) as u32);
    let lo = words[w] as u64;
    let hi = if off + bits > 32 {
        words[w + 1] as u64
    } else {
        0
    };
    (((lo | (hi << 32)) >> off) & ((1u64 << bits) - 1)) as usize
}

/// round_ties_even for |x| < 2^22 by the 1.5 * 2^23 trick (adds vectorize; the libm call does
/// not at the baseline ISA). Larger |x| come out within a few units of x, which the callers'
/// clamps to at most 255 absorb.
#[inline(always)]
fn round_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    (x + MAGIC) - MAGIC
}

fn absmax(x: &[f32]) -> f32 {
    dispatch!(absmax(x), scalar: x.iter().fold(0.0f32, |m, v| m.max(v.abs())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e8m0_matches_powi() {
        for b in 0u8..=254 {
            assert_eq!(
                e8m0_value(b).to_bits(),
                2f32.powi(b as i32 - 127).to_bits(),
                "{b}"
            );
        }
    }

    #[test]
    fn round_small_matches_round_ties_even() {
        for i in -4000..4000 {
            let x = i as f32 * 0.25 + 0.125 * (i % 3) as f32;
            assert_eq!(round_small(x), x.round_ties_even(), "{x}");
        }
    }
}
