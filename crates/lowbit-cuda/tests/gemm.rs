//! cuBLASLt GEMMs (bf16, FP8 E4M3 W8A8) and the on-device E4M3 quantizer against CPU references.
//! Each test prints "SKIP: no CUDA device" and passes when no driver or device exists (CI). With a
//! device, libcublasLt must load (LOWBIT_CUBLASLT_LIB names the file if it is not on the search
//! path).

use half::bf16;
use lowbit_cuda::cublaslt::{check_gemm_shape, CublasLt, GemmType, E4M3_MAX};
use lowbit_cuda::reference::{rel_l2, Rng};
use lowbit_cuda::CudaBackend;
use lowbit_formats::minifloat::Minifloat;
use lowbit_formats::rounding::Rounding;

/// OCP E4M3FN with overflow clamped to +-448, the conversion the quantize kernels implement.
const E4M3: Minifloat = Minifloat::E4M3FN.saturating();

fn setup() -> Option<(CudaBackend, CublasLt)> {
    let be = match CudaBackend::new(0) {
        Ok(b) => b,
        Err(e) => {
            println!("SKIP: no CUDA device ({e})");
            return None;
        }
    };
    // A device without cuBLASLt is a setup problem on a GPU machine: fail loudly.
    let lt = CublasLt::new(&be).unwrap_or_else(|e| panic!("{e}"));
    println!("device: {} ({})", be.device_name(), be.arch());
    Some((be, lt))
}

/// c[i][j] = sum_l a[i][l] * b[j][l] in f64 (a [m][k], b [n][k]).
fn gemm_ref(a: &[f64], b: &[f64], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        let ar = &a[i * k..(i + 1) * k];
        for j in 0..n {
            let br = &b[j * k..(j + 1) * k];
            c[i * n + j] = ar.iter().zip(br).map(|(x, y)| x * y).sum();
        }
    }
    c
}

fn to_bf16_bits(v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| bf16::from_f32(x).to_bits()).collect()
}

fn bf16_bits_to_f32(v: &[u16]) -> Vec<f32> {
    v.iter().map(|&b| bf16::from_bits(b).to_f32()).collect()
}

fn e4m3_codes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .map(|&x| E4M3.encode(x, Rounding::NearestEven) as u8)
        .collect()
}

fn decode_scaled(codes: &[u8], scale: f32) -> Vec<f64> {
    codes
        .iter()
        .map(|&c| E4M3.decode(c as u32) as f64 * scale as f64)
        .collect()
}

/// Output buffer poisoned with bf16 NaN so an unwritten element fails.
fn poisoned(be: &CudaBackend, n: usize) -> cudarc::driver::CudaSlice<u16> {
    be.upload(&vec![0x7fc0u16; n]).unwrap()
}

/// Non-square shapes, m = 1 and 16 (decode / small batch), m = 4096 (prefill).
const SHAPES: [(usize, usize, usize); 6] = [
    (1, 256, 512),
    (16, 384, 1024),
    (48, 128, 4096),
    (200, 512, 256),
    (512, 1024, 128),
    (4096, 256, 512),
];

#[test]
fn shape_errors_without_a_device() {
    assert!(check_gemm_shape(GemmType::Fp8E4m3, 16, 64, 24, 16 * 24, 64 * 24, 16 * 64).is_err());
    assert!(check_gemm_shape(GemmType::Fp8E4m3, 16, 24, 32, 16 * 32, 24 * 32, 16 * 24).is_err());
    assert!(check_gemm_shape(GemmType::Fp8E4m3, 1, 16, 16, 16, 256, 16).is_ok());
    assert!(check_gemm_shape(GemmType::Bf16, 0, 16, 16, 0, 256, 0).is_err());
    assert!(check_gemm_shape(GemmType::Bf16, 4, 16, 16, 63, 256, 64).is_err());
}

#[test]
fn bf16_gemm_matches_cpu() {
    let Some((be, lt)) = setup() else { return };
    let mut rng = Rng::new(11);
    for (m, n, k) in SHAPES.into_iter().chain([(77, 200, 136)]) {
        let a = to_bf16_bits(&rng.vec(m * k, 1.0));
        let b = to_bf16_bits(&rng.vec(n * k, 1.0 / (k as f32).sqrt()));
        let (ad, bd) = (be.upload(&a).unwrap(), be.upload(&b).unwrap());
        let mut cd = poisoned(&be, m * n);
        lt.gemm_bf16(&ad, &bd, &mut cd, m, n, k).unwrap();
        let c = bf16_bits_to_f32(&be.download(&cd).unwrap());
        let f64s =
            |v: &[u16]| -> Vec<f64> { bf16_bits_to_f32(v).iter().map(|&x| x as f64).collect() };
        let want = gemm_ref(&f64s(&a), &f64s(&b), m, n, k);
        let err = rel_l2(&c, &want);
        println!("bf16 GEMM m={m} n={n} k={k}: rel L2 {err:.2e}");
        assert!(
            err <= 1e-2,
            "bf16 GEMM m={m} n={n} k={k}: rel L2 {err:.3e} > 1e-2"
        );
    }
}

