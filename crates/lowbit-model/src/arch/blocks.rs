//! Shared building blocks of decoder-only transformers: linear layers over stored weights,
//! attention, gated MLPs and mixture-of-experts. Architecture files assemble these.

use lowbit_cpu::attention::{attention, KvCache};
use lowbit_cpu::ops::{self, Rope};
use lowbit_cpu::WeightMatrix;
use lowbit_formats::GgmlType;

use crate::config::Activation;
use crate::error::{ModelError, Result};
use crate::weights::{TensorHandle, WeightStore};

/// A `rows × cols` weight kept in its stored type (possibly one expert's slice of a 3-D tensor).
#[derive(Clone, Debug)]
pub struct Linear {
    pub tensor: TensorHandle,
    pub rows: usize,
    pub cols: usize,
    /// Byte offset into the tensor's data (non-zero for an expert slice).
    pub byte_offset: usize,
    /// W8A8: quantize each input token dynamically before the matmul (see `act_quant.rs`).
    pub act_quant: Option<super::act_quant::ActQuant>,
}

impl Linear {
    /// Load a 2-D weight `name` and check it is `rows × cols`.
    pub fn load(w: &WeightStore, name: &str, rows: usize, cols: usize) -> Result<Linear> {
        let t = w.handle(name)?;
        // A single-row weight may be stored as a vector (GGUF's shared-expert gate).
        if t.shape != [rows, cols] && !(rows == 1 && t.shape == [cols]) {
            return Err(ModelError::tensor(
                &w.path,
                name,
                format!("expected shape [{rows}, {cols}], found {:?}", t.shape),
            ));
        }
        check_cols(w, name, t.dtype, cols)?;
        Ok(Linear {
            tensor: t,
            rows,
            cols,
            byte_offset: 0,
            act_quant: None,
        })
    }

    /// Expert `e` of a 3-D tensor `[experts, rows, cols]`.
    pub fn load_expert(
        w: &WeightStore,
        name: &str,
        e: usize,
        experts: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Linear> {
        let t = w.handle(name)?;
        if t.shape != [experts, rows, cols] {
            return Err(ModelError::tensor(
                &w.path,
                name,
                format!(
                    "expected shape [{experts}, {rows}, {cols}], found {:?}",
                    t.shape
                ),
            ));
        }
        let row_bytes = check_cols(w, name, t.dtype, cols)?;
        Ok(Linear {
            byte_offset: e * rows * row_bytes,
            tensor: t,
            rows,
            cols,
            act_quant: None,
        })
    }

    pub fn matrix(&self) -> WeightMatrix<'_> {
        let rb = self
            .tensor
            .dtype
            .byte_len(self.cols)
            .expect("checked at load");
        let data = &self.tensor.data()[self.byte_offset..self.byte_offset + rb * self.rows];
        WeightMatrix {
            dtype: self.tensor.dtype,
            rows: self.rows,
            cols: self.cols,
            data,
        }
    }

    /// `x` is `tokens × cols`; returns `tokens × rows`.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        // W8A8 checkpoints only (act_quant.rs): one predictable branch on the hot path otherwise.
        let xq;
        let x = match self.act_quant {
            Some(a) => {
                xq = a.fake_quantize_tokens(x, self.cols);
                &xq[..]
            }
            None => x,
        };
        let tokens = x.len() / self.cols;
        let mut y = vec![0f32; tokens * self.rows];
        lowbit_cpu::matmul(x, self.matrix(), &mut y);
        y
    }

    /// Dequantize row `r` (embedding lookup).
    pub fn row(&self, r: usize, out: &mut [f32]) {
        self.matrix().dequantize_row_into(r, out);
    }
}

