//! `lowbit gpu-bench`: synthetic-model GPU benchmarks (issue 7). The work is in lowbit-cuda;
//! this module parses options and prints the table.

use anyhow::{bail, Context, Result};
use clap::Args;
use lowbit_cuda::bench::{self, ModelShape};
use lowbit_cuda::{CudaBackend, Int4Kernel, WeightFormat};

#[derive(Args)]
pub struct GpuBenchArgs {
    /// Model shape with random weights built on the device: llama-3-8b or qwen2.5-7b.
    #[arg(long, default_value = "llama-3-8b")]
    synthetic: String,
    /// Weight format: int4g128, int4g128t, q4_k, q6_k, q8_0, nvfp4, mxfp4, bf16, f32 (comma-separated
    /// for several).
    #[arg(long, default_value = "int4g128")]
    format: String,
    /// cuda or cuda:N.
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Batch sizes for the GEMV table (1..=8), comma-separated.
    #[arg(long, default_value = "1")]
    batches: String,
    /// Tokens to decode in the end-to-end loop (0 skips it).
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// INT4 g128 GEMV kernels to measure (comma-separated names, or "all"); default: the
    /// backend's default (LOWBIT_INT4_KERNEL or the shipped one).
    #[arg(long)]
    int4_kernels: Option<String>,
    /// Timed repetitions per GEMV measurement (median reported).
    #[arg(long, default_value_t = 20)]
    reps: usize,
    /// Dense GEMM benchmark instead of the rest: bf16 vs FP8 (W8A8) cuBLASLt GEMMs for
    /// m = n = k = SIZE and m = 16, 512 with n = k = SIZE.
    #[arg(long, value_name = "SIZE")]
    gemm: Option<usize>,
}

/// "cuda" -> 0, "cuda:N" -> N; anything else is an error.
pub fn parse_device(s: &str) -> Result<usize> {
    match s.strip_prefix("cuda") {
        Some("") => Ok(0),
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("bad device '{s}': expected cuda or cuda:N")),
        None => bail!("gpu-bench needs a CUDA device (--device cuda[:N]), got '{s}'"),
    }
}

/// Where `run`, `eval` and `bench` run the model (`--device cpu|cuda[:N]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl Device {
    pub fn parse(s: &str) -> Result<Device> {
        if s.eq_ignore_ascii_case("cpu") {
            return Ok(Device::Cpu);
        }
        if !s.starts_with("cuda") {
            bail!("bad --device '{s}': expected cpu, cuda or cuda:N");
        }
        parse_device(s).map(Device::Cuda)
    }

    /// The opened GPU (None on the CPU): an error, not a fallback, when none can be opened.
    pub fn backend(self) -> Result<Option<CudaBackend>> {
        match self {
            Device::Cpu => Ok(None),
            Device::Cuda(n) => CudaBackend::new(n)
                .map(Some)
                .with_context(|| format!("cannot open --device cuda:{n}")),
        }
    }
}

/// `model` ready to run with a KV cache of `capacity` tokens: on the CPU, or uploaded to `be`
/// (a line on stderr says how its weights were laid out there).
pub fn decoder<'a>(
    model: &'a lowbit_model::Transformer,
    be: Option<&'a CudaBackend>,
    capacity: usize,
) -> Result<Box<dyn lowbit_model::Decoder + 'a>> {
    let Some(be) = be else {
        return Ok(Box::new(lowbit_model::CpuDecoder::new(model, capacity)));
    };
    let g = lowbit_cuda::GpuModel::upload(be, model, capacity)
        .with_context(|| format!("cannot load the model onto {}", be.device_name()))?;
    let layouts: Vec<String> = g
        .formats()
        .iter()
        .map(|(f, n)| format!("{n} {f}"))
        .collect();
    eprintln!(
        "lowbit: {} ({}): {:.1} MiB of weights as {}",
        be.device_name(),
        be.arch(),
        g.weight_bytes() as f64 / (1 << 20) as f64,
        layouts.join(", ")
    );
    Ok(Box::new(g))
}

/// `lowbit bench --synthetic NAME --format F --device cuda`: the GEMV table at batch 1 and a
/// decode of `decode_tokens` tokens, as `gpu-bench`.
pub fn synthetic_bench(name: &str, format: &str, device: &str, decode_tokens: usize) -> Result<()> {
    gpu_bench(GpuBenchArgs {
        synthetic: name.to_string(),
        format: format.to_string(),
        device: device.to_string(),
        batches: "1".into(),
        decode_tokens,
        int4_kernels: None,
        reps: 20,
        gemm: None,
    })
}

