//! A loaded [`Transformer`] on the GPU (`--device cuda`): every dense architecture the CPU runs
//! (Llama/Mistral, Qwen 2/3, Gemma 3: biases, q/k norms, sandwich norms, sliding windows,
//! scaled or partial ropes, GeGLU, online Hadamard rotations).
//!
//! W8A8 checkpoints quantize each linear's input rows dynamically, as on the CPU.
//!
//! Weights are uploaded once in a layout a GEMV kernel reads directly: Q4_K, Q6_K, Q8_0, MXFP4,
//! NVFP4 (lowbit's LB_NVFP4 blocks) and bf16 as stored; int4 g128 checkpoints (held by the CPU loader as Q4_0 blocks with one scale
//! per 128 values) as the tiled INT4 layout; every other type dequantized to f32 (exact, never
//! rounded). [`GpuModel::formats`] says which was used. Tokens run through the network in
//! chunks of up to [`CHUNK`] (prefill batches the GEMVs; decode is a chunk of one); K and V go to
//! a bf16 or FP8 cache ([`GpuKvCache`]); activations stay f32. The embedding row is looked up on the host (one row of
//! any stored type per token) and uploaded with the chunk.

use std::collections::BTreeMap;

use cudarc::driver::{CudaSlice, LaunchConfig};
use lowbit_cpu::attention::{KvCacheSpec, KvDtype};
use lowbit_cpu::ops::RopeStyle;
use lowbit_formats::GgmlType;
use lowbit_model::arch::act_quant::ActQuant;
use lowbit_model::arch::blocks::{FeedForward, Linear};
use lowbit_model::config::{Activation, ModelConfig};
use lowbit_model::{Decoder, ModelError, Transformer};

use crate::backend::{CudaBackend, DeviceMatrix, WeightFormat, MAX_BATCH};
use crate::{drv, Error, Result};

/// Tokens per pass through the network (the non-tiled GEMV kernels take batches up to 8).
pub const CHUNK: usize = MAX_BATCH;

/// Largest head the attention kernel holds in registers (32 lanes × 8 values).
const MAX_HEAD_DIM: usize = 256;

struct GpuLinear {
    w: DeviceMatrix,
    bias: Option<CudaSlice<f32>>,
    /// W8A8 checkpoints: each input row is quantized dynamically first (as on the CPU).
    act: Option<ActQuant>,
}

struct GpuRope {
    inv_freq: CudaSlice<f32>,
    rot_half: usize,
    neox: bool,
    mscale: f32,
}

/// An online Hadamard rotation (`lowbit_cpu::hadamard::Hadamard`) resident on the device.
pub struct GpuHadamard {
    signs: CudaSlice<f32>,
    base: CudaSlice<f32>,
    n: usize,
    pow2: usize,
    m: usize,
}

impl GpuHadamard {
    pub fn new(be: &CudaBackend, h: &lowbit_cpu::hadamard::Hadamard) -> Result<GpuHadamard> {
        let f32s = |v: &[f64]| v.iter().map(|&s| s as f32).collect::<Vec<_>>();
        let smem = 2 * h.size() * 4;
        if smem > 48 * 1024 {
            // The kernel keeps two rows in shared memory: allow more than the default 48 KB.
            use cudarc::driver::sys::CUfunction_attribute;
            drv(
                "hadamard shared memory limit",
                be.func("hadamard_rows_f32")?.set_attribute(
                    CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as i32,
                ),
            )?;
        }
        Ok(GpuHadamard {
            signs: be.upload(&f32s(h.signs()))?,
            base: be.upload(&f32s(h.base_matrix()))?,
            n: h.size(),
            pow2: h.pow2(),
            m: h.base(),
        })
    }

