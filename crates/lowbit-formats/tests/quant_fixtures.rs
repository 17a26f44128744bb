//! Byte-for-byte comparison of lowbit's encoders with gguf-py's `gguf.quants.quantize` and (for
//! IQ4_XS, IQ4_NL and the k-quants, which gguf-py cannot encode) with llama.cpp's reference
//! quantizers from PyPI's llama-cpp-python, and
//! round-trip properties of the k-quant / IQ4_NL / IQ4_XS encoders (no Python reference exists for them).
//!
//! Fixtures: `scripts/gen_quant_fixtures.py` (see its docstring for the cases).

use lowbit_formats::quant::is_quantize_supported;
use lowbit_formats::{dequantize, quantize, quantize_rows, FormatError, GgmlType};
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant")
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn encoders_match_gguf_py() {
    let index_path = dir().join("index.json");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).expect("quant/index.json")).unwrap();
    let mut checked = 0;
    let mut failures = Vec::new();
    for c in index["cases"].as_array().unwrap() {
        let ty = GgmlType::from_id(c["type_id"].as_u64().unwrap() as u32).unwrap();
        let blob = std::fs::read(dir().join(c["file"].as_str().unwrap())).unwrap();
        let n = c["elements"].as_u64().unwrap() as usize;
        let fo = c["f32_offset"].as_u64().unwrap() as usize;
        let qo = c["quant_offset"].as_u64().unwrap() as usize;
        let ql = c["quant_len"].as_u64().unwrap() as usize;
        let x = f32s(&blob[fo..fo + 4 * n]);
        let expected = &blob[qo..qo + ql];
        let mut got = vec![0u8; ql];
        quantize(ty, &x, &mut got).unwrap();
        if ty == GgmlType::IQ4_NL {
            // llama.cpp writes the codes of a block whose scale is 0 (all |x| < 1e-15) from an
            // uninitialized buffer; lowbit writes zeros. Both decode to zeros: skip those codes.
            for (g, e) in got.chunks_exact_mut(18).zip(expected.chunks_exact(18)) {
                if g[..2] == [0, 0] && e[..2] == [0, 0] {
                    g.copy_from_slice(e);
                }
            }
        }
        if got != expected {
            let first = got.iter().zip(expected).position(|(a, b)| a != b).unwrap();
            failures.push(format!(
                "{ty} case {}: first differing byte {first} (block {}): got {:#04x}, want {:#04x}",
                c["case"],
                first / ty.type_size(),
                got[first],
                expected[first]
            ));
        }
        checked += 1;
    }
    assert!(checked >= 170, "only {checked} cases");
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Deterministic normal-ish data (sum of uniforms) without extra dependencies.
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let mut next = || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|_| (0..4).map(|_| next()).sum::<f32>() - 2.0)
        .collect()
}

fn gemma_rows() -> Option<Vec<f32>> {
    std::fs::read(dir().join("gemma_rows.f32"))
        .ok()
        .map(|b| f32s(&b))
}

fn rel_rmse(x: &[f32], y: &[f32]) -> f64 {
    let (mut e, mut s) = (0f64, 0f64);
    for (a, b) in x.iter().zip(y) {
        e += ((a - b) as f64).powi(2);
        s += (*a as f64).powi(2);
    }
    (e / s.max(1e-30)).sqrt()
}

/// dequant(quant(x)) error bounds (relative RMSE on Gaussian data and on Gemma rows) and
/// quant(dequant(q)) stability: re-encoding decoded values gives back values at least as close.
#[test]
fn roundtrip_all_encoders() {
    use GgmlType::*;
    // Upper bounds on relative RMSE for Gaussian data; typical values are about 60-70% of these.
    // Measured: q8_0 .0052, q6_k .017, q5_0 .041-.047, q5_1 .037, q5_k .035, q4_0 .083-.091,
    // q4_1 .077, q4_k .069-.072, iq4_nl .076-.080, mxfp4 .112-.116, q3_k .146-.155,
    // q2_k .283-.303, tq*_0 .79-.83 (ternary with absmax scale), bf16 .0017, f16 .0002.
    let bounds = [
        (Q8_0, 0.0065),
        (Q6_K, 0.021),
        (Q5_0, 0.058),
        (Q5_1, 0.048),
        (Q5_K, 0.045),
        (Q4_0, 0.115),
        (Q4_1, 0.098),
        (Q4_K, 0.09),
        (IQ4_NL, 0.10),
        (IQ4_XS, 0.10),
        (MXFP4, 0.145),
        (Q3_K, 0.195),
        (Q2_K, 0.38),
        (TQ2_0, 0.85),
        (TQ1_0, 0.85),
        (BF16, 0.0021),
        (F16, 0.00027),
        (F32, 0.0),
    ];
    let mut inputs = vec![("gauss", data(4096, 7))];
    if let Some(g) = gemma_rows() {
        inputs.push(("gemma", g));
    }
    for (ty, bound) in bounds {
        assert!(is_quantize_supported(ty));
        for (name, x) in &inputs {
            let mut q = vec![0u8; ty.byte_len(x.len()).unwrap()];
            quantize(ty, x, &mut q).unwrap();
            let mut y = vec![0f32; x.len()];
            dequantize(ty, &q, &mut y).unwrap();
            let err = rel_rmse(x, &y);
            assert!(
                err <= bound,
                "{ty} on {name}: relative RMSE {err:.5} > {bound}"
            );
            // Stability: quantizing the dequantized values must not move them further away.
            let mut q2 = vec![0u8; q.len()];
            quantize(ty, &y, &mut q2).unwrap();
            let mut y2 = vec![0f32; x.len()];
            dequantize(ty, &q2, &mut y2).unwrap();
            let drift = rel_rmse(&y, &y2);
            assert!(
                drift <= bound * 0.25 + 1e-7,
                "{ty} on {name}: re-quantization drift {drift:.5}"
            );
        }
    }
}