#[test]
fn fp8_gemm_matches_cpu() {
    let Some((be, mut lt)) = setup() else { return };
    let mut rng = Rng::new(12);
    let (a_scale, b_scale) = (0.75f32 / E4M3_MAX, 0.02f32 / E4M3_MAX);
    let a_sd = be.upload(&[a_scale]).unwrap();
    let b_sd = be.upload(&[b_scale]).unwrap();
    for fast in [false, true] {
        lt.set_fp8_fast_accum(fast);
        for (m, n, k) in SHAPES {
            // Codes spread over the whole E4M3 range (subnormals to 448, both signs).
            let a = e4m3_codes(&rng.vec(m * k, E4M3_MAX));
            let b = e4m3_codes(&rng.vec(n * k, E4M3_MAX));
            let (ad, bd) = (be.upload(&a).unwrap(), be.upload(&b).unwrap());
            let mut cd = poisoned(&be, m * n);
            lt.gemm_fp8_e4m3(&ad, &a_sd, &bd, &b_sd, &mut cd, m, n, k)
                .unwrap();
            let c = bf16_bits_to_f32(&be.download(&cd).unwrap());
            let want = gemm_ref(
                &decode_scaled(&a, a_scale),
                &decode_scaled(&b, b_scale),
                m,
                n,
                k,
            );
            let err = rel_l2(&c, &want);
            println!("fp8 GEMM (fast accum {fast}) m={m} n={n} k={k}: rel L2 {err:.2e}");
            assert!(
                err <= 1e-2,
                "fp8 GEMM (fast accum {fast}) m={m} n={n} k={k}: rel L2 {err:.3e} > 1e-2"
            );
        }
    }
}

