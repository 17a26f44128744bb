//! Quantization specs (names, bits per weight), fake quantization, packing and the catalog.

use lowbit_formats::catalog::catalog;
use lowbit_formats::fake::{fake_quantize, fake_quantize_matrix, fake_quantized};
use lowbit_formats::pack::{pack, unpack};
use lowbit_formats::spec::{Element, Granularity, QuantSpec, ScaleFormat};
use lowbit_formats::stats::error_stats;
use lowbit_formats::{dequantize, quantize, GgmlType};
use proptest::prelude::*;

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = lowbit_formats::rounding::SplitMix64::new(seed);
    (0..n)
        .map(|_| (0..4).map(|_| rng.next_unit() as f32).sum::<f32>() - 2.0)
        .collect()
}

#[test]
fn names_round_trip() {
    for info in catalog() {
        if info.kind == "ggml" {
            continue;
        }
        let spec = QuantSpec::parse(&info.name).unwrap();
        let again = QuantSpec::parse(&spec.to_string()).unwrap();
        assert_eq!(spec, again, "{} -> {}", info.name, spec);
    }
    assert_eq!(
        QuantSpec::parse("int4_g128_sym").unwrap().to_string(),
        "int4_g128_sym"
    );
    assert_eq!(
        QuantSpec::parse("uint4_g128").unwrap().to_string(),
        "int4_g128_asym"
    );
    assert_eq!(QuantSpec::parse("NVFP4").unwrap().to_string(), "nvfp4");
    assert_eq!(QuantSpec::parse("mxfp4").unwrap().to_string(), "mxfp4");
    assert_eq!(
        QuantSpec::parse("fp8_e4m3").unwrap().to_string(),
        "fp8_e4m3"
    );
    assert_eq!(
        QuantSpec::parse("nf4_g64_mse").unwrap().to_string(),
        "nf4_g64_mse"
    );
    assert_eq!(
        QuantSpec::parse("int8_channel_scale=bf16")
            .unwrap()
            .to_string(),
        "int8_channel_sym_scale=bf16"
    );
    let s = QuantSpec::parse("int4_b16x16").unwrap();
    assert_eq!(s.granularity, Granularity::Block2d { rows: 16, cols: 16 });
    assert_eq!(
        s.element,
        Element::Int {
            bits: 4,
            asym: false
        }
    );
    for bad in [
        "",
        "int9",
        "int0_g32",
        "int4_g0",
        "fp8",
        "nf4_sym",
        "int4_wat",
        "int4_b4",
        "nf4_scale=xx",
    ] {
        assert!(QuantSpec::parse(bad).is_err(), "{bad:?} should not parse");
    }
}

#[test]
fn bits_per_weight() {
    let bpw = |n: &str| QuantSpec::parse(n).unwrap().bits_per_weight(4096);
    assert_eq!(bpw("int4_g128"), 4.125);
    assert_eq!(bpw("int4_g128_asym"), 4.25);
    assert_eq!(bpw("nvfp4"), 4.5);
    assert_eq!(bpw("mxfp4"), 4.25);
    assert_eq!(bpw("fp8_e4m3"), 8.0);
    assert_eq!(bpw("nf4_g64"), 4.25);
    assert_eq!(bpw("mxfp8_e4m3"), 8.25);
    let c = catalog();
    let get = |n: &str| c.iter().find(|f| f.name == n).unwrap().bpw;
    assert_eq!(get("q4_k"), 4.5);
    assert_eq!(get("q8_0"), 8.5);
    assert_eq!(get("mxfp4"), 4.25);
    assert!(c.iter().all(|f| f.bpw > 0.0 && !f.description.is_empty()));
}

#[test]
fn fake_quantization_errors_shrink_with_bits() {
    let x = data(4096, 1);
    let sqnr = |n: &str| {
        fake_quantized(&QuantSpec::parse(n).unwrap(), &x, 256)
            .unwrap()
            .1
            .sqnr_db
    };
    let mut last = f64::INFINITY;
    for bits in [8, 6, 4, 3, 2] {
        let s = sqnr(&format!("int{bits}_g64_sym"));
        assert!(s < last, "int{bits}: {s} dB not below {last}");
        // ~6 dB per bit; for Gaussian data with absmax scaling at least 6.02*b - 12 dB.
        assert!(s > 6.02 * bits as f64 - 12.0, "int{bits}: {s} dB");
        last = s;
    }
    // MSE search never does worse than absmax.
    for n in [
        "int3_g64_sym",
        "nf4_g64",
        "int4_g128_asym",
        "mxfp4",
        "ternary_g64",
    ] {
        let a = sqnr(n);
        let b = sqnr(&format!("{n}_mse"));
        assert!(b >= a - 1e-9, "{n}: mse {b} < absmax {a}");
    }
    for (n, lo) in [
        ("nvfp4", 18.0),
        ("mxfp4", 16.0),
        ("nf4_g64", 19.0),
        ("fp8_e4m3", 30.0),
        ("iq4nl_g32", 19.0),
        ("int4_b16x16", 14.0),
    ] {
        let s = sqnr(n);
        assert!(s > lo, "{n}: {s} dB");
    }
}