pub fn gpu_bench(a: GpuBenchArgs) -> Result<()> {
    let ordinal = parse_device(&a.device)?;
    if let Some(size) = a.gemm {
        return gemm_bench(ordinal, size, a.reps);
    }
    let shape = ModelShape::by_name(&a.synthetic).with_context(|| {
        format!(
            "unknown synthetic model '{}' (llama-3-8b, qwen2.5-7b)",
            a.synthetic
        )
    })?;
    let formats: Vec<WeightFormat> = a
        .format
        .split(',')
        .map(|f| {
            WeightFormat::parse(f).with_context(|| {
                format!("unknown format '{f}' (int4g128, int4g128t, q4_k, q6_k, q8_0, nvfp4, mxfp4, bf16, f32)")
            })
        })
        .collect::<Result<_>>()?;
    let batches: Vec<usize> = a
        .batches
        .split(',')
        .map(|b| {
            b.trim()
                .parse::<usize>()
                .ok()
                .filter(|b| (1..=lowbit_cuda::MAX_BATCH_TILED).contains(b))
                .with_context(|| format!("bad batch '{b}'"))
        })
        .collect::<Result<_>>()?;
    let mut be = CudaBackend::new(ordinal).context("cannot open the CUDA device")?;
    let default_int4 = be.int4_kernel();
    let int4_kernels: Vec<Int4Kernel> = match a.int4_kernels.as_deref() {
        None => vec![default_int4],
        Some("all") => Int4Kernel::ALL.to_vec(),
        Some(list) => list
            .split(',')
            .map(|k| {
                Int4Kernel::parse(k.trim()).with_context(|| {
                    format!(
                        "unknown INT4 kernel '{k}' (one of {:?}, or all)",
                        Int4Kernel::ALL.map(|k| k.name())
                    )
                })
            })
            .collect::<Result<_>>()?,
    };
    // Other formats run once; INT4 once per kernel variant, labelled "int4g128/<kernel>".
    let variants = |format: WeightFormat| -> Vec<(String, Option<Int4Kernel>)> {
        if format == WeightFormat::Int4G128 {
            int4_kernels
                .iter()
                .map(|k| (format!("{}/{}", format.name(), k.name()), Some(*k)))
                .collect()
        } else {
            vec![(format.name().to_string(), None)]
        }
    };
    let copy = bench::copy_bandwidth(&be, 1 << 30, 20)?;
    println!(
        "device: {} ({}), model shape: {}",
        be.device_name(),
        be.arch(),
        shape.name
    );
    println!(
        "device-to-device copy: {:.0} GB/s (bytes read + written, 1 GiB, median of 20)",
        copy
    );
    println!(
        "{:<15} {:<10} {:>6} {:>6} {:>5} {:>10} {:>9} {:>9} {:>7} {:>9} {:>7}",
        "format", "matrix", "N", "K", "batch", "bytes", "us", "GB/s", "%copy", "graph us", "%copy"
    );
    for &format in &formats {
        for (fname, kernel) in variants(format) {
            be.set_int4_kernel(kernel.unwrap_or(default_int4));
            for (label, n, k) in shape.gemv_shapes() {
                for &b in &batches {
                    let max_batch = if format == WeightFormat::Int4G128Tiled {
                        lowbit_cuda::MAX_BATCH_TILED
                    } else {
                        lowbit_cuda::MAX_BATCH
                    };
                    if b > max_batch {
                        continue;
                    }
                    let t = bench::time_gemv(&be, format, n, k, b, a.reps)?;
                    println!(
                        "{:<15} {:<10} {:>6} {:>6} {:>5} {:>10} {:>9.1} {:>9.0} {:>6.1}% {:>9.1} {:>6.1}%",
                        fname,
                        label,
                        t.rows,
                        t.cols,
                        t.batch,
                        t.bytes,
                        t.us,
                        t.gbps,
                        100.0 * t.gbps / copy,
                        t.graph_us,
                        100.0 * t.graph_gbps / copy
                    );
                }
            }
        }
    }
    if a.decode_tokens > 0 {
        for &format in &formats {
            let max_seq = a.decode_tokens.max(64).next_power_of_two();
            let mut m = bench::SyntheticModel::build(&be, &shape, format, max_seq)?;
            for (fname, kernel) in variants(format) {
                be.set_int4_kernel(kernel.unwrap_or(default_int4));
                // LOWBIT_DECODE_UNFUSED=1: the step with one kernel per op (for comparison).
                let fused = std::env::var("LOWBIT_DECODE_UNFUSED").map_or(true, |v| v == "0");
                let t = bench::decode(&be, &mut m, a.decode_tokens, max_seq, fused)?;
                // Bytes per token: weights + the KV cache read at the mean position of the run.
                let bytes = m.weight_bytes_per_token() + m.kv_bytes_at(a.decode_tokens / 2);
                let bound = copy * 1e9 / bytes as f64;
                println!(
                    "decode {} {fname}: final-logit checksums eager {:.6e}, graph {:.6e}, pdl {}",
                    shape.name,
                    t.eager_checksum,
                    t.graph_checksum,
                    be.pdl()
                );
                for (how, ms) in [("eager", t.eager_ms), ("graph", t.graph_ms)] {
                    let tok_s = a.decode_tokens as f64 / (ms * 1e-3);
                    println!(
                        "decode {} {fname} ({how}): {} tokens in {:.1} ms = {:.1} tokens/s; {:.2} GB/token, bound {:.0} tokens/s ({:.1}% of bound)",
                        shape.name, a.decode_tokens, ms, tok_s, bytes as f64 / 1e9, bound, 100.0 * tok_s / bound
                    );
                }
            }
        }
    }
    Ok(())
}