/// The device quantizer gives the CPU's codes and scale, and W8A8 with its output (weights
/// built on the device) matches the CPU product of the decoded values.
#[test]
fn quantize_e4m3_on_device_and_w8a8() {
    let Some((be, lt)) = setup() else { return };
    let mut rng = Rng::new(13);
    let (m, n, k) = (64, 512, 1024);
    let mut x = rng.vec(m * k, 2.0);
    x[12345] = -37.5; // the absmax, negative
    x[7] = 0.0;
    x[8] = 1e-30; // underflows to 0
                  // f32 and bf16 sources: (name, host values as f32, quantize on the device).
    let xd = be.upload(&x).unwrap();
    let xb = to_bf16_bits(&x);
    let xbd = be.upload(&xb).unwrap();
    let mut q = be.alloc::<u8>(m * k).unwrap();
    let mut s = be.alloc::<f32>(1).unwrap();
    for src in ["f32", "bf16"] {
        let vals: Vec<f32> = if src == "f32" {
            lt.quantize_e4m3_f32(&xd, m * k, &mut q, &mut s).unwrap();
            x.clone()
        } else {
            lt.quantize_e4m3_bf16(&xbd, m * k, &mut q, &mut s).unwrap();
            bf16_bits_to_f32(&xb)
        };
        let codes = be.download(&q).unwrap();
        let scale = be.download(&s).unwrap()[0];
        let amax = vals.iter().fold(0f32, |a, v| a.max(v.abs()));
        assert_eq!(scale, amax / E4M3_MAX, "{src}: scale");
        let want: Vec<u8> = vals
            .iter()
            .map(|&v| E4M3.encode(v / scale, Rounding::NearestEven) as u8)
            .collect();
        let mismatches = codes.iter().zip(&want).filter(|(a, b)| a != b).count();
        println!(
            "quantize {src}: scale {scale:e}, {mismatches} code mismatches of {}",
            m * k
        );
        assert_eq!(mismatches, 0, "{src}: device codes differ from the CPU's");
        assert_eq!(codes[12345], 0xfe, "{src}: absmax must map to -448");
    }
    // All-zero input: scale 1, codes 0.
    let zeros = be.alloc::<f32>(256).unwrap();
    let mut qz = be.upload(&vec![0x55u8; 256]).unwrap();
    lt.quantize_e4m3_f32(&zeros, 256, &mut qz, &mut s).unwrap();
    assert_eq!(be.download(&s).unwrap()[0], 1.0);
    assert!(be.download(&qz).unwrap().iter().all(|&c| c == 0));

    // Random E4M3 weights on the device: finite codes over the whole range.
    let mut w = be.alloc::<u8>(n * k).unwrap();
    lt.fill_random_e4m3(&mut w, 5, -E4M3_MAX, E4M3_MAX).unwrap();
    let wc = be.download(&w).unwrap();
    let mut seen = [false; 256];
    wc.iter().for_each(|&c| seen[c as usize] = true);
    assert!(!seen[0x7f] && !seen[0xff], "random E4M3 codes include NaN");
    let distinct = seen.iter().filter(|&&s| s).count();
    assert!(
        distinct > 200,
        "random E4M3 codes cover only {distinct} values"
    );

    // W8A8: activations quantized on the device (f32 source), weight scale from the host.
    lt.quantize_e4m3_f32(&xd, m * k, &mut q, &mut s).unwrap();
    let w_scale = 0.01f32 / E4M3_MAX;
    let wsd = be.upload(&[w_scale]).unwrap();
    let mut cd = poisoned(&be, m * n);
    lt.gemm_fp8_e4m3(&q, &s, &w, &wsd, &mut cd, m, n, k)
        .unwrap();
    let c = bf16_bits_to_f32(&be.download(&cd).unwrap());
    let codes = be.download(&q).unwrap();
    let scale = be.download(&s).unwrap()[0];
    let wd = decode_scaled(&wc, w_scale);
    let want = gemm_ref(&decode_scaled(&codes, scale), &wd, m, n, k);
    let err = rel_l2(&c, &want);
    // Against the unquantized activations: the E4M3 rounding error itself (~3 % expected).
    let xf: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let err_x = rel_l2(&c, &gemm_ref(&xf, &wd, m, n, k));
    println!("W8A8 m={m} n={n} k={k}: rel L2 {err:.2e} vs decoded, {err_x:.2e} vs f32 activations");
    assert!(err <= 1e-2, "W8A8: rel L2 {err:.3e} > 1e-2");
    assert!(
        err_x <= 0.1,
        "W8A8 vs f32 activations: rel L2 {err_x:.3e} > 0.1"
    );
}

#[test]
fn bad_shapes_are_errors() {
    let Some((be, lt)) = setup() else { return };
    let a8 = be.alloc::<u8>(64 * 64).unwrap();
    let b8 = be.alloc::<u8>(64 * 64).unwrap();
    let s = be.upload(&[1.0f32]).unwrap();
    let mut c = be.alloc::<u16>(64 * 64).unwrap();
    // k not a multiple of 16, n not a multiple of 16, zero m, short buffers.
    assert!(lt
        .gemm_fp8_e4m3(&a8, &s, &b8, &s, &mut c, 4, 32, 24)
        .is_err());
    assert!(lt
        .gemm_fp8_e4m3(&a8, &s, &b8, &s, &mut c, 4, 24, 32)
        .is_err());
    assert!(lt
        .gemm_fp8_e4m3(&a8, &s, &b8, &s, &mut c, 0, 32, 32)
        .is_err());
    assert!(lt
        .gemm_fp8_e4m3(&a8, &s, &b8, &s, &mut c, 128, 64, 64)
        .is_err());
    assert!(lt
        .gemm_fp8_e4m3(&a8, &s, &b8, &s, &mut c, 4, 32, 32)
        .is_ok());
    let a16 = be.alloc::<u16>(64 * 64).unwrap();
    let b16 = be.alloc::<u16>(64 * 64).unwrap();
    assert!(lt.gemm_bf16(&a16, &b16, &mut c, 64, 64, 65).is_err());
    assert!(lt.gemm_bf16(&a16, &b16, &mut c, 0, 64, 64).is_err());
    assert!(lt.gemm_bf16(&a16, &b16, &mut c, 64, 64, 64).is_ok());
    // Quantizer: n larger than the buffers, or zero.
    let x = be.alloc::<f32>(100).unwrap();
    let mut q = be.alloc::<u8>(100).unwrap();
    let mut sc = be.alloc::<f32>(1).unwrap();
    assert!(lt.quantize_e4m3_f32(&x, 101, &mut q, &mut sc).is_err());
    assert!(lt.quantize_e4m3_f32(&x, 0, &mut q, &mut sc).is_err());
    be.synchronize().unwrap();
}
