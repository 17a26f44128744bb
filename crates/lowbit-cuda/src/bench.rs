//! Synthetic benchmarks: random weights of a real model's shapes, built on the device.

use cudarc::driver::CudaSlice;

use crate::{drv, CudaBackend, DeviceMatrix, Error, Result, WeightFormat};

/// Shapes of a llama-style decoder.
#[derive(Clone, Debug)]
pub struct ModelShape {
    pub name: &'static str,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub rope_theta: f32,
}

impl ModelShape {
    pub fn by_name(name: &str) -> Option<ModelShape> {
        match name {
            "llama-3-8b" => Some(ModelShape {
                name: "llama-3-8b",
                dim: 4096,
                n_layers: 32,
                n_heads: 32,
                n_kv: 8,
                head_dim: 128,
                ffn: 14336,
                vocab: 128256,
                rope_theta: 500000.0,
            }),
            "qwen2.5-7b" => Some(ModelShape {
                name: "qwen2.5-7b",
                dim: 3584,
                n_layers: 28,
                n_heads: 28,
                n_kv: 4,
                head_dim: 128,
                ffn: 18944,
                vocab: 152064,
                rope_theta: 1000000.0,
            }),
            _ => None,
        }
    }

    /// The decode GEMV shapes (rows N, cols K) of one layer, plus the LM head, deduplicated.
    pub fn gemv_shapes(&self) -> Vec<(&'static str, usize, usize)> {
        let kv = self.n_kv * self.head_dim;
        vec![
            ("q/o proj", self.dim, self.n_heads * self.head_dim),
            ("k/v proj", kv, self.dim),
            ("gate/up", self.ffn, self.dim),
            ("down", self.dim, self.ffn),
            ("lm head", self.vocab, self.dim),
        ]
    }
}

/// Device-to-device copy bandwidth in GB/s (bytes read + written), median of `reps`.
pub fn copy_bandwidth(be: &CudaBackend, bytes: usize, reps: usize) -> Result<f64> {
    let src = be.alloc::<u8>(bytes)?;
    let mut dst = be.alloc::<u8>(bytes)?;
    let ms = be.time_ms(3, reps, || {
        drv("memcpy dtod", be.stream().memcpy_dtod(&src, &mut dst))
    })?;
    Ok(2.0 * bytes as f64 / (ms * 1e-3) / 1e9)
}

pub struct GemvTiming {
    pub rows: usize,
    pub cols: usize,
    pub batch: usize,
    pub bytes: usize,
    pub us: f64,
    pub gbps: f64,
    /// The same passes captured once as a CUDA graph and replayed: no host launch gaps (small
    /// matrices run faster than the host can launch them one by one).
    pub graph_us: f64,
    pub graph_gbps: f64,
}

/// Time y = W x for one shape; rotates over enough weight copies (>= 256 MiB together) that
/// the 50 MB L2 cannot serve repeated reads.
pub fn time_gemv(
    be: &CudaBackend,
    format: WeightFormat,
    rows: usize,
    cols: usize,
    batch: usize,
    reps: usize,
) -> Result<GemvTiming> {
    let (b, s) = format.sizes(rows, cols);
    let one = b + 2 * s;
    let copies = ((256usize << 20) / one).clamp(2, 64);
    let ws: Vec<DeviceMatrix> = (0..copies)
        .map(|i| be.random_matrix(format, rows, cols, 1000 + i as u64))
        .collect::<Result<_>>()?;
    let mut x = be.alloc::<f32>(batch * cols)?;
    be.fill_f32(&mut x, 7, -1.0, 1.0)?;
    let mut y = be.alloc::<f32>(batch * rows)?;
    let inner = copies; // one pass over all copies per timed sample
    let ms = be.time_ms(2, reps, || {
        for w in &ws {
            be.gemv(w, &x, batch, &mut y)?;
        }
        Ok(())
    })? / inner as f64;
    let stream = be.stream().clone();
    be.synchronize()?;
    drv(
        "begin graph capture",
        stream.begin_capture(
            cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
        ),
    )?;
    let captured = ws.iter().try_for_each(|w| be.gemv(w, &x, batch, &mut y));
    let graph = drv(
        "end graph capture",
        stream.end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0)),
    )?;
    captured?;
    let graph =
        graph.ok_or_else(|| Error::Shape("graph capture of the GEMV passes was empty".into()))?;
    drv("graph upload", graph.upload())?;
    let graph_ms = be.time_ms(2, reps, || drv("graph launch", graph.launch()))? / inner as f64;
    Ok(GemvTiming {
        rows,
        cols,
        batch,
        bytes: one,
        us: ms * 1e3,
        gbps: one as f64 / (ms * 1e-3) / 1e9,
        graph_us: graph_ms * 1e3,
        graph_gbps: one as f64 / (graph_ms * 1e-3) / 1e9,
    })
}