/// `x · Wᵀ` for several linears with the same input (one quantization of `x` and one parallel
/// call on the decode path, see [`lowbit_cpu::matmul_many`]).
pub fn forward_many<const N: usize>(ls: [&Linear; N], x: &[f32]) -> [Vec<f32>; N] {
    let cols = ls[0].cols;
    // W8A8 linears quantize their input first: Linear::forward does that.
    if ls.iter().any(|l| l.cols != cols || l.act_quant.is_some()) {
        return ls.map(|l| l.forward(x));
    }
    let tokens = x.len() / cols;
    let mut ys = ls.map(|l| vec![0f32; tokens * l.rows]);
    let ws = ls.map(|l| l.matrix());
    let mut outs: Vec<&mut [f32]> = ys.iter_mut().map(|y| y.as_mut_slice()).collect();
    lowbit_cpu::matmul_many(x, &ws, &mut outs);
    ys
}

fn check_cols(w: &WeightStore, name: &str, dtype: GgmlType, cols: usize) -> Result<usize> {
    let rb = dtype.byte_len(cols).ok_or_else(|| {
        ModelError::tensor(
            &w.path,
            name,
            format!("{cols} columns is not a multiple of the {dtype} block size"),
        )
    })?;
    // Make sure the type can be decoded at all before the first matmul.
    let mut probe = vec![0f32; cols];
    let t = w.handle(name)?;
    lowbit_formats::dequantize_row(dtype, &t.data()[..rb], &mut probe)
        .map_err(|e| ModelError::tensor(&w.path, name, e.to_string()))?;
    Ok(rb)
}

/// An f32 vector (norm weights, biases) of the given length.
pub fn load_vec(w: &WeightStore, name: &str, len: usize) -> Result<Vec<f32>> {
    let v = w.to_f32(name)?;
    if v.len() != len {
        return Err(ModelError::tensor(
            &w.path,
            name,
            format!("expected {len} values, found {}", v.len()),
        ));
    }
    Ok(v)
}

pub fn load_vec_opt(w: &WeightStore, name: &str, len: usize) -> Result<Option<Vec<f32>>> {
    if w.contains(name) {
        load_vec(w, name, len).map(Some)
    } else {
        Ok(None)
    }
}

fn add_bias(y: &mut [f32], b: &Option<Vec<f32>>) {
    if let Some(b) = b {
        for row in y.chunks_exact_mut(b.len()) {
            ops::add_assign(row, b);
        }
    }
}

/// Self-attention with optional q/k/v/o biases and per-head q/k RMSNorm.
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub q_bias: Option<Vec<f32>>,
    pub k_bias: Option<Vec<f32>>,
    pub v_bias: Option<Vec<f32>>,
    pub o_bias: Option<Vec<f32>>,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub norm_eps: f32,
    pub norm_offset: f32,
    pub rope: Rope,
    pub window: Option<usize>,
}

impl Attention {
    /// `x`: `tokens × hidden` (already normed). Appends K/V to `cache` at `pos0`.
    pub fn forward(&self, x: &[f32], cache: &mut KvCache, pos0: usize) -> Vec<f32> {
        let hd = self.head_dim;
        let [mut q, mut k, mut v] = forward_many([&self.q, &self.k, &self.v], x);
        add_bias(&mut q, &self.q_bias);
        add_bias(&mut k, &self.k_bias);
        add_bias(&mut v, &self.v_bias);
        if let Some(n) = &self.q_norm {
            ops::rmsnorm(&mut q, n, self.norm_eps, self.norm_offset);
        }
        if let Some(n) = &self.k_norm {
            ops::rmsnorm(&mut k, n, self.norm_eps, self.norm_offset);
        }
        self.rope.apply(&mut q, self.n_heads, hd, pos0);
        self.rope.apply(&mut k, self.n_kv_heads, hd, pos0);
        cache.write(pos0, &k, &v);
        let mut out = vec![0f32; q.len()];
        attention(
            &q,
            cache,
            self.n_heads,
            pos0,
            self.scale,
            self.window,
            &mut out,
        );
        let mut y = self.o.forward(&out);
        add_bias(&mut y, &self.o_bias);
        y
    }
}

/// Gated MLP: `down(act(gate(x)) * up(x))`.
pub struct Mlp {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
    pub act: Activation,
    /// R4 checkpoints: the down projection's weights were multiplied by `Q`, so its input is
    /// rotated by `Q` here (`config.online_rotations`).
    pub down_rotation: Option<std::sync::Arc<lowbit_cpu::hadamard::Hadamard>>,
}