#[test]
fn special_blocks() {
    use GgmlType::*;
    for ty in [
        Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, MXFP4, TQ1_0,
        TQ2_0,
    ] {
        // All-zero input decodes to zeros.
        let x = vec![0f32; 256];
        let mut q = vec![0u8; ty.byte_len(256).unwrap()];
        quantize(ty, &x, &mut q).unwrap();
        let mut y = vec![1f32; 256];
        dequantize(ty, &q, &mut y).unwrap();
        assert!(y.iter().all(|&v| v == 0.0), "{ty}: zeros");
        // One outlier survives with its sign and rough magnitude.
        let mut x = data(256, 3).iter().map(|v| v * 0.01).collect::<Vec<_>>();
        x[77] = -5.0;
        quantize(ty, &x, &mut q).unwrap();
        dequantize(ty, &q, &mut y).unwrap();
        assert!(
            (y[77] + 5.0).abs() <= 1.0,
            "{ty}: outlier decoded as {}",
            y[77]
        );
        assert!(y.iter().all(|v| v.is_finite()), "{ty}: finite");
    }
}

#[test]
fn errors_not_panics() {
    let x = vec![0f32; 64];
    let mut q = vec![0u8; 36];
    assert_eq!(
        quantize(GgmlType::Q8_0, &x, &mut q),
        Err(FormatError::WrongByteLength {
            ty: GgmlType::Q8_0,
            expected: 68,
            got: 36
        })
    );
    assert_eq!(
        quantize(GgmlType::Q4_K, &x, &mut q),
        Err(FormatError::NotBlockAligned {
            ty: GgmlType::Q4_K,
            elements: 64
        })
    );
    assert_eq!(
        quantize(GgmlType::IQ2_XXS, &vec![0f32; 256], &mut vec![0u8; 66]),
        Err(FormatError::Unsupported(GgmlType::IQ2_XXS))
    );
    // Rows: two rows of 64 Q8_0 values == the whole buffer at once.
    let x = data(128, 9);
    let mut a = vec![0u8; 136];
    let mut b = vec![0u8; 136];
    quantize_rows(GgmlType::Q8_0, &x, 64, &mut a).unwrap();
    quantize(GgmlType::Q8_0, &x, &mut b).unwrap();
    assert_eq!(a, b);
    assert!(quantize_rows(GgmlType::Q8_0, &x, 48, &mut a).is_err());
    assert!(quantize_rows(GgmlType::Q8_0, &x[..96], 64, &mut a).is_err());
}

/// Gemma's ffn_down rows were written by llama.cpp as Q6_K; re-encoding their decoded values with
/// our Q6_K encoder must reproduce them exactly (the encoder finds the same scales and codes).
#[test]
fn q6_k_reproduces_llama_cpp_blocks() {
    let Some(x) = gemma_rows() else { return };
    let mut q = vec![0u8; GgmlType::Q6_K.byte_len(x.len()).unwrap()];
    quantize(GgmlType::Q6_K, &x, &mut q).unwrap();
    let mut y = vec![0f32; x.len()];
    dequantize(GgmlType::Q6_K, &q, &mut y).unwrap();
    assert_eq!(x, y);
}