/// A synthetic model resident on the device.
pub struct SyntheticModel {
    pub shape: ModelShape,
    pub format: WeightFormat,
    layers: Vec<Layer>,
    embedding: CudaSlice<u16>,
    final_norm: CudaSlice<f32>,
    lm_head: DeviceMatrix,
}

struct Layer {
    attn_norm: CudaSlice<f32>,
    ffn_norm: CudaSlice<f32>,
    wqkv: DeviceMatrix,
    wo: DeviceMatrix,
    w_gate_up: DeviceMatrix,
    w_down: DeviceMatrix,
    k_cache: CudaSlice<u16>,
    v_cache: CudaSlice<u16>,
}

impl SyntheticModel {
    pub fn build(
        be: &CudaBackend,
        shape: &ModelShape,
        format: WeightFormat,
        max_seq: usize,
    ) -> Result<SyntheticModel> {
        let s = shape;
        let qd = s.n_heads * s.head_dim;
        let kvd = s.n_kv * s.head_dim;
        let ones = vec![1.0f32; s.dim];
        let mut layers = Vec::with_capacity(s.n_layers);
        for l in 0..s.n_layers {
            let seed = 100 * l as u64;
            layers.push(Layer {
                attn_norm: be.upload(&ones)?,
                ffn_norm: be.upload(&ones)?,
                wqkv: be.random_matrix(format, qd + 2 * kvd, s.dim, seed + 1)?,
                wo: be.random_matrix(format, s.dim, qd, seed + 2)?,
                w_gate_up: be.random_matrix(format, 2 * s.ffn, s.dim, seed + 3)?,
                w_down: be.random_matrix(format, s.dim, s.ffn, seed + 4)?,
                k_cache: be.alloc::<u16>(s.n_kv * max_seq * s.head_dim)?,
                v_cache: be.alloc::<u16>(s.n_kv * max_seq * s.head_dim)?,
            });
        }
        let mut embedding = be.alloc::<u16>(s.vocab * s.dim)?;
        be.fill_half(&mut embedding, 99, -0.05, 0.05, 1)?;
        let lm_head = be.random_matrix(format, s.vocab, s.dim, 98)?;
        Ok(SyntheticModel {
            shape: s.clone(),
            format,
            layers,
            embedding,
            final_norm: be.upload(&ones)?,
            lm_head,
        })
    }

    /// Weight bytes read per decoded token (embedding row included).
    pub fn weight_bytes_per_token(&self) -> usize {
        let per_layer: usize = self.layers.first().map_or(0, |l| {
            l.wqkv.bytes()
                + l.wo.bytes()
                + l.w_gate_up.bytes()
                + l.w_down.bytes()
                + 2 * 4 * self.shape.dim
        });
        per_layer * self.layers.len() + self.lm_head.bytes() + 2 * self.shape.dim
    }

    /// KV cache bytes read at position `pos` (all layers, k and v, bf16).
    pub fn kv_bytes_at(&self, pos: usize) -> usize {
        self.shape.n_layers * 2 * self.shape.n_kv * (pos + 1) * self.shape.head_dim * 2
    }
}

