//! Minifloat encoders: exhaustive code round trips, bit-exact agreement with ml_dtypes casts
//! (fixtures from scripts/gen_minifloat_fixtures.py) and stochastic rounding statistics.

use lowbit_formats::minifloat::Minifloat;
use lowbit_formats::rounding::{Rounding, SplitMix64};
use std::path::PathBuf;

const MODES: [Rounding; 6] = [
    Rounding::NearestEven,
    Rounding::NearestAway,
    Rounding::TowardZero,
    Rounding::Up,
    Rounding::Down,
    Rounding::Stochastic,
];

#[test]
fn every_code_round_trips() {
    for f in Minifloat::named() {
        for code in 0..(1u32 << f.bits()) {
            if f.is_nan(code) {
                assert!(f.decode(code).is_nan(), "{}: {code:#x}", f.name);
                continue;
            }
            let v = f.decode(code);
            for mode in MODES {
                let back = f.encode(v, mode);
                // -0 and +0 are distinct codes and round-trip as such.
                assert_eq!(
                    back, code,
                    "{} code {code:#x} = {v} -> {back:#x} ({mode:?})",
                    f.name
                );
            }
            let mut rng = SplitMix64::new(code as u64);
            assert_eq!(
                f.encode_stochastic(v, &mut rng),
                code,
                "{} stochastic {code:#x}",
                f.name
            );
        }
    }
}

#[test]
fn ranges() {
    assert_eq!(Minifloat::E4M3FN.max_value(), 448.0);
    assert_eq!(Minifloat::E5M2.max_value(), 57344.0);
    assert_eq!(Minifloat::E2M3.max_value(), 7.5);
    assert_eq!(Minifloat::E3M2.max_value(), 28.0);
    assert_eq!(Minifloat::E2M1.max_value(), 6.0);
    assert_eq!(Minifloat::UE8M0.max_value(), 2f64.powi(127));
    assert_eq!(Minifloat::UE8M0.min_positive(), 2f64.powi(-127));
    assert_eq!(Minifloat::UE4M3.max_value(), 448.0);
    assert_eq!(Minifloat::UE5M3.max_value(), 114688.0);
    assert_eq!(Minifloat::E4M3FN.min_positive(), 2f64.powi(-9));
    assert_eq!(Minifloat::E4M3FN.nan_code(), Some(0x7F));
    assert_eq!(Minifloat::E5M2.nan_code(), Some(0x7E));
    assert_eq!(Minifloat::by_name("fp8_e4m3"), Some(Minifloat::E4M3FN));
    // Directed rounding picks the right neighbour.
    let f = Minifloat::E2M1;
    assert_eq!(f.quantize(2.2, Rounding::Up), 3.0);
    assert_eq!(f.quantize(2.9, Rounding::Down), 2.0);
    assert_eq!(f.quantize(-2.2, Rounding::Up), -2.0);
    assert_eq!(f.quantize(-2.2, Rounding::Down), -3.0);
    assert_eq!(f.quantize(2.5, Rounding::NearestEven), 2.0);
    assert_eq!(f.quantize(2.5, Rounding::NearestAway), 3.0);
    assert_eq!(f.quantize(100.0, Rounding::NearestEven), 6.0);
    assert_eq!(
        Minifloat::E4M3FN
            .saturating()
            .quantize(1e6, Rounding::NearestEven),
        448.0
    );
    assert!(Minifloat::E4M3FN
        .quantize(1e6, Rounding::NearestEven)
        .is_nan());
    assert_eq!(
        Minifloat::E5M2.quantize(1e6, Rounding::NearestEven),
        f32::INFINITY
    );
}

#[test]
fn matches_ml_dtypes() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minifloat");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let mut total = 0;
    for e in index["files"].as_array().unwrap() {
        let name = e["format"].as_str().unwrap();
        let f = Minifloat::by_name(name).unwrap_or_else(|| panic!("unknown format {name}"));
        // ml_dtypes rounds E8M0 ties away from zero, everything else to nearest even.
        let mode = if name == "ue8m0" {
            Rounding::NearestAway
        } else {
            Rounding::NearestEven
        };
        let n = e["n"].as_u64().unwrap() as usize;
        let blob = std::fs::read(dir.join(e["file"].as_str().unwrap())).unwrap();
        assert_eq!(blob.len(), 5 * n);
        let mut bad = Vec::new();
        for i in 0..n {
            let b = &blob[4 * i..4 * i + 4];
            let x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let want = blob[4 * n + i] as u32;
            let got = f.encode(x, mode);
            // Known ml_dtypes quirk: it rounds E8M0 on the raw f32 bits, so for f32 *subnormal*
            // inputs in (2^-127, 2^-126) its rounding point is not the midpoint 1.5 * 2^-127.
            // We keep correct nearest rounding there and only require one of the two neighbours.
            if name == "ue8m0" && x.is_subnormal() && x > 0.0 {
                assert!(
                    want == got || want == got + 1,
                    "ue8m0 {x:e}: got {got} want {want}"
                );
                continue;
            }
            if got != want {
                bad.push(format!(
                    "{x:e} ({:#010x}): got {got:#04x} want {want:#04x}",
                    x.to_bits()
                ));
            }
        }
        assert!(
            bad.is_empty(),
            "{name}: {} mismatches, e.g.\n{}",
            bad.len(),
            bad[..bad.len().min(10)].join("\n")
        );
        total += n;
    }
    assert!(total > 10_000);
}

/// Stochastic rounding is unbiased: for x between two codes, the mean of many stochastic
/// roundings equals x. With N draws, the standard error of the mean is at most
/// spacing / (2 sqrt(N)); we allow 5 standard errors.
#[test]
fn stochastic_rounding_is_unbiased() {
    let mut rng = SplitMix64::new(42);
    const N: usize = 20_000;
    for (f, x) in [
        (Minifloat::E4M3FN, 1.3f32),
        (Minifloat::E4M3FN, -0.0123),
        (Minifloat::E2M1, 2.2),
        (Minifloat::E2M1, -0.3),
        (Minifloat::E5M2, 1000.0),
        (Minifloat::E3M2, 0.1),
    ] {
        let lo = f.quantize(x, Rounding::Down) as f64;
        let hi = f.quantize(x, Rounding::Up) as f64;
        let mean = (0..N)
            .map(|_| f.decode(f.encode_stochastic(x, &mut rng)) as f64)
            .sum::<f64>()
            / N as f64;
        let tol = 5.0 * (hi - lo) / (2.0 * (N as f64).sqrt());
        assert!(
            (mean - x as f64).abs() <= tol,
            "{}: mean of stochastic roundings of {x} is {mean} (tolerance {tol})",
            f.name
        );
    }
}
