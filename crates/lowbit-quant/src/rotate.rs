//! Fusing a randomized Hadamard rotation of the residual stream (QuaRot / SpinQuant "R1") into the
//! weights of a pre-norm model, so outliers of the hidden dimension are spread out before
//! quantization while the model computes the same function.
//!
//! With the residual stream carried as `x · Q` (row vectors, `Q` orthogonal):
//! - every RMSNorm weight `g` is first folded into the linears that read it (`W ← W · diag(g)`:
//!   q/k/v ← input_layernorm, gate/up ← post_attention_layernorm, lm_head ← the final norm) and
//!   set to 1, because RMSNorm commutes with an orthogonal `Q` only without a weight;
//! - `embed_tokens ← E · Q`, readers of the residual (q/k/v/gate/up/lm_head) `← W · Q`, writers
//!   (o_proj/down_proj, and their biases) `← Qᵀ · W`;
//! - a tied output head is written explicitly (it differs from the embedding after folding).
//!
//! q/k/v biases and Qwen3's per-head q/k norms act on outputs and are unchanged. Architectures
//! with norms *after* a sublayer (Gemma 3's sandwich norms) are refused: their residual additions
//! pass through an RMSNorm with a weight, so R1 cannot be fused and would have to run online.
//!
//! The rotated tensors are written as f32 to a scratch file next to the output and memory-mapped,
//! one tensor (or a slice of rows) at a time, so memory stays bounded by one tensor; the file is
//! unlinked once mapped.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lowbit_formats::GgmlType;
use lowbit_model::config::Arch;
use lowbit_model::{Backing, ModelConfig, TensorEntry, WeightStore};
use serde_json::{json, Value};

use crate::hadamard::Hadamard;

/// What `--rotate` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotateKind {
    None,
    /// R1: the residual stream, fused into the weights (pre-norm dense models).
    Hadamard,
    /// R4: the down projection's input, `W_down ← W_down · Q` offline and `x ← x · Q` online at
    /// inference (any dense architecture, Gemma 3 included).
    Online,
    /// Both.
    HadamardOnline,
}

impl RotateKind {
    pub fn parse(s: &str) -> Result<RotateKind> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(RotateKind::None),
            "hadamard" | "r1" => Ok(RotateKind::Hadamard),
            "online" | "r4" => Ok(RotateKind::Online),
            "hadamard+online" | "r1+r4" => Ok(RotateKind::HadamardOnline),
            other => bail!(
                "unknown rotation '{other}' (expected none, hadamard (R1, fused), online (R4, the \
                 down projection's input, applied at inference) or hadamard+online)"
            ),
        }
    }

    pub fn fused(self) -> bool {
        matches!(self, RotateKind::Hadamard | RotateKind::HadamardOnline)
    }

    pub fn online(self) -> bool {
        matches!(self, RotateKind::Online | RotateKind::HadamardOnline)
    }
}

/// An online rotation: `x ← x · Q` on the input of `module` in every layer at inference, with
/// `Q` the randomized Hadamard rotation of `seed` (the weights were multiplied by `Q` offline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineRotation {
    pub module: String,
    pub seed: u64,
    pub size: usize,
    pub base: usize,
}

/// Record `info`'s online rotations in `config`, so models built from it (calibration,
/// evaluation) apply them as the written checkpoint's loader will.
pub fn set_online_rotation(config: &mut ModelConfig, info: &RotationInfo) {
    config.online_rotations = info
        .online
        .iter()
        .map(|o| lowbit_model::config::OnlineRotationSpec {
            module: o.module.clone(),
            seed: o.seed,
            size: o.size,
        })
        .collect();
}

/// Seed of the online (R4) rotation, derived from the user's so R1 and R4 differ.
pub fn online_seed(seed: u64) -> u64 {
    seed ^ 0x5234_0000_0000_0004
}