/// Milliseconds for a greedy decode loop, launched kernel by kernel and replayed as a graph.
pub struct DecodeTiming {
    pub eager_ms: f64,
    pub graph_ms: f64,
    /// Sum of the final logits after the eager loop and after the graph loop: both decode the
    /// same tokens from the same start, so these agree unless a kernel races.
    pub eager_checksum: f64,
    pub graph_checksum: f64,
}

/// Greedy decode of `n_tokens` tokens from position 0 with no host round trip per token
/// (token and position live on the device), timed twice: kernel by kernel, then with the step
/// captured once as a CUDA graph and replayed per token (no launch gaps between kernels).
pub fn decode(
    be: &CudaBackend,
    m: &mut SyntheticModel,
    n_tokens: usize,
    max_seq: usize,
    fused: bool,
) -> Result<DecodeTiming> {
    if n_tokens > max_seq {
        return Err(Error::Shape(format!(
            "{n_tokens} tokens exceed the cache of {max_seq}"
        )));
    }
    let s = m.shape.clone();
    let qd = s.n_heads * s.head_dim;
    let kvd = s.n_kv * s.head_dim;
    let split_len = 64;
    let mut x = be.alloc::<f32>(s.dim)?;
    let mut xn = be.alloc::<f32>(s.dim)?;
    let mut qkv = be.alloc::<f32>(qd + 2 * kvd)?;
    let mut q = be.alloc::<f32>(qd)?;
    let mut k = be.alloc::<f32>(kvd)?;
    let mut v = be.alloc::<f32>(kvd)?;
    let mut att = be.alloc::<f32>(qd)?;
    let mut o = be.alloc::<f32>(s.dim)?;
    let mut gu = be.alloc::<f32>(2 * s.ffn)?;
    let mut h = be.alloc::<f32>(s.ffn)?;
    let mut logits = be.alloc::<f32>(s.vocab)?;
    let mut scratch = be.alloc::<f32>(CudaBackend::attention_scratch_len(
        s.n_heads, s.head_dim, max_seq, split_len,
    ))?;
    let mut token = be.upload(&[1i32])?;
    let mut pos = be.upload(&[0i32])?;
    let stream = be.stream().clone();
    let mut step = |be: &CudaBackend,
                    pos: &mut CudaSlice<i32>,
                    token: &mut CudaSlice<i32>,
                    logits: &mut CudaSlice<f32>|
     -> Result<()> {
        // The step follows host copies (position and token resets) and events.
        be.pdl_fence();
        be.embed(&m.embedding, &*token, &mut x, s.dim)?;
        if fused {
            // Fused step: qkv split + ropes + cache store in one kernel, each residual add
            // fused with the next norm (10 launches per layer instead of 17).
            be.rmsnorm(&x, &m.layers[0].attn_norm, &mut xn, 1, s.dim, 1e-5)?;
            let n_layers = m.layers.len();
            for li in 0..n_layers {
                let (cur, rest) = m.layers.split_at_mut(li + 1);
                let l = &mut cur[li];
                let next_norm = rest.first().map_or(&m.final_norm, |n| &n.attn_norm);
                be.gemv(&l.wqkv, &xn, 1, &mut qkv)?;
                be.qkv_rope_store(
                    &qkv,
                    &mut q,
                    &mut l.k_cache,
                    &mut l.v_cache,
                    s.n_heads,
                    s.n_kv,
                    s.head_dim,
                    max_seq,
                    &*pos,
                    s.rope_theta,
                    true,
                )?;
                be.attention_decode(
                    &q,
                    &l.k_cache,
                    &l.v_cache,
                    &mut att,
                    &mut scratch,
                    s.n_heads,
                    s.n_kv,
                    s.head_dim,
                    max_seq,
                    &*pos,
                    split_len,
                )?;
                be.gemv(&l.wo, &att, 1, &mut o)?;
                be.add_rmsnorm(&mut x, &o, &l.ffn_norm, &mut xn, 1, s.dim, 1e-5)?;
                be.gemv(&l.w_gate_up, &xn, 1, &mut gu)?;
                be.silu_mul(&gu, &mut h, s.ffn, 1)?;
                be.gemv(&l.w_down, &h, 1, &mut o)?;
                be.add_rmsnorm(&mut x, &o, next_norm, &mut xn, 1, s.dim, 1e-5)?;
            }
        } else {
            for l in m.layers.iter_mut() {
                be.rmsnorm(&x, &l.attn_norm, &mut xn, 1, s.dim, 1e-5)?;
                be.gemv(&l.wqkv, &xn, 1, &mut qkv)?;
                // Split the fused qkv output (device copies are cheap next to the weights).
                drv("split q", stream.memcpy_dtod(&qkv.slice(0..qd), &mut q))?;
                drv(
                    "split k",
                    stream.memcpy_dtod(&qkv.slice(qd..qd + kvd), &mut k),
                )?;
                drv(
                    "split v",
                    stream.memcpy_dtod(&qkv.slice(qd + kvd..qd + 2 * kvd), &mut v),
                )?;
                be.pdl_fence();
                be.rope(&mut q, s.n_heads, s.head_dim, &*pos, s.rope_theta, true)?;
                be.rope(&mut k, s.n_kv, s.head_dim, &*pos, s.rope_theta, true)?;
                be.store_kv(
                    &k,
                    &v,
                    &mut l.k_cache,
                    &mut l.v_cache,
                    s.n_kv,
                    s.head_dim,
                    max_seq,
                    &*pos,
                )?;
                be.attention_decode(
                    &q,
                    &l.k_cache,
                    &l.v_cache,
                    &mut att,
                    &mut scratch,
                    s.n_heads,
                    s.n_kv,
                    s.head_dim,
                    max_seq,
                    &*pos,
                    split_len,
                )?;
                be.gemv(&l.wo, &att, 1, &mut o)?;
                be.add(&mut x, &o, s.dim)?;
                be.rmsnorm(&x, &l.ffn_norm, &mut xn, 1, s.dim, 1e-5)?;
                be.gemv(&l.w_gate_up, &xn, 1, &mut gu)?;
                be.silu_mul(&gu, &mut h, s.ffn, 1)?;
                be.gemv(&l.w_down, &h, 1, &mut o)?;
                be.add(&mut x, &o, s.dim)?;
            }
            be.rmsnorm(&x, &m.final_norm, &mut xn, 1, s.dim, 1e-5)?;
        }
        be.gemv(&m.lm_head, &xn, 1, logits)?;
        be.argmax(&*logits, s.vocab, token, pos)
    };
    // Warm up (one token), then reset the position and time the loop.
    step(be, &mut pos, &mut token, &mut logits)?;
    be.synchronize()?;
    drv("reset pos", be.stream().memcpy_htod(&[0i32], &mut pos))?;
    drv("reset token", be.stream().memcpy_htod(&[1i32], &mut token))?;
    let eager_ms = be.time_ms(0, 1, || {
        for _ in 0..n_tokens {
            step(be, &mut pos, &mut token, &mut logits)?;
        }
        Ok(())
    })?;
    let checksum = |v: Vec<f32>| v.iter().map(|&x| x as f64).sum::<f64>();
    let eager_checksum = checksum(be.download(&logits)?);
    // The step allocates nothing and reads token and position from the device, so one capture
    // replays correctly at every position.
    be.synchronize()?;
    drv(
        "begin graph capture",
        stream.begin_capture(
            cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
        ),
    )?;
    let captured = step(be, &mut pos, &mut token, &mut logits);
    let graph = drv(
        "end graph capture",
        stream.end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0)),
    )?;
    captured?;
    let graph =
        graph.ok_or_else(|| Error::Shape("graph capture of the decode step was empty".into()))?;
    drv("reset pos", be.stream().memcpy_htod(&[0i32], &mut pos))?;
    drv("reset token", be.stream().memcpy_htod(&[1i32], &mut token))?;
    drv("graph upload", graph.upload())?;
    let graph_ms = be.time_ms(0, 1, || {
        for _ in 0..n_tokens {
            drv("graph launch", graph.launch())?;
        }
        Ok(())
    })?;
    let last = be.download(&logits)?;
    if last.iter().any(|v| !v.is_finite()) {
        return Err(Error::Shape(
            "synthetic decode produced non-finite logits".into(),
        ));
    }
    Ok(DecodeTiming {
        eager_ms,
        graph_ms,
        eager_checksum,
        graph_checksum: checksum(last),
    })
}

