//! Quantization specs: element format x granularity x scale choice, with a compact name
//! (`int4_g128_sym`, `nvfp4`, `mxfp4`, `fp8_e4m3`, `nf4_g64_mse`, ...), and their emulation
//! ("fake quantization": quantize and dequantize in place, in f32).
//!
//! Name grammar (tokens joined by `_`):
//!   element     int<b> (b = 1..8, signed) | uint<b> (unsigned codes with a zero point, = asym)
//!               | ternary | nf4 | fp4bnb | iq4nl | fp8_e4m3 | fp8_e5m2 | fp6_e2m3 | fp6_e3m2
//!               | fp4_e2m1 | nvfp4 | mxfp4 | mxfp6_e2m3 | mxfp6_e3m2 | mxfp8_e4m3 | mxfp8_e5m2
//!   granularity tensor | channel (one scale per row) | g<n> (groups of n along a row)
//!               | b<r>x<c> (2-D tiles of r rows x c columns)
//!   options     sym | asym (integers) | mse (scale by clipping search) | absmax (default)
//!               | scale=f32|f16|bf16|e8m0|e4m3 (how scales are stored, default f16)
//! Defaults: int/codebook/ternary without granularity = per tensor; plain fp8/fp6/fp4 without a
//! granularity = direct cast, no scale; nvfp4 = fp4_e2m1 in groups of 16 with E4M3 scales under
//! an f32 tensor scale; mxfp* = groups of 32 with E8M0 scales (OCP MX v1.0).

use crate::codebook::Codebook;
use crate::minifloat::Minifloat;
use crate::rounding::Rounding;