/// The rotation applied, as recorded in config.json (`quantization_config.lowbit_rotation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationInfo {
    pub seed: u64,
    /// Rotation size (the hidden size); 0 when the residual stream is not rotated.
    pub size: usize,
    /// Dense Paley factor of the Hadamard matrix (1 when the size is a power of two).
    pub base: usize,
    /// Rotations the runtime applies online (R4 on the down projection's input).
    pub online: Vec<OnlineRotation>,
}

impl RotationInfo {
    pub fn to_json(&self) -> Value {
        let online: Vec<Value> = self
            .online
            .iter()
            .map(|o| {
                json!({
                    "module": o.module,
                    "seed": o.seed,
                    "size": o.size,
                    "hadamard_base": o.base,
                })
            })
            .collect();
        let fused: Vec<&str> = if self.size > 0 {
            vec!["residual"]
        } else {
            vec![]
        };
        json!({
            "kind": "hadamard",
            "seed": self.seed,
            "size": self.size,
            "hadamard_base": self.base,
            "fused": fused,
            "norms_folded": self.size > 0,
            "online": online,
        })
    }
}

/// R4: multiply every layer's down projection by `Q` on the input side (`W ← W · Q`, Q of the
/// intermediate size), leaving every other tensor as it is; the runtime rotates the down
/// projection's input by the same `Q`. Works for any dense architecture (the down projection's
/// input is the gated activation, touched by no norm). `prior` (an R1 rotation already applied)
/// is kept in the returned info.
pub fn rotate_down_online(
    c: &ModelConfig,
    w: &WeightStore,
    seed: u64,
    scratch_dir: &Path,
    prior: Option<RotationInfo>,
) -> Result<Rotated> {
    if c.moe.is_some() {
        bail!(
            "--rotate online is not supported for {}: mixture-of-experts layers are not rotated by \
             lowbit yet",
            c.arch.name()
        );
    }
    let q = Hadamard::new(c.intermediate_size, seed).with_context(|| {
        format!(
            "--rotate online of {} (intermediate size {})",
            c.arch.name(),
            c.intermediate_size
        )
    })?;
    let mut out = Scratch::create(scratch_dir)?;
    let names: Vec<String> = w.names().map(String::from).collect();
    let mut rotated = 0;
    for name in &names {
        if name.starts_with("model.layers.") && name.ends_with(".mlp.down_proj.weight") {
            write_reader(&mut out, w, name, name, None, &q)?;
            rotated += 1;
        } else {
            let t = w.require(name)?;
            let start = out.begin()?;
            out.write(t.data)?;
            out.end(name, t.dtype, t.shape.to_vec(), start);
        }
    }
    if rotated != c.num_layers {
        bail!(
            "{}: found {rotated} mlp.down_proj weights for {} layers; --rotate online needs one per layer",
            w.path.display(),
            c.num_layers
        );
    }
    let weights = out.finish(&w.path)?;
    let mut info = prior.unwrap_or(RotationInfo {
        seed,
        size: 0,
        base: 1,
        online: Vec::new(),
    });
    info.online.push(OnlineRotation {
        module: "down_proj".into(),
        seed,
        size: q.size(),
        base: q.base(),
    });
    Ok(Rotated {
        config: c.clone(),
        weights,
        info,
    })
}

/// A model with R1 fused in: a plain model (norm weights 1, output head untied).
pub struct Rotated {
    pub config: ModelConfig,
    pub weights: WeightStore,
    pub info: RotationInfo,
}

/// Whether R1 can be fused into this architecture, and why not.
pub fn check_supported(c: &ModelConfig) -> Result<()> {
    let why = match c.arch {
        Arch::Llama | Arch::Qwen2 | Arch::Qwen3 => None,
        Arch::Gemma3 => Some(
            "its post-attention and post-feedforward RMSNorms (sandwich norms) normalize each \
             sublayer's output with a weight before it joins the residual stream, so a rotation \
             of the residual cannot be fused into the weights; use --rotate online (R4, the down \
             projection's input, rotated at inference)",
        ),
        Arch::Mixtral | Arch::Qwen2Moe | Arch::Qwen3Moe => Some(
            "mixture-of-experts layers (router and every expert) are not rotated by lowbit yet",
        ),
    };
    if let Some(why) = why {
        bail!(
            "--rotate hadamard is not supported for {}: {why}",
            c.arch.name()
        );
    }
    if c.post_norms || c.moe.is_some() {
        bail!(
            "--rotate hadamard is not supported for this {} model: it has post-norms or experts",
            c.arch.name()
        );
    }
    Ok(())
}

