//! QTensor: decode(encode(x)) must equal fake quantization bit for bit, at every SIMD level.

use lowbit_formats::fake::fake_quantize_matrix;
use lowbit_formats::qtensor::StoredScales;
use lowbit_formats::rounding::SplitMix64;
use lowbit_formats::simd::{self, Level};
use lowbit_formats::spec::QuantSpec;
use lowbit_formats::QTensor;
use proptest::prelude::*;

const SUPPORTED: &[&str] = &[
    "int4_g128_sym",
    "int4_g128_asym",
    "int8_channel",
    "int8_channel_asym",
    "int8_g128_sym",
    "int8_tensor",
    "int3_g32_sym",
    "int3_g32_asym",
    "int2_g16_asym",
    "int1_g8",
    "int6_g64_sym_scale=bf16",
    "int4_g32_sym_scale=f32",
    "nvfp4",
    "mxfp4",
    "mxfp6_e2m3",
    "mxfp6_e3m2",
    "mxfp8_e4m3",
    "mxfp8_e5m2",
    "fp4_e2m1_g32",
    "fp8_e4m3_channel",
    "fp8_e4m3_tensor_scale=f32",
];

/// Gaussian-ish data with exact zeros, whole zero groups, outliers and tiny values.
fn data(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    let mut x: Vec<f32> = (0..rows * cols)
        .map(|i| {
            let g = (0..4).map(|_| rng.next_unit() as f32).sum::<f32>() - 2.0;
            match i % 97 {
                0 => 0.0,
                1 => -0.0,
                13 => g * 300.0,
                29 => g * 1e-30,
                _ => g * 0.02,
            }
        })
        .collect();
    // One all-zero stretch (whole groups of every size used here) and one tiny-valued stretch.
    let n = x.len();
    if n >= 512 {
        x[128..256].fill(0.0);
        x[256..384].iter_mut().for_each(|v| *v *= 1e-6);
    }
    x
}

fn levels() -> Vec<Level> {
    Level::ALL
        .into_iter()
        .filter(|&l| l <= simd::hardware())
        .collect()
}

/// Bitwise equality, except that integer codes have no -0 (a fake -0.0 decodes as +0.0).
fn check(name: &str, x: &[f32], rows: usize, cols: usize) {
    let spec = QuantSpec::parse(name).unwrap();
    let is_int = name.starts_with("int") || name.starts_with("uint");
    for level in levels() {
        simd::with_level(level, || {
            let mut want = x.to_vec();
            fake_quantize_matrix(&spec, &mut want, cols).unwrap();
            let q = QTensor::encode(&spec, x, rows, cols).unwrap();
            let mut got = vec![f32::NAN; x.len()];
            q.decode(&mut got).unwrap();
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                let same = a.to_bits() == b.to_bits() || (is_int && *a == 0.0 && *b == 0.0);
                assert!(
                    same,
                    "{name} {level:?} {rows}x{cols}: value {i} (x = {}) decodes to {a:e}, fake gives {b:e}",
                    x[i]
                );
            }
        });
    }
}

#[test]
fn round_trip_equals_fake_quant() {
    for name in SUPPORTED {
        // Row length a multiple of every group size, and one that leaves short last groups.
        check(name, &data(8, 512, 1), 8, 512);
        check(name, &data(5, 200, 2), 5, 200);
        check(name, &data(1, 37, 3), 1, 37);
    }
}

#[test]
fn storage_layout() {
    let x = data(4, 256, 7);
    let q = QTensor::encode(&QuantSpec::parse("int4_g128_sym").unwrap(), &x, 4, 256).unwrap();
    assert_eq!(q.codes().len(), 4 * 256 / 8);
    assert!(matches!(q.scales(), StoredScales::F16(v) if v.len() == 8));
    assert!(q.zeros().is_none() && q.tensor_scale().is_none());
    assert_eq!(q.storage_bytes(), 512 + 16);

    let q = QTensor::encode(&QuantSpec::parse("uint4_g128").unwrap(), &x, 4, 256).unwrap();
    assert!(matches!(q.zeros(), Some(StoredScales::F16(v)) if v.len() == 8));

    let q = QTensor::encode(&QuantSpec::nvfp4(), &x, 4, 256).unwrap();
    assert!(matches!(q.scales(), StoredScales::E4M3(v) if v.len() == 64));
    assert!(q.tensor_scale().unwrap() > 0.0);
    assert_eq!(q.storage_bytes(), 512 + 64 + 4);

    let q = QTensor::encode(&QuantSpec::parse("mxfp4").unwrap(), &x, 4, 256).unwrap();
    assert!(matches!(q.scales(), StoredScales::E8M0(v) if v.len() == 32));
    assert!(q.tensor_scale().is_none());

    // Empty tensors are fine.
    let q = QTensor::encode(&QuantSpec::nvfp4(), &[], 0, 16).unwrap();
    q.decode(&mut []).unwrap();
}

#[test]
fn errors() {
    let x = data(2, 64, 9);
    for name in [
        "int4_g64_mse",
        "int4_b2x32",
        "nf4_g64",
        "ternary_g64",
        "fp8_e4m3",
        "int4_g64_scale=e8m0",
        "int4_g64_scale=e4m3",
        "int1_g64_asym",
    ] {
        let spec = QuantSpec::parse(name).unwrap();
        let e = QTensor::encode(&spec, &x, 2, 64).unwrap_err();
        assert!(e.0.contains("does not support"), "{name}: {e}");
    }
    let spec = QuantSpec::parse("int4_g32_sym").unwrap();
    assert!(QTensor::encode(&spec, &x, 3, 64).is_err());
    assert!(QTensor::encode(&spec, &x, usize::MAX, 2).is_err());
    let mut bad = x.clone();
    bad[5] = f32::NAN;
    assert!(QTensor::encode(&spec, &bad, 2, 64)
        .unwrap_err()
        .0
        .contains("non-finite"));
    let q = QTensor::encode(&spec, &x, 2, 64).unwrap();
    assert!(q.decode(&mut vec![0.0; 127]).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn random_shapes(
        spec_i in 0..SUPPORTED.len(),
        rows in 1usize..6,
        cols in 1usize..300,
        seed in any::<u64>(),
    ) {
        check(SUPPORTED[spec_i], &data(rows, cols, seed), rows, cols);
    }
}