/// The MX emulation of E2M1 with E8M0 scales per 32 chooses the same scale as GGML MXFP4, so on
/// data without exact ties they agree value for value.
#[test]
fn mxfp4_emulation_matches_ggml_mxfp4() {
    let x = data(1024, 5);
    let mut y = x.clone();
    fake_quantize(&QuantSpec::parse("mxfp4").unwrap(), &mut y).unwrap();
    let mut q = vec![0u8; GgmlType::MXFP4.byte_len(x.len()).unwrap()];
    quantize(GgmlType::MXFP4, &x, &mut q).unwrap();
    let mut z = vec![0f32; x.len()];
    dequantize(GgmlType::MXFP4, &q, &mut z).unwrap();
    assert_eq!(y, z);
}

#[test]
fn fake_quantization_is_idempotent_and_checks_input() {
    for n in [
        "int4_g128_sym",
        "int8_channel",
        "nf4_g64",
        "nvfp4",
        "mxfp6_e2m3",
        "fp8_e5m2",
        "int2_g32_asym",
        "int1_g128",
    ] {
        let spec = QuantSpec::parse(n).unwrap();
        let mut y = data(2048, 2);
        fake_quantize_matrix(&spec, &mut y, 512).unwrap();
        let mut z = y.clone();
        fake_quantize_matrix(&spec, &mut z, 512).unwrap();
        let st = error_stats(&y, &z);
        assert!(
            st.rel_rmse < 2e-3,
            "{n}: second pass moved values by {}",
            st.rel_rmse
        );
    }
    let spec = QuantSpec::parse("int4_g32").unwrap();
    assert!(fake_quantize_matrix(&spec, &mut vec![0.0; 100], 64).is_err());
    assert!(fake_quantize(&spec, &mut [1.0, f32::NAN]).is_err());
    let mut zeros = vec![0.0f32; 64];
    fake_quantize(&QuantSpec::parse("nvfp4").unwrap(), &mut zeros).unwrap();
    assert!(zeros.iter().all(|&v| v == 0.0));
    assert_eq!(QuantSpec::nvfp4().scale_format, ScaleFormat::E4M3);
}

#[test]
fn stats() {
    let x = [1.0f32, -2.0, 3.0, 0.0];
    let y = [1.0f32, -2.5, 3.0, 0.1];
    let s = error_stats(&x, &y);
    assert!((s.mse - (0.25 + 0.01) / 4.0).abs() < 1e-7);
    assert!((s.max_abs_err - 0.5).abs() < 1e-7);
    assert!((s.sqnr_db - 10.0 * (14.0f64 / 0.26).log10()).abs() < 1e-4);
    assert_eq!(error_stats(&x, &x).sqnr_db, f64::INFINITY);
}