/// How a tensor touches the residual stream.
enum Role {
    Embed,
    /// An RMSNorm weight over the residual: folded away, stored as 1.
    Norm,
    /// A linear reading the normed residual: `W ← W · diag(g) · Q`, g from this norm tensor.
    Reader {
        norm: String,
    },
    /// A linear writing into the residual: `W ← Qᵀ · W`.
    Writer,
    /// A bias added to the residual: `b ← b · Q`.
    WriterBias,
    /// Acts on a sublayer's outputs only: unchanged.
    Keep,
}

fn role(name: &str, c: &ModelConfig) -> Result<Role> {
    match name {
        "model.embed_tokens.weight" => return Ok(Role::Embed),
        "model.norm.weight" => return Ok(Role::Norm),
        "lm_head.weight" => {
            return Ok(Role::Reader {
                norm: "model.norm.weight".into(),
            })
        }
        _ => {}
    }
    let unknown = || {
        anyhow::anyhow!(
            "tensor {name}: the Hadamard rotation does not know how this tensor touches the \
             residual stream of a {} model",
            c.arch.name()
        )
    };
    let rest = name.strip_prefix("model.layers.").ok_or_else(unknown)?;
    let (i, module) = rest.split_once('.').ok_or_else(unknown)?;
    let i: usize = i.parse().map_err(|_| unknown())?;
    if i >= c.num_layers {
        bail!(
            "tensor {name}: layer {i} is beyond the {} layers of the config",
            c.num_layers
        );
    }
    let norm = |n: &str| Role::Reader {
        norm: format!("model.layers.{i}.{n}.weight"),
    };
    Ok(match module {
        "input_layernorm.weight" | "post_attention_layernorm.weight" => Role::Norm,
        "self_attn.q_proj.weight" | "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => {
            norm("input_layernorm")
        }
        "mlp.gate_proj.weight" | "mlp.up_proj.weight" => norm("post_attention_layernorm"),
        "self_attn.o_proj.weight" | "mlp.down_proj.weight" => Role::Writer,
        "self_attn.o_proj.bias" | "mlp.down_proj.bias" => Role::WriterBias,
        "self_attn.q_proj.bias"
        | "self_attn.k_proj.bias"
        | "self_attn.v_proj.bias"
        | "self_attn.q_norm.weight"
        | "self_attn.k_norm.weight"
        | "mlp.gate_proj.bias"
        | "mlp.up_proj.bias" => Role::Keep,
        _ => return Err(unknown()),
    })
}

/// The f32 scratch file the rotated tensors are written to; removed when dropped.
struct Scratch {
    path: PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
    pos: usize,
    /// (name, dtype, shape, offset, len)
    entries: Vec<(String, GgmlType, Vec<usize>, usize, usize)>,
}