/// IQ4_XS (llama.cpp's reference encoder, 4.25 bpw): no worse than IQ4_NL (4.5 bpw, one f16
/// scale per 32) on Gaussian data and Gemma rows, since it searches 15 scales per sub-block.
/// Re-encoding decoded values is not exactly the identity (the scale search lands on a slightly
/// different super-block scale), but it keeps most values bit-identical and moves the rest by
/// much less than the quantization error itself.
#[test]
fn iq4_xs_against_iq4_nl() {
    use GgmlType::*;
    let mut inputs = vec![("gauss", data(8192, 11))];
    if let Some(g) = gemma_rows() {
        inputs.push(("gemma", g));
    }
    let roundtrip = |ty: GgmlType, x: &[f32]| {
        let mut q = vec![0u8; ty.byte_len(x.len()).unwrap()];
        quantize(ty, x, &mut q).unwrap();
        let mut y = vec![0f32; x.len()];
        dequantize(ty, &q, &mut y).unwrap();
        y
    };
    for (name, x) in &inputs {
        let y = roundtrip(IQ4_XS, x);
        let y_nl = roundtrip(IQ4_NL, x);
        let (e_xs, e_nl) = (rel_rmse(x, &y), rel_rmse(x, &y_nl));
        assert!(e_xs <= e_nl, "{name}: iq4_xs {e_xs:.5} > iq4_nl {e_nl:.5}");
        for (ty, y) in [(IQ4_XS, &y), (IQ4_NL, &y_nl)] {
            let y2 = roundtrip(ty, y);
            let same = y.iter().zip(&y2).filter(|(a, b)| a == b).count();
            let drift = rel_rmse(y, &y2);
            eprintln!(
                "{name} {ty}: err {:.5}, re-encode keeps {same}/{} values, drift {drift:.5}",
                rel_rmse(x, y),
                y.len()
            );
        }
        let y2 = roundtrip(IQ4_XS, &y);
        let same = y.iter().zip(&y2).filter(|(a, b)| a == b).count();
        assert!(
            same * 10 >= y.len() * 9,
            "{name}: re-encoding kept only {same} values"
        );
        assert!(
            rel_rmse(&y, &y2) <= e_xs * 0.25,
            "{name}: re-encoding drift"
        );
    }
}

/// The fast (min/max, no search) Q4_K encoder writes valid Q4_K blocks: they decode close to
/// the input (a bit worse than llama.cpp's searched encoder), zeros stay zeros, an outlier
/// survives, non-finite input does not panic, and bad lengths are errors.
#[test]
fn q4_k_fast_round_trip() {
    use lowbit_formats::quantize_q4_k_fast;
    let mut inputs = vec![("gauss", data(8192, 13))];
    if let Some(g) = gemma_rows() {
        inputs.push(("gemma", g));
    }
    for (name, x) in &inputs {
        let mut q = vec![0u8; GgmlType::Q4_K.byte_len(x.len()).unwrap()];
        quantize_q4_k_fast(x, &mut q).unwrap();
        let mut y = vec![0f32; x.len()];
        dequantize(GgmlType::Q4_K, &q, &mut y).unwrap();
        let err = rel_rmse(x, &y);
        quantize(GgmlType::Q4_K, x, &mut q).unwrap();
        dequantize(GgmlType::Q4_K, &q, &mut y).unwrap();
        let searched = rel_rmse(x, &y);
        eprintln!("{name}: q4_k fast {err:.5}, searched {searched:.5}");
        assert!(
            err <= searched * 1.25 && err < 0.1,
            "{name}: fast q4_k error {err:.5} (searched {searched:.5})"
        );
    }
    let mut q = vec![0u8; 144];
    let mut y = vec![1f32; 256];
    quantize_q4_k_fast(&[0.0; 256], &mut q).unwrap();
    dequantize(GgmlType::Q4_K, &q, &mut y).unwrap();
    assert!(y.iter().all(|&v| v == 0.0));
    let mut x: Vec<f32> = data(256, 5).iter().map(|v| v * 0.01).collect();
    x[200] = -3.0;
    x[9] = 2.0;
    quantize_q4_k_fast(&x, &mut q).unwrap();
    dequantize(GgmlType::Q4_K, &q, &mut y).unwrap();
    assert!(
        (y[200] + 3.0).abs() < 0.2 && (y[9] - 2.0).abs() < 0.2,
        "{} {}",
        y[200],
        y[9]
    );
    x[3] = f32::NAN;
    x[4] = f32::INFINITY;
    quantize_q4_k_fast(&x, &mut q).unwrap();
    assert_eq!(
        quantize_q4_k_fast(&x[..100], &mut q),
        Err(FormatError::NotBlockAligned {
            ty: GgmlType::Q4_K,
            elements: 100
        })
    );
    assert!(quantize_q4_k_fast(&x, &mut q[..143]).is_err());
}