/// Element rounding modes of the emulation API. Stochastic rounding is unbiased: the mean of N
/// stochastic roundings of x between grid points g0 < x < g1 has standard error at most
/// (g1 - g0) / (2 sqrt(N)); we allow 5 standard errors (a false failure has odds below 1e-6).
#[test]
fn rounding_modes_and_unbiased_stochastic_rounding() {
    use lowbit_formats::fake::fake_quantize_matrix_rounding as fq;
    use lowbit_formats::rounding::Rounding;
    use lowbit_formats::spec::ScaleChoice;
    const N: usize = 40_960;
    const S8: f32 = 1.0 / 128.0;
    let mean = |v: &[f32]| v.iter().map(|&a| a as f64).sum::<f64>() / v.len() as f64;

    // int8 with a given scale 1/128 (exact in the f16 scale format); x = 0.1234 and -0.0567.
    let int8 = QuantSpec {
        scale: ScaleChoice::Given(S8),
        ..QuantSpec::parse("int8_g32_sym").unwrap()
    };
    for x in [0.1234f32, -0.0567] {
        let mut y = vec![x; N];
        fq(&int8, &mut y, 64, Rounding::Stochastic, 7).unwrap();
        let tol = 5.0 * S8 as f64 / (2.0 * (N as f64).sqrt());
        assert!(
            (mean(&y) - x as f64).abs() <= tol,
            "int8 stochastic mean {} for {x}",
            mean(&y)
        );
        let lo = (x / S8).floor() * S8;
        assert!(y.iter().all(|&v| v == lo || v == lo + S8));
    }

    // NVFP4 and MXFP4: one 6.0 per group pins the group scale to 1 (E2M1 max 6), the other
    // values 2.3 lie between the E2M1 values 2 and 3.
    for (name, g) in [("nvfp4", 16), ("mxfp4", 32)] {
        let spec = QuantSpec::parse(name).unwrap();
        let mut y: Vec<f32> = (0..N).map(|i| if i % g == 0 { 6.0 } else { 2.3 }).collect();
        fq(&spec, &mut y, 512, Rounding::Stochastic, 11).unwrap();
        let vals: Vec<f32> = y
            .iter()
            .enumerate()
            .filter(|(i, _)| i % g != 0)
            .map(|(_, &v)| v)
            .collect();
        let tol = 5.0 * 1.0 / (2.0 * (vals.len() as f64).sqrt());
        assert!(
            (mean(&vals) - 2.3).abs() <= tol,
            "{name} stochastic mean {}",
            mean(&vals)
        );
        assert!(vals
            .iter()
            .all(|&v| (v - 2.0).abs() < 1e-5 || (v - 3.0).abs() < 1e-5));
    }

    // Reproducible from the seed, different for another seed.
    let x = data(4096, 3);
    let run = |seed| {
        let mut y = x.clone();
        fq(
            &QuantSpec::parse("int4_g32").unwrap(),
            &mut y,
            256,
            Rounding::Stochastic,
            seed,
        )
        .unwrap();
        y
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));

    // Deterministic modes against the exact grid of a given scale 0.5 (int4: -8..7).
    let int4 = QuantSpec {
        scale: ScaleChoice::Given(0.5),
        ..QuantSpec::parse("int4_g32_sym").unwrap()
    };
    let x: Vec<f32> = vec![
        0.25, -0.25, 0.75, -0.75, 0.3, -0.3, 1.0, -1.2, 3.3, -3.9, 0.0, 2.6,
    ];
    let with = |mode| {
        let mut y = x.clone();
        fq(&int4, &mut y, x.len(), mode, 0).unwrap();
        y
    };
    let up = with(Rounding::Up);
    let down = with(Rounding::Down);
    let zero = with(Rounding::TowardZero);
    let away = with(Rounding::NearestAway);
    let even = with(Rounding::NearestEven);
    for i in 0..x.len() {
        assert!(
            up[i] >= x[i] && up[i] - x[i] < 0.5,
            "up {} -> {}",
            x[i],
            up[i]
        );
        assert!(
            down[i] <= x[i] && x[i] - down[i] < 0.5,
            "down {} -> {}",
            x[i],
            down[i]
        );
        assert!(zero[i].abs() <= x[i].abs() && (x[i] - zero[i]).abs() < 0.5);
        assert!((away[i] - x[i]).abs() <= 0.25 && (even[i] - x[i]).abs() <= 0.25);
    }
    // Ties (x / s = +-0.5, +-1.5): away from zero vs to even.
    assert_eq!(&away[..4], &[0.5, -0.5, 1.0, -1.0]);
    assert_eq!(&even[..4], &[0.0, -0.0, 1.0, -1.0]);
    // Nearest-even through this entry point is the plain fake quantization, bit for bit.
    let mut a = data(1024, 9);
    let mut b = a.clone();
    let spec = QuantSpec::parse("nvfp4").unwrap();
    fq(&spec, &mut a, 256, Rounding::NearestEven, 1).unwrap();
    fake_quantize_matrix(&spec, &mut b, 256).unwrap();
    assert_eq!(a, b);
    // Codebooks only round to nearest.
    let mut y = data(64, 1);
    assert!(fq(
        &QuantSpec::parse("nf4_g64").unwrap(),
        &mut y,
        64,
        Rounding::Stochastic,
        1
    )
    .is_err());
}

proptest! {
    #[test]
    fn pack_round_trips(bits in 1u32..=8, raw in proptest::collection::vec(any::<u8>(), 0..200)) {
        let codes: Vec<u8> = raw.iter().map(|c| c & ((1u16 << bits) - 1) as u8).collect();
        let words = pack(&codes, bits).unwrap();
        prop_assert_eq!(words.len(), (codes.len() * bits as usize).div_ceil(32));
        prop_assert_eq!(unpack(&words, bits, codes.len()).unwrap(), codes.clone());
        // Bit i*b + k of the stream is bit k of code i.
        for (i, &c) in codes.iter().enumerate() {
            for k in 0..bits as usize {
                let bit = i * bits as usize + k;
                prop_assert_eq!((words[bit / 32] >> (bit % 32)) & 1, ((c >> k) & 1) as u32);
            }
        }
    }
}