/// `gpu-bench --gemm SIZE`: cuBLASLt bf16 vs FP8 E4M3 GEMM throughput (issue 7).
fn gemm_bench(ordinal: usize, size: usize, reps: usize) -> Result<()> {
    use lowbit_cuda::cublaslt::{CublasLt, FP8_K_MULTIPLE, FP8_N_MULTIPLE};
    if size == 0 || size % FP8_K_MULTIPLE != 0 || size % FP8_N_MULTIPLE != 0 {
        bail!("--gemm {size}: SIZE must be a positive multiple of 16 (FP8 GEMM requirement)");
    }
    let be = CudaBackend::new(ordinal).context("cannot open the CUDA device")?;
    let mut lt = CublasLt::new(&be).context("cannot open cuBLASLt")?;
    println!("device: {} ({})", be.device_name(), be.arch());
    println!(
        "cuBLASLt GEMM c[m][n] = a[m][k] * b[n][k]^T, bf16 output, f32 accumulation; \
         fp8 = E4M3 x E4M3 with per-tensor scales (W8A8); median of {reps} (CUDA events)"
    );
    println!(
        "{:>6} {:>6} {:>6} | {:>9} {:>8} | {:>9} {:>8} {:>6} | {:>9} {:>8} {:>6} | {:>9}",
        "m",
        "n",
        "k",
        "bf16 ms",
        "TFLOP/s",
        "fp8 ms",
        "TFLOP/s",
        "x bf16",
        "fast ms",
        "TFLOP/s",
        "x bf16",
        "quant us"
    );
    let mut square = None;
    for m in [size, 16, 512] {
        let t = bench::time_gemm(&be, &mut lt, m, size, size, reps)?;
        println!(
            "{:>6} {:>6} {:>6} | {:>9.4} {:>8.1} | {:>9.4} {:>8.1} {:>5.2}x | {:>9.4} {:>8.1} {:>5.2}x | {:>9.1}",
            t.m,
            t.n,
            t.k,
            t.bf16_ms,
            t.tflops(t.bf16_ms),
            t.fp8_ms,
            t.tflops(t.fp8_ms),
            t.bf16_ms / t.fp8_ms,
            t.fp8_fast_ms,
            t.tflops(t.fp8_fast_ms),
            t.bf16_ms / t.fp8_fast_ms,
            t.quant_ms * 1e3
        );
        if m == size {
            square = Some(t);
        }
    }
    println!("(fast = CUBLASLT_MATMUL_DESC_FAST_ACCUM on; quant = bf16 activations [m][k] to E4M3 on the device, absmax + cast)");
    if let Some(t) = square {
        println!(
            "{size}^3: fp8/bf16 = {:.2}x ({:.2}x with fast accumulation); goal >= 1.6x. \
             PyTorch reference on the H100: bf16 781, fp8 1415 TFLOP/s (1.81x)",
            t.bf16_ms / t.fp8_ms,
            t.bf16_ms / t.fp8_fast_ms
        );
    }
    Ok(())
}