    /// `X <- X · Q` for the first `rows` rows of `x` (rows of n values).
    pub fn apply(&self, be: &CudaBackend, x: &mut CudaSlice<f32>, rows: usize) -> Result<()> {
        if x.len() < rows * self.n {
            return Err(Error::Shape(format!(
                "hadamard: {} values hold fewer than {rows} rows of {}",
                x.len(),
                self.n
            )));
        }
        let f = be.func("hadamard_rows_f32")?;
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: (2 * self.n * 4) as u32,
        };
        let (n, p, m) = (self.n as i32, self.pow2 as i32, self.m as i32);
        let norm = (1.0 / (self.n as f64).sqrt()) as f32;
        be.launch(f, cfg, |a| {
            a.arg(x)
                .arg(&self.signs)
                .arg(&self.base)
                .arg(&n)
                .arg(&p)
                .arg(&m)
                .arg(&norm)
        })
    }
}

struct GpuLayer {
    attn_norm: CudaSlice<f32>,
    post_attn_norm: Option<CudaSlice<f32>>,
    ffn_norm: CudaSlice<f32>,
    post_ffn_norm: Option<CudaSlice<f32>>,
    q: GpuLinear,
    k: GpuLinear,
    v: GpuLinear,
    o: GpuLinear,
    q_norm: Option<CudaSlice<f32>>,
    k_norm: Option<CudaSlice<f32>>,
    rope: GpuRope,
    scale: f32,
    window: Option<usize>,
    gate: GpuLinear,
    up: GpuLinear,
    down: GpuLinear,
    down_rotation: Option<GpuHadamard>,
    cache: LayerCache,
}

/// KV cache element type on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuKvCache {
    /// bf16 values (2 bytes per value).
    Bf16,
    /// FP8 E4M3 codes with one f32 scale per (position, kv head) row: absmax / 448.
    Fp8,
}