impl Scratch {
    fn create(dir: &Path) -> Result<Scratch> {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let k = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!(".lowbit-rotate-{}-{k}.bin", std::process::id()));
        let file = std::fs::File::create(&path).with_context(|| {
            format!("cannot create the rotation scratch file {}", path.display())
        })?;
        Ok(Scratch {
            path,
            file: Some(std::io::BufWriter::new(file)),
            pos: 0,
            entries: Vec::new(),
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let f = self.file.as_mut().context("scratch file already closed")?;
        f.write_all(bytes)
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        self.pos += bytes.len();
        Ok(())
    }

    fn write_f32(&mut self, v: &[f32]) -> Result<()> {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.write(&bytes)
    }

    /// Start a tensor at a 64-byte aligned offset.
    fn begin(&mut self) -> Result<usize> {
        let pad = (64 - self.pos % 64) % 64;
        self.write(&vec![0u8; pad])?;
        Ok(self.pos)
    }

    fn end(&mut self, name: &str, dtype: GgmlType, shape: Vec<usize>, start: usize) {
        self.entries
            .push((name.to_string(), dtype, shape, start, self.pos - start));
    }

    /// Map the file and build the store (the file is unlinked; the map keeps its pages).
    fn finish(mut self, source_path: &Path) -> Result<WeightStore> {
        let f = self.file.take().context("scratch file already closed")?;
        f.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        let mut store = WeightStore::new(source_path);
        let backing = if self.pos == 0 {
            Backing::Owned(Vec::new())
        } else {
            Backing::map_file(&self.path)?
        };
        let b = store.add_backing(backing);
        for (name, dtype, shape, offset, len) in std::mem::take(&mut self.entries) {
            store.insert(
                name,
                TensorEntry {
                    dtype,
                    shape,
                    backing: b,
                    offset,
                    len,
                },
            )?;
        }
        Ok(store)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.file = None;
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The effective weight `g` of a norm tensor (stored value + the config's offset), checked.
fn norm_weight(w: &WeightStore, name: &str, c: &ModelConfig) -> Result<Vec<f32>> {
    let mut g = w
        .to_f32(name)
        .with_context(|| format!("the rotation folds norm {name} into the next linears"))?;
    if g.len() != c.hidden_size {
        bail!(
            "{}: tensor {name} has {} values, expected the hidden size {}",
            w.path.display(),
            g.len(),
            c.hidden_size
        );
    }
    g.iter_mut().for_each(|v| *v += c.norm_weight_offset);
    Ok(g)
}

/// Write `src` (a 2-D tensor with rows of the hidden size) as `W · diag(g) · Q`, a slice of rows
/// at a time (`g` = None: no folding).
fn write_reader(
    out: &mut Scratch,
    w: &WeightStore,
    src: &str,
    dst: &str,
    g: Option<&[f32]>,
    q: &Hadamard,
) -> Result<()> {
    let t = w.require(src)?;
    let n = q.size();
    if t.shape.len() != 2 || t.shape[1] != n {
        bail!(
            "{}: tensor {src} has shape {:?}, expected rows of the hidden size {n}",
            w.path.display(),
            t.shape
        );
    }
    let rows = t.shape[0];
    let row_bytes = t.dtype.byte_len(n).with_context(|| {
        format!(
            "{}: tensor {src}: rows of {n} values are not whole {} blocks",
            w.path.display(),
            t.dtype
        )
    })?;
    let chunk_rows = ((1 << 20) / n).max(1);
    let start = out.begin()?;
    let mut buf = Vec::new();
    for r0 in (0..rows).step_by(chunk_rows) {
        let r1 = (r0 + chunk_rows).min(rows);
        buf.resize((r1 - r0) * n, 0f32);
        lowbit_formats::dequantize(t.dtype, &t.data[r0 * row_bytes..r1 * row_bytes], &mut buf)
            .map_err(|e| anyhow::anyhow!("{}: tensor {src}: {e}", w.path.display()))?;
        if let Some(g) = g {
            for row in buf.chunks_exact_mut(n) {
                row.iter_mut().zip(g).for_each(|(v, s)| *v *= s);
            }
        }
        q.apply_rows(&mut buf)?;
        out.write_f32(&buf)?;
    }
    out.end(dst, GgmlType::F32, vec![rows, n], start);
    Ok(())
}

/// Write a linear that adds into the residual (`hidden × k`) as `Qᵀ · W`.
fn write_writer(out: &mut Scratch, w: &WeightStore, name: &str, q: &Hadamard) -> Result<()> {
    let e = w.entry(name).expect("listed");
    let n = q.size();
    if e.shape.len() != 2 || e.shape[0] != n {
        bail!(
            "{}: tensor {name} has shape {:?}, expected {n} rows (the hidden size)",
            w.path.display(),
            e.shape
        );
    }
    let k = e.shape[1];
    let v = w.to_f32(name)?;
    // Qᵀ W = (Wᵀ Q)ᵀ: rotate the rows of the transpose.
    let mut t = vec![0f32; n * k];
    for r in 0..n {
        for c in 0..k {
            t[c * n + r] = v[r * k + c];
        }
    }
    drop(v);
    q.apply_rows(&mut t)?;
    let mut o = vec![0f32; n * k];
    for c in 0..k {
        for r in 0..n {
            o[r * k + c] = t[c * n + r];
        }
    }
    let start = out.begin()?;
    out.write_f32(&o)?;
    out.end(name, GgmlType::F32, vec![n, k], start);
    Ok(())
}

/// Fuse the randomized Hadamard rotation of `seed` into a Llama-family model. The scratch file
/// (the rotated model in f32) is created in `scratch_dir`.
pub fn rotate_model(
    c: &ModelConfig,
    w: &WeightStore,
    seed: u64,
    scratch_dir: &Path,
) -> Result<Rotated> {
    check_supported(c)?;
    let q = Hadamard::new(c.hidden_size, seed)
        .with_context(|| format!("--rotate hadamard of {} (hidden size)", c.arch.name()))?;
    let roles = w
        .names()
        .map(|n| Ok((n.to_string(), role(n, c)?)))
        .collect::<Result<Vec<_>>>()?;
    let mut out = Scratch::create(scratch_dir)?;
    for (name, r) in &roles {
        match r {
            Role::Embed => write_reader(&mut out, w, name, name, None, &q)?,
            Role::Reader { norm } => {
                let g = norm_weight(w, norm, c)?;
                write_reader(&mut out, w, name, name, Some(&g), &q)?;
            }
            Role::Norm => {
                norm_weight(w, name, c)?;
                let start = out.begin()?;
                out.write_f32(&vec![1.0 - c.norm_weight_offset; c.hidden_size])?;
                out.end(name, GgmlType::F32, vec![c.hidden_size], start);
            }
            Role::Writer => write_writer(&mut out, w, name, &q)?,
            Role::WriterBias => {
                let mut b = w.to_f32(name)?;
                if b.len() != c.hidden_size {
                    bail!(
                        "{}: tensor {name} has {} values, expected the hidden size {}",
                        w.path.display(),
                        b.len(),
                        c.hidden_size
                    );
                }
                q.apply_row(&mut b);
                let start = out.begin()?;
                out.write_f32(&b)?;
                out.end(name, GgmlType::F32, vec![c.hidden_size], start);
            }
            Role::Keep => {
                let t = w.require(name)?;
                let start = out.begin()?;
                out.write(t.data)?;
                out.end(name, t.dtype, t.shape.to_vec(), start);
            }
        }
    }
    // A tied (or dropped) output head is the embedding; after folding it no longer is.
    if !w.contains("lm_head.weight") {
        let g = norm_weight(w, "model.norm.weight", c)?;
        write_reader(
            &mut out,
            w,
            "model.embed_tokens.weight",
            "lm_head.weight",
            Some(&g),
            &q,
        )?;
    }
    let weights = out.finish(&w.path)?;
    let mut config = c.clone();
    config.tie_word_embeddings = false;
    Ok(Rotated {
        config,
        weights,
        info: RotationInfo {
            seed,
            size: q.size(),
            base: q.base(),
            online: Vec::new(),
        },
    })
}

/// Make a source config.json describe the rotated model: the output head is no longer tied.
pub fn untie_config_json(v: &mut Value) {
    if let Some(o) = v.as_object_mut() {
        o.insert("tie_word_embeddings".into(), json!(false));
        if let Some(t) = o.get_mut("text_config").and_then(|t| t.as_object_mut()) {
            t.insert("tie_word_embeddings".into(), json!(false));
        }
    }
}
