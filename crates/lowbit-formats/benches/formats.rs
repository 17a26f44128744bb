//! Quantize / dequantize throughput in GB/s of f32 (input for quantize, output for dequantize),
//! single thread, for each SIMD level this CPU has (scalar reference, AVX2, AVX-512).
//!
//! Run: cargo bench -p lowbit-formats --bench formats
//! Filter: cargo bench -p lowbit-formats --bench formats -- 'quantize/q8_0'
//! Results (medians) land in target/criterion/<group>/<level>/new/estimates.json;
//! scripts/bench_gguf_py.py measures gguf-py on the same data size for the ratio.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lowbit_formats::minifloat::Minifloat;
use lowbit_formats::rounding::Rounding;
use lowbit_formats::simd::{self, Level};
use lowbit_formats::{
    dequantize_rows, quantize_q4_k_fast, quantize_rows, GgmlType, QTensor, QuantSpec,
};
use std::hint::black_box;
use std::time::Duration;

/// 256 rows of 4096: 1 Mi values, 4 MiB of f32 (the same size scripts/bench_gguf_py.py uses).
/// `LOWBIT_BENCH_ROWS=64` (1 MiB, resident in L2) measures the kernels without the memory
/// system (bench_gguf_py.py --rows 64 for the same size there).
const COLS: usize = 4096;
static ROWS: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| {
    std::env::var("LOWBIT_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&r: &usize| r > 0)
        .unwrap_or(256)
});

/// Weight-like data: Gaussian (sd 0.02, Box-Muller on an xorshift stream) with 1 in 512 values
/// an outlier 10x larger, as real LLM weights have.
fn weights(n: usize) -> Vec<f32> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 40) as f64 + 0.5) / (1u64 << 24) as f64
    };
    (0..n)
        .map(|i| {
            let (u1, u2) = (next(), next());
            let g = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            let v = (g * 0.02) as f32;
            if i % 512 == 7 {
                v * 10.0
            } else {
                v
            }
        })
        .collect()
}

fn levels() -> Vec<Level> {
    Level::ALL
        .into_iter()
        .filter(|&l| l <= simd::hardware())
        .collect()
}

fn bench_ggml(c: &mut Criterion) {
    let x = weights(COLS * *ROWS);
    let bytes = (x.len() * 4) as u64;
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::MXFP4,
        GgmlType::Q4_K,
        GgmlType::IQ4_XS,
    ] {
        let mut packed = vec![0u8; ty.byte_len(x.len()).unwrap()];
        let mut g = c.benchmark_group(format!("quantize/{}", ty.name()));
        g.throughput(Throughput::Bytes(bytes));
        for level in levels() {
            g.bench_function(BenchmarkId::from_parameter(level), |b| {
                simd::with_level(level, || {
                    b.iter(|| quantize_rows(ty, black_box(&x), COLS, &mut packed).unwrap())
                })
            });
        }
        g.finish();
        quantize_rows(ty, &x, COLS, &mut packed).unwrap();
        let mut y = vec![0f32; x.len()];
        // Dequantization has no SIMD variants (the scalar decoders already vectorize at the
        // baseline ISA and meet the goal), so it is measured once.
        let mut g = c.benchmark_group(format!("dequantize/{}", ty.name()));
        g.throughput(Throughput::Bytes(bytes));
        g.bench_function(BenchmarkId::from_parameter(Level::Scalar), |b| {
            b.iter(|| dequantize_rows(ty, black_box(&packed), COLS, &mut y).unwrap())
        });
        g.finish();
    }
}

/// The fast (min/max scales, no search) Q4_K encoder, per SIMD level.
fn bench_q4_k_fast(c: &mut Criterion) {
    let x = weights(COLS * *ROWS);
    let mut packed = vec![0u8; GgmlType::Q4_K.byte_len(x.len()).unwrap()];
    let mut g = c.benchmark_group("quantize/q4_k_fast");
    g.throughput(Throughput::Bytes((x.len() * 4) as u64));
    for level in levels() {
        g.bench_function(BenchmarkId::from_parameter(level), |b| {
            simd::with_level(level, || {
                b.iter(|| quantize_q4_k_fast(black_box(&x), &mut packed).unwrap())
            })
        });
    }
    g.finish();
}