impl GpuKvCache {
    /// The GPU cache for a model's KV-cache setting (`--kv`, config.json `kv_cache_scheme`):
    /// f32 and f16 become bf16 (the GPU's 16-bit cache), fp8 stays fp8; int8/int4 caches and
    /// rotated caches run on the CPU only (an error here, not a silent change).
    pub fn from_spec(spec: Option<KvCacheSpec>) -> Result<GpuKvCache> {
        let Some(spec) = spec else {
            return Ok(GpuKvCache::Bf16);
        };
        if spec.rotation_seed.is_some() {
            return Err(Error::Shape(
                "rotated KV caches (--kv-rotate) run on the CPU only".into(),
            ));
        }
        match spec.dtype {
            KvDtype::F32 | KvDtype::F16 => Ok(GpuKvCache::Bf16),
            KvDtype::Fp8 => Ok(GpuKvCache::Fp8),
            d => Err(Error::Shape(format!(
                "a {} KV cache runs on the CPU only; the GPU holds bf16 (--kv f16) or fp8",
                d.name()
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            GpuKvCache::Bf16 => "bf16",
            GpuKvCache::Fp8 => "fp8",
        }
    }
}

/// One layer's K and V: rows (kv head h, position j) at h * max_seq + j, head_dim values each.
enum LayerCache {
    Bf16 {
        k: CudaSlice<u16>,
        v: CudaSlice<u16>,
    },
    Fp8 {
        k: CudaSlice<u8>,
        v: CudaSlice<u8>,
        k_scale: CudaSlice<f32>,
        v_scale: CudaSlice<f32>,
    },
}

/// Activation buffers for one chunk, allocated once (no allocation per token).
struct Buffers {
    x: CudaSlice<f32>,
    xn: CudaSlice<f32>,
    q_raw: CudaSlice<f32>,
    q: CudaSlice<f32>,
    k_raw: CudaSlice<f32>,
    k: CudaSlice<f32>,
    v: CudaSlice<f32>,
    att: CudaSlice<f32>,
    o: CudaSlice<f32>,
    o_normed: CudaSlice<f32>,
    /// Quantized copies of linear inputs (W8A8 checkpoints).
    xq: CudaSlice<f32>,
    g: CudaSlice<f32>,
    u: CudaSlice<f32>,
    h: CudaSlice<f32>,
}

/// Input rows and logits of the output projection, apart from the chunk buffers so that
/// [`Decoder::logits`] (which takes `&self`) can use them.
struct ProjectionBuffers {
    x: CudaSlice<f32>,
    logits: CudaSlice<f32>,
}

/// A transformer resident on one GPU with one sequence's bf16 KV cache.
pub struct GpuModel<'b> {
    be: &'b CudaBackend,
    config: ModelConfig,
    /// Host copy of the embedding matrix (memory-mapped): rows are looked up per token.
    embed: Linear,
    layers: Vec<GpuLayer>,
    final_norm: CudaSlice<f32>,
    lm_head: DeviceMatrix,
    bufs: Buffers,
    proj: std::cell::RefCell<ProjectionBuffers>,
    kv: GpuKvCache,
    max_seq: usize,
    pos: usize,
    formats: BTreeMap<String, usize>,
}

fn model_err(e: Error) -> ModelError {
    ModelError::Other(format!("cuda: {e}"))
}

/// Norm weights with the architecture's offset folded in (Gemma stores `w - 1`).
fn norm_weights(be: &CudaBackend, w: &[f32], offset: f32) -> Result<CudaSlice<f32>> {
    let v: Vec<f32> = w.iter().map(|&x| x + offset).collect();
    be.upload(&v)
}

/// Repack Q4_0 rows into the INT4 g128 layout if every group of four blocks shares one scale
/// (how the CPU loader holds lowbit's int4 g128 checkpoints): (u32 words as bytes, f16 scales).
fn q4_0_as_int4_g128(data: &[u8], rows: usize, cols: usize) -> Option<(Vec<u8>, Vec<u16>)> {
    if cols % 128 != 0 {
        return None;
    }
    let blocks = cols / 32;
    let mut words = vec![0u32; rows * cols / 8];
    let mut scales = Vec::with_capacity(rows * cols / 128);
    for r in 0..rows {
        let row = &data[r * blocks * 18..(r + 1) * blocks * 18];
        for g in 0..cols / 128 {
            let d = u16::from_le_bytes([row[g * 72], row[g * 72 + 1]]);
            for b in 1..4 {
                let o = g * 72 + b * 18;
                if u16::from_le_bytes([row[o], row[o + 1]]) != d {
                    return None;
                }
            }
            scales.push(d);
        }
        for b in 0..blocks {
            let qs = &row[b * 18 + 2..b * 18 + 18];
            for j in 0..32 {
                let code = if j < 16 { qs[j] & 0xF } else { qs[j - 16] >> 4 } as u32;
                let i = r * cols + b * 32 + j;
                words[i / 8] |= code << (4 * (i % 8));
            }
        }
    }
    Some((words.iter().flat_map(|w| w.to_le_bytes()).collect(), scales))
}

impl<'b> GpuModel<'b> {
    /// Upload `t`'s weights and allocate a KV cache of `max_seq` positions of the type its
    /// config asks for ([`GpuKvCache::from_spec`]).
    pub fn upload(be: &'b CudaBackend, t: &Transformer, max_seq: usize) -> Result<GpuModel<'b>> {
        let kv = GpuKvCache::from_spec(t.config.kv_cache)?;
        Self::upload_with_cache(be, t, max_seq, kv)
    }

    /// Upload `t`'s weights and allocate a KV cache of `max_seq` positions in `kv`.
    pub fn upload_with_cache(
        be: &'b CudaBackend,
        t: &Transformer,
        max_seq: usize,
        kv: GpuKvCache,
    ) -> Result<GpuModel<'b>> {
        let c = &t.config;
        if max_seq == 0 {
            return Err(Error::Shape(
                "the KV cache needs at least one position".into(),
            ));
        }
        if c.head_dim > MAX_HEAD_DIM || c.head_dim % 2 != 0 {
            return Err(Error::Shape(format!(
                "head_dim {} is not supported on the GPU (even, at most {MAX_HEAD_DIM})",
                c.head_dim
            )));
        }
        let mut formats = BTreeMap::new();
        let mut layers = Vec::with_capacity(t.layers.len());
        for (i, l) in t.layers.iter().enumerate() {
            let FeedForward::Dense(mlp) = &l.ffn else {
                return Err(Error::Shape(format!(
                    "layer {i}: mixture-of-experts layers do not run on the GPU yet (use --device cpu)"
                )));
            };
            let a = &l.attn;
            let rope = &a.rope;
            if rope.inv_freq.len() * 2 != rope.rot_dim || rope.rot_dim > c.head_dim {
                return Err(Error::Shape(format!(
                    "layer {i}: rope of {} dims with {} frequencies",
                    rope.rot_dim,
                    rope.inv_freq.len()
                )));
            }
            let off = c.norm_weight_offset;
            let opt_norm = |w: &Option<Vec<f32>>, offset: f32| -> Result<Option<CudaSlice<f32>>> {
                w.as_ref().map(|w| norm_weights(be, w, offset)).transpose()
            };
            let down_rotation = mlp
                .down_rotation
                .as_ref()
                .map(|h| GpuHadamard::new(be, h))
                .transpose()?;
            let kv_rows = c.num_kv_heads * max_seq;
            let kv_len = kv_rows * c.head_dim;
            let cache = match kv {
                GpuKvCache::Bf16 => LayerCache::Bf16 {
                    k: be.alloc::<u16>(kv_len)?,
                    v: be.alloc::<u16>(kv_len)?,
                },
                GpuKvCache::Fp8 => LayerCache::Fp8 {
                    k: be.alloc::<u8>(kv_len)?,
                    v: be.alloc::<u8>(kv_len)?,
                    k_scale: be.alloc::<f32>(kv_rows)?,
                    v_scale: be.alloc::<f32>(kv_rows)?,
                },
            };
            let mut up = |lin: &Linear, bias: &Option<Vec<f32>>| {
                upload_linear(be, lin, bias.as_deref(), &mut formats)
            };
            layers.push(GpuLayer {
                attn_norm: norm_weights(be, &l.attn_norm, off)?,
                post_attn_norm: opt_norm(&l.post_attn_norm, off)?,
                ffn_norm: norm_weights(be, &l.ffn_norm, off)?,
                post_ffn_norm: opt_norm(&l.post_ffn_norm, off)?,
                q: up(&a.q, &a.q_bias)?,
                k: up(&a.k, &a.k_bias)?,
                v: up(&a.v, &a.v_bias)?,
                o: up(&a.o, &a.o_bias)?,
                q_norm: opt_norm(&a.q_norm, a.norm_offset)?,
                k_norm: opt_norm(&a.k_norm, a.norm_offset)?,
                rope: GpuRope {
                    inv_freq: be.upload(&rope.inv_freq)?,
                    rot_half: rope.rot_dim / 2,
                    neox: rope.style == RopeStyle::Neox,
                    mscale: rope.mscale,
                },
                scale: a.scale,
                window: a.window,
                gate: up(&mlp.gate, &None)?,
                up: up(&mlp.up, &None)?,
                down: up(&mlp.down, &None)?,
                down_rotation,
                cache,
            });
            if mlp.act != Activation::Silu && mlp.act != Activation::GeluTanh {
                return Err(Error::Shape(format!(
                    "layer {i}: activation {:?} is not supported on the GPU",
                    mlp.act
                )));
            }
        }
        if t.lm_head.act_quant.is_some() {
            return Err(Error::Shape(
                "activation quantization of the output projection does not run on the GPU".into(),
            ));
        }
        let lm_head = upload_linear(be, &t.lm_head, None, &mut formats)?.w;
        let (h, qd, kvd, ffn) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        let n = CHUNK;
        let bufs = Buffers {
            x: be.alloc(n * h)?,
            xn: be.alloc(n * h)?,
            q_raw: be.alloc(n * qd)?,
            q: be.alloc(n * qd)?,
            k_raw: be.alloc(n * kvd)?,
            k: be.alloc(n * kvd)?,
            v: be.alloc(n * kvd)?,
            att: be.alloc(n * qd)?,
            o: be.alloc(n * h)?,
            o_normed: be.alloc(n * h)?,
            xq: be.alloc(n * h.max(qd).max(ffn))?,
            g: be.alloc(n * ffn)?,
            u: be.alloc(n * ffn)?,
            h: be.alloc(n * ffn)?,
        };
        let proj = std::cell::RefCell::new(ProjectionBuffers {
            x: be.alloc(n * h)?,
            logits: be.alloc(n * c.vocab_size)?,
        });
        Ok(GpuModel {
            be,
            config: c.clone(),
            embed: t.embed.clone(),
            layers,
            final_norm: norm_weights(be, &t.final_norm, c.norm_weight_offset)?,
            lm_head,
            bufs,
            proj,
            kv,
            max_seq,
            pos: 0,
            formats,
        })
    }

    /// The KV cache element type.
    pub fn kv_cache(&self) -> GpuKvCache {
        self.kv
    }

    /// How many matrices were uploaded in each device layout ("q4_k", "f32 (from q5_0)", ...).
    pub fn formats(&self) -> &BTreeMap<String, usize> {
        &self.formats
    }

    /// Device bytes of all weight matrices.
    pub fn weight_bytes(&self) -> usize {
        let per_layer: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]
                    .iter()
                    .map(|m| m.w.bytes())
                    .sum::<usize>()
            })
            .sum();
        per_layer + self.lm_head.bytes()
    }

    fn elementwise(n: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: ((n as u32).div_ceil(256), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    fn linear(
        be: &CudaBackend,
        l: &GpuLinear,
        x: &CudaSlice<f32>,
        b: usize,
        y: &mut CudaSlice<f32>,
        xq: &mut CudaSlice<f32>,
    ) -> Result<()> {
        match l.act {
            Some(act) => {
                act_quantize(be, act, x, xq, b, l.w.cols)?;
                be.gemv(&l.w, xq, b, y)?;
            }
            None => be.gemv(&l.w, x, b, y)?,
        }
        if let Some(bias) = &l.bias {
            let (n, total) = (l.w.rows as i32, (b * l.w.rows) as i32);
            let f = be.func("add_bias_f32")?;
            be.launch(f, Self::elementwise(b * l.w.rows), |a| {
                a.arg(y).arg(bias).arg(&n).arg(&total)
            })?;
        }
        Ok(())
    }

    /// Run one chunk of at most CHUNK tokens at positions self.pos..; leaves the final-normed
    /// hidden rows in bufs.xn.
    fn forward_chunk(&mut self, tokens: &[u32]) -> Result<()> {
        let be = self.be;
        let c = &self.config;
        let b = tokens.len();
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (nh, nkv) = (c.num_heads, c.num_kv_heads);
        let pos0 = self.pos;
        let mut x = vec![0f32; b * h];
        for (t, &id) in tokens.iter().enumerate() {
            self.embed.row(id as usize, &mut x[t * h..(t + 1) * h]);
        }
        if let Some(s) = c.embedding_scale {
            x.iter_mut().for_each(|v| *v *= s);
        }
        let bf = &mut self.bufs;
        drv(
            "upload embeddings",
            be.stream().memcpy_htod(&x, &mut bf.x.slice_mut(0..b * h)),
        )?;
        be.pdl_fence();
        let eps = c.rms_norm_eps;
        let rows = b as u32;
        for l in &mut self.layers {
            be.rmsnorm(&bf.x, &l.attn_norm, &mut bf.xn, b, h, eps)?;
            // q and k land in q/k directly, or in *_raw first when a per-head norm follows.
            match &l.q_norm {
                Some(nw) => {
                    Self::linear(be, &l.q, &bf.xn, b, &mut bf.q_raw, &mut bf.xq)?;
                    be.rmsnorm(&bf.q_raw, nw, &mut bf.q, b * nh, hd, eps)?;
                }
                None => Self::linear(be, &l.q, &bf.xn, b, &mut bf.q, &mut bf.xq)?,
            }
            match &l.k_norm {
                Some(nw) => {
                    Self::linear(be, &l.k, &bf.xn, b, &mut bf.k_raw, &mut bf.xq)?;
                    be.rmsnorm(&bf.k_raw, nw, &mut bf.k, b * nkv, hd, eps)?;
                }
                None => Self::linear(be, &l.k, &bf.xn, b, &mut bf.k, &mut bf.xq)?,
            }
            Self::linear(be, &l.v, &bf.xn, b, &mut bf.v, &mut bf.xq)?;
            let rope = be.func("rope_table_f32")?;
            let (bi, hdi, rh, p0) = (b as i32, hd as i32, l.rope.rot_half as i32, pos0 as i32);
            let neox = l.rope.neox as i32;
            for (buf, heads) in [(&mut bf.q, nh), (&mut bf.k, nkv)] {
                let hi = heads as i32;
                be.launch(rope, Self::elementwise(b * heads * l.rope.rot_half), |a| {
                    a.arg(buf)
                        .arg(&bi)
                        .arg(&hi)
                        .arg(&hdi)
                        .arg(&rh)
                        .arg(&l.rope.inv_freq)
                        .arg(&p0)
                        .arg(&neox)
                        .arg(&l.rope.mscale)
                })?;
            }
            let (nkvi, ms) = (nkv as i32, self.max_seq as i32);
            let attn_cfg = LaunchConfig {
                grid_dim: (nh as u32, rows, 1),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            };
            let (nhi, window) = (nh as i32, l.window.map_or(0, |w| w as i32));
            match &mut l.cache {
                LayerCache::Bf16 { k, v } => {
                    let f = be.func("store_kv_rows_bf16")?;
                    be.launch(f, Self::elementwise(b * nkv * hd), |a| {
                        a.arg(&bf.k)
                            .arg(&bf.v)
                            .arg(k)
                            .arg(v)
                            .arg(&bi)
                            .arg(&nkvi)
                            .arg(&hdi)
                            .arg(&ms)
                            .arg(&p0)
                    })?;
                    let f = be.func("attn_rows_bf16")?;
                    be.launch(f, attn_cfg, |a| {
                        a.arg(&bf.q)
                            .arg(k)
                            .arg(v)
                            .arg(&mut bf.att)
                            .arg(&nhi)
                            .arg(&nkvi)
                            .arg(&hdi)
                            .arg(&ms)
                            .arg(&p0)
                            .arg(&l.scale)
                            .arg(&window)
                    })?;
                }
                LayerCache::Fp8 {
                    k,
                    v,
                    k_scale,
                    v_scale,
                } => {
                    // One warp per (token, kv head) row, 4 rows per block.
                    let f = be.func("store_kv_rows_fp8")?;
                    let cfg = LaunchConfig {
                        grid_dim: (((b * nkv) as u32).div_ceil(4), 1, 1),
                        block_dim: (128, 1, 1),
                        shared_mem_bytes: 0,
                    };
                    be.launch(f, cfg, |a| {
                        a.arg(&bf.k)
                            .arg(&bf.v)
                            .arg(k)
                            .arg(v)
                            .arg(k_scale)
                            .arg(v_scale)
                            .arg(&bi)
                            .arg(&nkvi)
                            .arg(&hdi)
                            .arg(&ms)
                            .arg(&p0)
                    })?;
                    let f = be.func("attn_rows_fp8")?;
                    be.launch(f, attn_cfg, |a| {
                        a.arg(&bf.q)
                            .arg(k)
                            .arg(v)
                            .arg(k_scale)
                            .arg(v_scale)
                            .arg(&mut bf.att)
                            .arg(&nhi)
                            .arg(&nkvi)
                            .arg(&hdi)
                            .arg(&ms)
                            .arg(&p0)
                            .arg(&l.scale)
                            .arg(&window)
                    })?;
                }
            }
            Self::linear(be, &l.o, &bf.att, b, &mut bf.o, &mut bf.xq)?;
            match &l.post_attn_norm {
                Some(nw) => {
                    be.rmsnorm(&bf.o, nw, &mut bf.o_normed, b, h, eps)?;
                    be.add(&mut bf.x, &bf.o_normed, b * h)?;
                }
                None => be.add(&mut bf.x, &bf.o, b * h)?,
            }
            be.rmsnorm(&bf.x, &l.ffn_norm, &mut bf.xn, b, h, eps)?;
            Self::linear(be, &l.gate, &bf.xn, b, &mut bf.g, &mut bf.xq)?;
            Self::linear(be, &l.up, &bf.xn, b, &mut bf.u, &mut bf.xq)?;
            let n_ffn = (b * c.intermediate_size) as i32;
            let gelu = (c.activation == Activation::GeluTanh) as i32;
            let f = be.func("gated_act_f32")?;
            be.launch(f, Self::elementwise(n_ffn as usize), |a| {
                a.arg(&bf.g)
                    .arg(&bf.u)
                    .arg(&mut bf.h)
                    .arg(&n_ffn)
                    .arg(&gelu)
            })?;
            if let Some(r) = &l.down_rotation {
                r.apply(be, &mut bf.h, b)?;
            }
            Self::linear(be, &l.down, &bf.h, b, &mut bf.o, &mut bf.xq)?;
            match &l.post_ffn_norm {
                Some(nw) => {
                    be.rmsnorm(&bf.o, nw, &mut bf.o_normed, b, h, eps)?;
                    be.add(&mut bf.x, &bf.o_normed, b * h)?;
                }
                None => be.add(&mut bf.x, &bf.o, b * h)?,
            }
        }
        be.rmsnorm(&bf.x, &self.final_norm, &mut bf.xn, b, h, eps)?;
        self.pos += b;
        Ok(())
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        if self.pos + tokens.len() > self.max_seq {
            return Err(Error::Shape(format!(
                "sequence of {} tokens exceeds the KV cache capacity {}",
                self.pos + tokens.len(),
                self.max_seq
            )));
        }
        if let Some(&id) = tokens
            .iter()
            .find(|&&id| id as usize >= self.config.vocab_size)
        {
            return Err(Error::Shape(format!(
                "token id {id} is outside the vocabulary ({})",
                self.config.vocab_size
            )));
        }
        Ok(())
    }

    /// Final-normed hidden rows of tokens `logits_from..` (see [`Decoder::forward_hidden`]).
    pub fn hidden(&mut self, tokens: &[u32], logits_from: usize) -> Result<Vec<f32>> {
        self.check_tokens(tokens)?;
        let h = self.config.hidden_size;
        let mut out = Vec::with_capacity(tokens.len().saturating_sub(logits_from) * h);
        for (ci, chunk) in tokens.chunks(CHUNK).enumerate() {
            self.forward_chunk(chunk)?;
            let t0 = ci * CHUNK;
            let first = logits_from.max(t0);
            if first < t0 + chunk.len() {
                let rows = drv(
                    "download hidden states",
                    self.be
                        .stream()
                        .clone_dtoh(&self.bufs.xn.slice((first - t0) * h..chunk.len() * h)),
                )?;
                out.extend_from_slice(&rows);
            }
        }
        Ok(out)
    }

    /// Logits of hidden rows, CHUNK rows per output GEMV.
    pub fn project(&self, hidden: &[f32]) -> Result<Vec<f32>> {
        let (h, vocab) = (self.config.hidden_size, self.config.vocab_size);
        if hidden.len() % h != 0 {
            return Err(Error::Shape(format!(
                "{} hidden values are not rows of {h}",
                hidden.len()
            )));
        }
        let mut pb = self.proj.borrow_mut();
        let ProjectionBuffers { x, logits } = &mut *pb;
        let mut out = Vec::with_capacity(hidden.len() / h * vocab);
        for rows in hidden.chunks(CHUNK * h) {
            let b = rows.len() / h;
            drv(
                "upload hidden states",
                self.be
                    .stream()
                    .memcpy_htod(rows, &mut x.slice_mut(0..b * h)),
            )?;
            self.be.pdl_fence();
            self.be.gemv(&self.lm_head, x, b, logits)?;
            let l = drv(
                "download logits",
                self.be.stream().clone_dtoh(&logits.slice(0..b * vocab)),
            )?;
            out.extend_from_slice(&l);
        }
        Ok(out)
    }
}

/// W8A8 dynamic per-token activation quantization on the device: `y` = each of the first `rows`
/// rows of `x` (`cols` values) quantized and dequantized exactly as
/// [`ActQuant::fake_quantize_row`] does on the CPU.
pub fn act_quantize(
    be: &CudaBackend,
    act: ActQuant,
    x: &CudaSlice<f32>,
    y: &mut CudaSlice<f32>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    if x.len() < rows * cols || y.len() < rows * cols {
        return Err(Error::Shape(format!(
            "act_quantize: buffers of {} and {} values hold fewer than {rows} rows of {cols}",
            x.len(),
            y.len()
        )));
    }
    let f = be.func("act_quant_rows_f32")?;
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let (n, kind) = (cols as i32, (act == ActQuant::Fp8E4M3) as i32);
    be.launch(f, cfg, |a| a.arg(x).arg(y).arg(&n).arg(&kind))
}

/// Upload one linear layer in the best device layout for its stored type.
fn upload_linear(
    be: &CudaBackend,
    lin: &Linear,
    bias: Option<&[f32]>,
    formats: &mut BTreeMap<String, usize>,
) -> Result<GpuLinear> {
    let wm = lin.matrix();
    let (rows, cols) = (wm.rows, wm.cols);
    let native = match wm.dtype {
        GgmlType::Q4_K => Some(WeightFormat::Q4K),
        GgmlType::Q6_K => Some(WeightFormat::Q6K),
        GgmlType::Q8_0 => Some(WeightFormat::Q8_0),
        GgmlType::LB_NVFP4 => Some(WeightFormat::Nvfp4),
        GgmlType::MXFP4 => Some(WeightFormat::Mxfp4),
        GgmlType::BF16 if cols % 8 == 0 => Some(WeightFormat::Bf16),
        _ => None,
    };
    let (w, label) = if let Some(f) = native {
        (
            be.upload_matrix(f, rows, cols, wm.data, None)?,
            f.name().to_string(),
        )
    } else if let Some((words, scales)) = (wm.dtype == GgmlType::Q4_0)
        .then(|| q4_0_as_int4_g128(wm.data, rows, cols))
        .flatten()
    {
        let f = WeightFormat::Int4G128Tiled;
        (
            be.upload_matrix(f, rows, cols, &words, Some(&scales))?,
            f.name().to_string(),
        )
    } else {
        let mut vals = vec![0f32; rows * cols];
        for r in 0..rows {
            wm.dequantize_row_into(r, &mut vals[r * cols..(r + 1) * cols]);
        }
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let label = if wm.dtype == GgmlType::F32 {
            "f32".to_string()
        } else {
            format!("f32 (from {})", wm.dtype)
        };
        (
            be.upload_matrix(WeightFormat::F32, rows, cols, &bytes, None)?,
            label,
        )
    };
    *formats.entry(label).or_insert(0) += 1;
    let bias = bias.map(|b| be.upload(b)).transpose()?;
    Ok(GpuLinear {
        w,
        bias,
        act: lin.act_quant,
    })
}

impl Decoder for GpuModel<'_> {
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn capacity(&self) -> usize {
        self.max_seq
    }
    fn reset(&mut self) {
        self.pos = 0;
    }
    fn forward_hidden(
        &mut self,
        tokens: &[u32],
        logits_from: usize,
    ) -> lowbit_model::Result<Vec<f32>> {
        self.hidden(tokens, logits_from).map_err(model_err)
    }
    fn logits(&self, hidden: &[f32]) -> lowbit_model::Result<Vec<f32>> {
        self.project(hidden).map_err(model_err)
    }
}