#[derive(Debug, Clone, PartialEq)]
pub enum Element {
    /// `bits`-bit integers. Symmetric: codes in [-(2^(b-1)), 2^(b-1) - 1] (b = 1: {-1, +1}
    /// sign codes), scale = absmax / (2^(b-1) - 1) (absmax for b = 1). Asymmetric: codes in
    /// [0, 2^b - 1] with a zero offset (the group min).
    Int {
        bits: u32,
        asym: bool,
    },
    /// {-1, 0, +1} times a scale.
    Ternary,
    Float(Minifloat),
    Codebook(Codebook),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// No scale at all (direct cast; only for float elements).
    None,
    Tensor,
    /// One scale per row.
    Channel,
    /// Groups of n consecutive values along a row.
    Group(usize),
    /// Tiles of rows x cols.
    Block2d {
        rows: usize,
        cols: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScaleChoice {
    /// Largest magnitude maps to the largest code.
    AbsMax,
    /// Search clipping ratios 1.0, 0.99, ... 0.60 of absmax for the least squared error.
    Mse,
    /// A fixed scale for every group.
    Given(f32),
}

/// How scales (and zero offsets) are stored, hence rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleFormat {
    F32,
    F16,
    Bf16,
    /// Power of two, chosen per OCP MX: 2^(floor(log2(absmax)) - emax(element)).
    E8M0,
    /// Unsigned E4M3 under an f32 per-tensor scale (NVFP4).
    E4M3,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QuantSpec {
    pub element: Element,
    pub granularity: Granularity,
    pub scale: ScaleChoice,
    pub scale_format: ScaleFormat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError(pub String);

impl std::fmt::Display for SpecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for SpecError {}

fn err<T>(msg: String) -> Result<T, SpecError> {
    Err(SpecError(msg))
}

impl QuantSpec {
    pub fn new(element: Element, granularity: Granularity) -> QuantSpec {
        QuantSpec {
            element,
            granularity,
            scale: ScaleChoice::AbsMax,
            scale_format: ScaleFormat::F16,
        }
    }

    /// The predefined two-level formats.
    pub fn nvfp4() -> QuantSpec {
        QuantSpec {
            scale_format: ScaleFormat::E4M3,
            ..QuantSpec::new(Element::Float(Minifloat::E2M1), Granularity::Group(16))
        }
    }

    pub fn mx(element: Minifloat) -> QuantSpec {
        QuantSpec {
            scale_format: ScaleFormat::E8M0,
            ..QuantSpec::new(Element::Float(element), Granularity::Group(32))
        }
    }

    /// Bits per element of the codes.
    pub fn element_bits(&self) -> f64 {
        match &self.element {
            Element::Int { bits, .. } => *bits as f64,
            Element::Ternary => 3f64.log2(),
            Element::Float(m) => m.bits() as f64,
            Element::Codebook(c) => c.bits() as f64,
        }
    }

    /// Bits per weight including scales (and zero offsets), for a row length `cols` (needed for
    /// per-channel specs; per-tensor scales are counted as free).
    pub fn bits_per_weight(&self, cols: usize) -> f64 {
        let scale_bits = match self.scale_format {
            ScaleFormat::F32 => 32.0,
            ScaleFormat::F16 | ScaleFormat::Bf16 => 16.0,
            ScaleFormat::E8M0 | ScaleFormat::E4M3 => 8.0,
        };
        let per_scale = if matches!(self.element, Element::Int { asym: true, .. }) {
            2.0 * scale_bits
        } else {
            scale_bits
        };
        let group = match self.granularity {
            Granularity::None | Granularity::Tensor => return self.element_bits(),
            Granularity::Channel => cols.max(1),
            Granularity::Group(n) => n,
            Granularity::Block2d { rows, cols } => rows * cols,
        };
        self.element_bits() + per_scale / group as f64
    }

    /// Parse a compact name (see the module docs).
    pub fn parse(name: &str) -> Result<QuantSpec, SpecError> {
        let lower = name.trim().to_ascii_lowercase();
        let toks: Vec<&str> = lower.split('_').filter(|t| !t.is_empty()).collect();
        if toks.is_empty() {
            return err("empty quantization spec".into());
        }
        let mut i = 1;
        let take_fmt = |i: &mut usize, prefix: &str| -> Result<Minifloat, SpecError> {
            let t = toks.get(*i).copied().unwrap_or("");
            let full = format!("{prefix}_{t}");
            if let Some(m) = Minifloat::by_name(&full).filter(|m| m.signed) {
                *i += 1;
                Ok(m)
            } else if prefix == "fp4" || prefix == "mxfp4" {
                Ok(Minifloat::E2M1)
            } else {
                err(format!(
                    "{name}: {prefix} needs a format like e4m3 / e5m2 / e2m3 / e3m2"
                ))
            }
        };
        let mut spec = match toks[0] {
            "nvfp4" => QuantSpec::nvfp4(),
            "mxfp4" => QuantSpec::mx(Minifloat::E2M1),
            "mxfp6" => QuantSpec::mx(take_fmt(&mut i, "fp6")?),
            "mxfp8" => QuantSpec::mx(take_fmt(&mut i, "fp8")?),
            "fp8" => QuantSpec::new(Element::Float(take_fmt(&mut i, "fp8")?), Granularity::None),
            "fp6" => QuantSpec::new(Element::Float(take_fmt(&mut i, "fp6")?), Granularity::None),
            "fp4" => QuantSpec::new(Element::Float(take_fmt(&mut i, "fp4")?), Granularity::None),
            "ternary" => QuantSpec::new(Element::Ternary, Granularity::Tensor),
            "nf4" => QuantSpec::new(Element::Codebook(Codebook::nf4()), Granularity::Tensor),
            "fp4bnb" => QuantSpec::new(Element::Codebook(Codebook::fp4_bnb()), Granularity::Tensor),
            "iq4nl" => QuantSpec::new(Element::Codebook(Codebook::iq4_nl()), Granularity::Tensor),
            t if t.starts_with("uint") || t.starts_with("int") => {
                let asym = t.starts_with('u');
                let bits: u32 = t
                    .trim_start_matches('u')
                    .trim_start_matches("int")
                    .parse()
                    .map_err(|_| SpecError(format!("{name}: bad integer width in {t}")))?;
                if !(1..=8).contains(&bits) {
                    return err(format!("{name}: integer width must be 1..=8, got {bits}"));
                }
                QuantSpec::new(Element::Int { bits, asym }, Granularity::Tensor)
            }
            t => return err(format!("{name}: unknown element format {t}")),
        };
        for &t in &toks[i..] {
            match t {
                "tensor" => spec.granularity = Granularity::Tensor,
                "channel" | "ch" => spec.granularity = Granularity::Channel,
                "sym" | "asym" => match &mut spec.element {
                    Element::Int { asym, .. } => *asym = t == "asym",
                    _ => return err(format!("{name}: {t} applies to integer formats only")),
                },
                "mse" => spec.scale = ScaleChoice::Mse,
                "absmax" => spec.scale = ScaleChoice::AbsMax,
                _ if t.starts_with("scale=") => {
                    spec.scale_format = match &t[6..] {
                        "f32" => ScaleFormat::F32,
                        "f16" => ScaleFormat::F16,
                        "bf16" => ScaleFormat::Bf16,
                        "e8m0" => ScaleFormat::E8M0,
                        "e4m3" => ScaleFormat::E4M3,
                        other => return err(format!("{name}: unknown scale format {other}")),
                    }
                }
                _ if t.starts_with('g') && t[1..].parse::<usize>().is_ok() => {
                    let n: usize = t[1..].parse().unwrap();
                    if n == 0 {
                        return err(format!("{name}: group size must be positive"));
                    }
                    spec.granularity = Granularity::Group(n);
                }
                _ if t.starts_with('b') && t.contains('x') => {
                    let (r, c) = t[1..].split_once('x').unwrap();
                    match (r.parse::<usize>(), c.parse::<usize>()) {
                        (Ok(rows), Ok(cols)) if rows > 0 && cols > 0 => {
                            spec.granularity = Granularity::Block2d { rows, cols }
                        }
                        _ => {
                            return err(format!("{name}: bad 2-D block {t} (want b<rows>x<cols>)"))
                        }
                    }
                }
                _ => return err(format!("{name}: unknown option {t}")),
            }
        }
        if spec.granularity == Granularity::None && !matches!(spec.element, Element::Float(_)) {
            return err(format!(
                "{name}: only float elements can be cast without a scale"
            ));
        }
        Ok(spec)
    }

    /// Fake-quantize `x` in place, as a single row.
    pub fn fake_quantize(&self, x: &mut [f32]) -> Result<(), SpecError> {
        let cols = x.len().max(1);
        self.fake_quantize_matrix(x, cols)
    }

    /// Fake-quantize a row-major matrix with rows of `cols` values in place.
    pub fn fake_quantize_matrix(&self, x: &mut [f32], cols: usize) -> Result<(), SpecError> {
        crate::fake::fake_quantize_matrix(self, x, cols)
    }
}

impl std::fmt::Display for QuantSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let fmt_name = |m: &Minifloat| m.name.to_string();
        let mut parts: Vec<String> = Vec::new();
        let predefined = match (&self.element, self.granularity, self.scale_format) {
            (Element::Float(m), Granularity::Group(16), ScaleFormat::E4M3)
                if *m == Minifloat::E2M1 =>
            {
                parts.push("nvfp4".into());
                true
            }
            (Element::Float(m), Granularity::Group(32), ScaleFormat::E8M0) => {
                parts.push(if *m == Minifloat::E2M1 {
                    "mxfp4".into()
                } else {
                    format!("mx{}", fmt_name(m))
                });
                true
            }
            _ => false,
        };
        if !predefined {
            parts.push(match &self.element {
                Element::Int { bits, .. } => format!("int{bits}"),
                Element::Ternary => "ternary".into(),
                Element::Float(m) => fmt_name(m),
                Element::Codebook(c) => c.name.clone(),
            });
            match self.granularity {
                Granularity::None => {}
                Granularity::Tensor => parts.push("tensor".into()),
                Granularity::Channel => parts.push("channel".into()),
                Granularity::Group(n) => parts.push(format!("g{n}")),
                Granularity::Block2d { rows, cols } => parts.push(format!("b{rows}x{cols}")),
            }
            if let Element::Int { asym, .. } = self.element {
                parts.push(if asym { "asym" } else { "sym" }.into());
            }
        }
        if self.scale == ScaleChoice::Mse {
            parts.push("mse".into());
        }
        let default_scale = if predefined {
            self.scale_format
        } else {
            ScaleFormat::F16
        };
        if self.scale_format != default_scale {
            parts.push(
                match self.scale_format {
                    ScaleFormat::F32 => "scale=f32",
                    ScaleFormat::F16 => "scale=f16",
                    ScaleFormat::Bf16 => "scale=bf16",
                    ScaleFormat::E8M0 => "scale=e8m0",
                    ScaleFormat::E4M3 => "scale=e4m3",
                }
                .into(),
            );
        }
        f.write_str(&parts.join("_"))
    }
}

/// Rounding used for elements in fake quantization (nearest-even everywhere).
pub(crate) const ELEMENT_ROUNDING: Rounding = Rounding::NearestEven;