/// Dense GEMM timings (cuBLASLt) for one shape: c[m][n] = a[m][k] · b[n][k]ᵀ, bf16 output.
pub struct GemmTiming {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// bf16 x bf16, f32 accumulation.
    pub bf16_ms: f64,
    /// E4M3 x E4M3 with per-tensor scales, f32 accumulation (FAST_ACCUM off).
    pub fp8_ms: f64,
    /// The same with CUBLASLT_MATMUL_DESC_FAST_ACCUM on.
    pub fp8_fast_ms: f64,
    /// Quantizing the bf16 activations a to E4M3 on the device (absmax + cast), the W8A8
    /// overhead per GEMM when activations arrive in bf16.
    pub quant_ms: f64,
}

impl GemmTiming {
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }

    /// TFLOP/s at `ms` milliseconds per GEMM.
    pub fn tflops(&self, ms: f64) -> f64 {
        self.flops() / (ms * 1e-3) / 1e12
    }
}

/// Time bf16 and FP8 (W8A8) GEMMs of one shape: median of `reps` runs with device events after
/// 3 warm-up runs. Inputs are random, built on the device; the FP8 activations are the bf16 ones
/// quantized by the device kernel. Leaves `lt`'s fast-accumulation setting as it found it.
pub fn time_gemm(
    be: &CudaBackend,
    lt: &mut crate::cublaslt::CublasLt,
    m: usize,
    n: usize,
    k: usize,
    reps: usize,
) -> Result<GemmTiming> {
    let mut a = be.alloc::<u16>(m * k)?;
    be.fill_half(&mut a, 21, -1.0, 1.0, 1)?;
    let mut b = be.alloc::<u16>(n * k)?;
    let r = 1.0 / (k as f32).sqrt();
    be.fill_half(&mut b, 22, -r, r, 1)?;
    let mut c = be.alloc::<u16>(m * n)?;
    let bf16_ms = be.time_ms(3, reps, || lt.gemm_bf16(&a, &b, &mut c, m, n, k))?;

    let mut a8 = be.alloc::<u8>(m * k)?;
    let mut a_scale = be.alloc::<f32>(1)?;
    let quant_ms = be.time_ms(3, reps, || {
        lt.quantize_e4m3_bf16(&a, m * k, &mut a8, &mut a_scale)
    })?;
    let mut b8 = be.alloc::<u8>(n * k)?;
    lt.fill_random_e4m3(
        &mut b8,
        23,
        -crate::cublaslt::E4M3_MAX,
        crate::cublaslt::E4M3_MAX,
    )?;
    let b_scale = be.upload(&[r / crate::cublaslt::E4M3_MAX])?;
    let fast_before = lt.fp8_fast_accum();
    let mut fp8 = [0f64; 2];
    for (i, fast) in [false, true].into_iter().enumerate() {
        lt.set_fp8_fast_accum(fast);
        let t = be.time_ms(3, reps, || {
            lt.gemm_fp8_e4m3(&a8, &a_scale, &b8, &b_scale, &mut c, m, n, k)
        });
        lt.set_fp8_fast_accum(fast_before);
        fp8[i] = t?;
    }
    be.synchronize()?;
    Ok(GemmTiming {
        m,
        n,
        k,
        bf16_ms,
        fp8_ms: fp8[0],
        fp8_fast_ms: fp8[1],
        quant_ms,
    })
}
