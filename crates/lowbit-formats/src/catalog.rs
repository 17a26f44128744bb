//! A list of every format lowbit knows, with its storage cost in bits per weight.

use crate::ggml::GgmlType;
use crate::spec::QuantSpec;

#[derive(Debug, Clone, PartialEq)]
pub struct FormatInfo {
    pub name: String,
    /// Bits per weight including scales (per-tensor scales count as free; per-channel assumes
    /// rows of 4096).
    pub bpw: f64,
    /// `ggml` (llama.cpp block type), `int`, `float`, `codebook`, `mx`, `nvfp4`, `ternary`.
    pub kind: &'static str,
    pub description: String,
}

/// Row length assumed for per-channel costs.
const CHANNEL_COLS: usize = 4096;

/// Every format: llama.cpp types lowbit encodes or decodes, and the emulated specs.
pub fn catalog() -> Vec<FormatInfo> {
    use GgmlType::*;
    let mut out = Vec::new();
    for ty in [
        F32, F16, BF16, Q8_0, Q6_K, Q5_0, Q5_1, Q5_K, Q4_0, Q4_1, Q4_K, IQ4_NL, IQ4_XS, MXFP4,
        Q3_K, Q2_K, TQ2_0, TQ1_0, Q8_K,
    ] {
        let enc = crate::quant::is_quantize_supported(ty);
        let dec = crate::dequant::is_supported(ty);
        out.push(FormatInfo {
            name: ty.name().to_string(),
            bpw: ty.bits_per_weight(),
            kind: "ggml",
            description: format!(
                "llama.cpp {} ({} values, {} bytes per block){}",
                ty.name(),
                ty.block_size(),
                ty.type_size(),
                match (enc, dec) {
                    (true, true) => "; encode + decode",
                    (false, true) => "; decode only",
                    _ => "",
                }
            ),
        });
    }
    let specs: &[(&str, &'static str, &str)] = &[
        (
            "fp8_e4m3",
            "float",
            "FP8 E4M3FN cast (max 448, NaN 0x7F), no scale",
        ),
        (
            "fp8_e5m2",
            "float",
            "FP8 E5M2 cast (IEEE-like, max 57344), no scale",
        ),
        (
            "fp8_e4m3_channel",
            "float",
            "FP8 E4M3 with an f16 scale per row",
        ),
        ("fp6_e2m3_g32", "float", "FP6 E2M3 with an f16 scale per 32"),
        ("fp6_e3m2_g32", "float", "FP6 E3M2 with an f16 scale per 32"),
        ("fp4_e2m1_g32", "float", "FP4 E2M1 with an f16 scale per 32"),
        (
            "mxfp8_e4m3",
            "mx",
            "OCP MX: E4M3 elements, E8M0 scale per 32",
        ),
        (
            "mxfp8_e5m2",
            "mx",
            "OCP MX: E5M2 elements, E8M0 scale per 32",
        ),
        (
            "mxfp6_e2m3",
            "mx",
            "OCP MX: E2M3 elements, E8M0 scale per 32",
        ),
        (
            "mxfp6_e3m2",
            "mx",
            "OCP MX: E3M2 elements, E8M0 scale per 32",
        ),
        ("mxfp4", "mx", "OCP MX: E2M1 elements, E8M0 scale per 32"),
        (
            "nvfp4",
            "nvfp4",
            "E2M1 elements, UE4M3 scale per 16, f32 tensor scale",
        ),
        (
            "int8_channel_sym",
            "int",
            "int8, f16 scale per row (4096 columns)",
        ),
        ("int8_g128_sym", "int", "int8, f16 scale per 128"),
        ("int8_tensor_sym", "int", "int8, one scale per tensor"),
        ("int6_g64_sym", "int", "int6, f16 scale per 64"),
        ("int5_g32_sym", "int", "int5, f16 scale per 32"),
        ("int4_g32_sym", "int", "int4, f16 scale per 32"),
        ("int4_g64_sym", "int", "int4, f16 scale per 64"),
        ("int4_g128_sym", "int", "int4, f16 scale per 128"),
        (
            "int4_g128_asym",
            "int",
            "uint4 with f16 scale and f16 zero offset per 128",
        ),
        (
            "int4_channel_sym",
            "int",
            "int4, f16 scale per row (4096 columns)",
        ),
        ("int3_g64_sym", "int", "int3, f16 scale per 64"),
        (
            "int3_g128_asym",
            "int",
            "uint3 with f16 scale and offset per 128",
        ),
        (
            "int2_g64_asym",
            "int",
            "uint2 with f16 scale and offset per 64",
        ),
        ("int2_g32_sym", "int", "int2, f16 scale per 32"),
        (
            "int1_g128_sym",
            "int",
            "sign bits (+-scale), f16 scale per 128",
        ),
        (
            "ternary_g64",
            "ternary",
            "{-1, 0, 1} (log2 3 bits), f16 scale per 64",
        ),
        (
            "ternary_tensor",
            "ternary",
            "{-1, 0, 1}, one scale per tensor (BitNet-style)",
        ),
        (
            "nf4_g64",
            "codebook",
            "NF4 (bitsandbytes), f16 scale per 64",
        ),
        (
            "nf4_g128",
            "codebook",
            "NF4 (bitsandbytes), f16 scale per 128",
        ),
        (
            "fp4bnb_g64",
            "codebook",
            "bitsandbytes FP4 table, f16 scale per 64",
        ),
        (
            "iq4nl_g32",
            "codebook",
            "IQ4_NL table, f16 scale per 32 (as GGML IQ4_NL)",
        ),
        (
            "int4_b16x16_sym",
            "int",
            "int4 with one f16 scale per 16x16 tile",
        ),
    ];
    for &(name, kind, desc) in specs {
        let spec = QuantSpec::parse(name).expect("catalog names parse");
        out.push(FormatInfo {
            name: name.to_string(),
            bpw: spec.bits_per_weight(CHANNEL_COLS),
            kind,
            description: desc.to_string(),
        });
    }
    out
}