impl Mlp {
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let [mut g, u] = forward_many([&self.gate, &self.up], x);
        ops::gated_activation(&mut g, &u, self.act == Activation::GeluTanh);
        self.rotate_down_input(&mut g);
        self.down.forward(&g)
    }

    /// Apply the online rotation (if any) to the down projection's input rows.
    pub fn rotate_down_input(&self, g: &mut [f32]) {
        if let Some(h) = &self.down_rotation {
            // The size was checked against the intermediate size when the model was loaded.
            h.apply_rows_f32(g)
                .expect("online rotation size equals the intermediate size");
        }
    }
}

/// Routed experts (softmax over all experts, top-k, optional renormalization) plus an optional
/// always-on shared expert scaled by `sigmoid(shared_gate · x)` (Qwen2-MoE).
pub struct Moe {
    pub router: Linear,
    pub experts: Vec<Mlp>,
    pub top_k: usize,
    pub norm_topk_prob: bool,
    pub shared: Option<(Mlp, Option<Linear>)>,
}

impl Moe {
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let hidden = self.router.cols;
        let tokens = x.len() / hidden;
        let n_exp = self.experts.len();
        let mut probs = self.router.forward(x);
        // Per expert: (token index, weight).
        let mut assigned: Vec<Vec<(usize, f32)>> = vec![Vec::new(); n_exp];
        for t in 0..tokens {
            let p = &mut probs[t * n_exp..(t + 1) * n_exp];
            ops::softmax(p);
            let mut idx: Vec<usize> = (0..n_exp).collect();
            // Stable sort by descending probability: ties go to the lower expert id, as torch.topk.
            idx.sort_by(|&a, &b| p[b].partial_cmp(&p[a]).unwrap_or(std::cmp::Ordering::Equal));
            let top = &idx[..self.top_k];
            let sum: f32 = top.iter().map(|&e| p[e]).sum();
            for &e in top {
                let wgt = if self.norm_topk_prob {
                    p[e] / sum
                } else {
                    p[e]
                };
                assigned[e].push((t, wgt));
            }
        }
        let mut out = vec![0f32; x.len()];
        for (e, list) in assigned.iter().enumerate() {
            if list.is_empty() {
                continue;
            }
            let mut xs = Vec::with_capacity(list.len() * hidden);
            for &(t, _) in list {
                xs.extend_from_slice(&x[t * hidden..(t + 1) * hidden]);
            }
            let ys = self.experts[e].forward(&xs);
            for (i, &(t, wgt)) in list.iter().enumerate() {
                for (o, y) in out[t * hidden..(t + 1) * hidden]
                    .iter_mut()
                    .zip(&ys[i * hidden..(i + 1) * hidden])
                {
                    *o += wgt * y;
                }
            }
        }
        if let Some((mlp, gate)) = &self.shared {
            let ys = mlp.forward(x);
            let g = gate.as_ref().map(|g| g.forward(x));
            for t in 0..tokens {
                let s = g
                    .as_ref()
                    .map(|g| 1.0 / (1.0 + (-g[t]).exp()))
                    .unwrap_or(1.0);
                for (o, y) in out[t * hidden..(t + 1) * hidden]
                    .iter_mut()
                    .zip(&ys[t * hidden..(t + 1) * hidden])
                {
                    *o += s * y;
                }
            }
        }
        out
    }
}

pub enum FeedForward {
    Dense(Mlp),
    Moe(Moe),
}

impl FeedForward {
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        match self {
            FeedForward::Dense(m) => m.forward(x),
            FeedForward::Moe(m) => m.forward(x),
        }
    }
}

/// One decoder layer. Pre-norm always; `post_attn_norm`/`post_ffn_norm` give Gemma's sandwich.
pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub attn: Attention,
    pub post_attn_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub ffn: FeedForward,
    pub post_ffn_norm: Option<Vec<f32>>,
}