/// Fake quantization (quantize + dequantize in place, the emulation API) of QuantSpec formats.
/// Repeating it on the same buffer costs the same each time (the values stay normal floats).
fn bench_fake(c: &mut Criterion) {
    let x = weights(COLS * *ROWS);
    let bytes = (x.len() * 4) as u64;
    for name in [
        "int4_g128_sym",
        "int8_channel_sym",
        "int8_g128_sym",
        "fp8_e4m3_tensor",
        "nvfp4",
        "mxfp4",
    ] {
        let spec = QuantSpec::parse(name).unwrap();
        let mut g = c.benchmark_group(format!("fake/{name}"));
        g.throughput(Throughput::Bytes(bytes));
        for level in levels() {
            let mut y = x.clone();
            g.bench_function(BenchmarkId::from_parameter(level), |b| {
                simd::with_level(level, || {
                    b.iter(|| spec.fake_quantize_matrix(black_box(&mut y), COLS).unwrap())
                })
            });
        }
        g.finish();
    }
}

/// FP8 E4M3 codes: encode of pre-scaled values (per-tensor scale 448 / absmax) and decode.
fn bench_fp8(c: &mut Criterion) {
    let x = weights(COLS * *ROWS);
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scaled: Vec<f32> = x.iter().map(|v| v * (448.0 / amax)).collect();
    let bytes = (x.len() * 4) as u64;
    let fmt = Minifloat::E4M3FN;
    let mut codes = vec![0u8; x.len()];
    let mut g = c.benchmark_group("quantize/fp8_e4m3_codes");
    g.throughput(Throughput::Bytes(bytes));
    for level in levels() {
        g.bench_function(BenchmarkId::from_parameter(level), |b| {
            simd::with_level(level, || {
                b.iter(|| fmt.encode_slice(black_box(&scaled), &mut codes, Rounding::NearestEven))
            })
        });
    }
    g.finish();
    let mut y = vec![0f32; x.len()];
    let mut g = c.benchmark_group("dequantize/fp8_e4m3_codes");
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function(BenchmarkId::from_parameter(Level::Scalar), |b| {
        b.iter(|| fmt.decode_slice(black_box(&codes), &mut y))
    });
    g.finish();
}

/// QTensor: real encode (codes + stored scales) and decode, per SIMD level.
fn bench_qtensor(c: &mut Criterion) {
    let x = weights(COLS * *ROWS);
    let bytes = (x.len() * 4) as u64;
    for name in ["int4_g128_sym", "int8_channel", "nvfp4", "mxfp4"] {
        let spec = QuantSpec::parse(name).unwrap();
        let mut g = c.benchmark_group(format!("qtensor_encode/{name}"));
        g.throughput(Throughput::Bytes(bytes));
        for level in levels() {
            g.bench_function(BenchmarkId::from_parameter(level), |b| {
                simd::with_level(level, || {
                    b.iter(|| QTensor::encode(&spec, black_box(&x), *ROWS, COLS).unwrap())
                })
            });
        }
        g.finish();
        let q = QTensor::encode(&spec, &x, *ROWS, COLS).unwrap();
        let mut y = vec![0f32; x.len()];
        let mut g = c.benchmark_group(format!("qtensor_decode/{name}"));
        g.throughput(Throughput::Bytes(bytes));
        for level in levels() {
            g.bench_function(BenchmarkId::from_parameter(level), |b| {
                simd::with_level(level, || b.iter(|| black_box(&q).decode(&mut y).unwrap()))
            });
        }
        g.finish();
    }
}

fn configured() -> Criterion {
    // The machine is shared: short runs, and the reported figure is the median of the samples.
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500))
}

criterion_group! {
    name = benches;
    config = configured();
    targets = bench_ggml, bench_q4_k_fast, bench_fake, bench_fp8, bench_qtensor
}
criterion_main!(benches);
