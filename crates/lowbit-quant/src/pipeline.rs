//! Model-level quantization: pick the linear layers to quantize, quantize them by RTN, or by a
//! calibrated method (GPTQ, importance-weighted imatrix, AWQ scaling, SmoothQuant) one decoder
//! layer at a time (only that layer's inputs are held), and report the error, size and time of each.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use lowbit_formats::GgmlType;
use lowbit_model::arch::blocks::Linear;
use lowbit_model::arch::calib::LinearSlot;
use lowbit_model::{Arch, Backing, ModelConfig, TensorEntry, Transformer, WeightStore};
use regex::Regex;

use crate::gptq::{gptq, GptqOptions};
use crate::imatrix::ImatrixFile;
use crate::linalg::add_gram;
use crate::quantizer::{rtn, QuantizedTensor, Quantizer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Rtn,
    Gptq,
    /// Importance-weighted scale search (imatrix.rs).
    Imatrix,
    /// AWQ per-channel scaling (awq.rs), then RTN.
    Awq,
    /// AWQ per-channel scaling, then GPTQ.
    AwqGptq,
    /// AWQ per-channel scaling, then the importance-weighted scale search (AWQ's clipping search,
    /// weighted by the scaled inputs' mean squares).
    AwqImatrix,
}

impl Method {
    pub fn parse(s: &str) -> Result<Method> {
        match s.to_ascii_lowercase().as_str() {
            "rtn" => Ok(Method::Rtn),
            "gptq" => Ok(Method::Gptq),
            "imatrix" => Ok(Method::Imatrix),
            "awq" => Ok(Method::Awq),
            "awq+gptq" => Ok(Method::AwqGptq),
            "awq+imatrix" => Ok(Method::AwqImatrix),
            other => bail!(
                "unknown method '{other}' (lowbit quantize supports rtn, gptq, imatrix, awq, \
                 awq+gptq and awq+imatrix)"
            ),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Method::Rtn => "rtn",
            Method::Gptq => "gptq",
            Method::Imatrix => "imatrix",
            Method::Awq => "awq",
            Method::AwqGptq => "awq+gptq",
            Method::AwqImatrix => "awq+imatrix",
        }
    }
    /// Whether the method runs calibration data through the model.
    pub fn needs_calibration(self) -> bool {
        self != Method::Rtn
    }
    fn awq(self) -> bool {
        matches!(self, Method::Awq | Method::AwqGptq | Method::AwqImatrix)
    }
}

/// Options beyond [`Options`] (kept apart so existing callers need not change).
#[derive(Debug, Clone, Default)]
pub struct ExtraOptions {
    /// SmoothQuant migration strength α: per-channel scales max|x|^α / max|W|^(1−α) folded into
    /// the weights before quantizing (for activation quantization; needs calibration data).
    pub smooth: Option<f64>,
    /// `--imatrix FILE`: importance values for `--method imatrix` read from a file
    /// ([`crate::imatrix::ImatrixFile`]) instead of gathered from calibration data.
    pub imatrix: Option<std::path::PathBuf>,
    /// `--imatrix-out FILE`: save the importance values gathered from calibration data.
    pub imatrix_out: Option<std::path::PathBuf>,
}

pub struct Options {
    pub quantizer: Quantizer,
    pub method: Method,
    /// Module names (tensor name without `.weight`) matching any of these stay in full precision.
    pub ignore: Vec<Regex>,
    pub gptq: GptqOptions,
    /// Abort when resident memory (VmRSS) goes over this many bytes (`--max-memory`).
    pub max_rss_bytes: Option<u64>,
}

/// One quantized linear layer in the summary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerReport {
    pub module: String,
    pub rows: usize,
    pub cols: usize,
    pub bits_per_weight: f64,
    /// ‖W − Q‖² / ‖W‖².
    pub weight_rel_err: f64,
    /// GPTQ only: ‖(W − Q)X‖² / ‖WX‖² on the calibration inputs, and the same for RTN.
    pub output_rel_err: Option<f64>,
    pub rtn_output_rel_err: Option<f64>,
    pub seconds: f64,
}

pub enum OutTensor {
    Quantized(QuantizedTensor),
    /// Kept in full precision: f32 values with their row-major shape.
    Plain {
        shape: Vec<usize>,
        values: Vec<f32>,
    },
    /// Kept as stored (F32/F16/BF16 bytes).
    Raw {
        dtype: GgmlType,
        shape: Vec<usize>,
        bytes: Vec<u8>,
    },
    /// Kept in full precision, read from the source by the writer: float types as stored, block
    /// types (a GGUF's Q8_0 embedding) decoded to f32 a few rows at a time, so no copy of a
    /// 262k-token embedding (671 MB in f32) is ever held in memory.
    Source {
        shape: Vec<usize>,
        source: lowbit_model::TensorHandle,
    },
}

pub struct QuantizedModel {
    /// HF tensor name (quantized ones under their module name + `.weight`) → tensor.
    pub tensors: BTreeMap<String, OutTensor>,
    pub reports: Vec<LayerReport>,
    /// Linear modules kept in full precision.
    pub ignored: Vec<String>,
}

const LINEAR_MODULES: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// Whether a tensor is the weight of a linear layer (what compressed-tensors' `Linear` target
/// covers): 2-D `*_proj.weight` and `lm_head.weight`.
pub fn is_linear_weight(name: &str, shape: &[usize]) -> bool {
    shape.len() == 2 && (name.ends_with("_proj.weight") || name == "lm_head.weight")
}

/// The default ignore list: the output head stays in full precision, as is the convention.
pub fn default_ignore() -> Vec<Regex> {
    vec![Regex::new("^lm_head$").expect("valid regex")]
}

pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn module_of(name: &str) -> &str {
    name.strip_suffix(".weight").unwrap_or(name)
}

fn rel_err(w: &[f32], d: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in w.iter().zip(d) {
        num += ((a - b) as f64).powi(2);
        den += (*a as f64).powi(2);
    }
    num / den.max(1e-300)
}

/// Σ_r d_r H d_rᵀ / Σ_r w_r H w_rᵀ with d = w − q: the relative output error on the calibration
/// inputs whose Gram matrix is `h`.
fn output_rel_err(w: &[f32], d: &[f32], h: &[f64], rows: usize, cols: usize) -> f64 {
    // A reported ratio: f32 GEMMs (sums of `cols` products, relative ~1e-6) are plenty, and
    // cost a quarter of the f64 ones this used to run for every matrix (a tenth of GPTQ's time).
    let hf: Vec<f32> = h.iter().map(|&v| v as f32).collect();
    let mut mh = vec![0f32; rows * cols];
    let mut quad = |m: &[f32]| {
        crate::linalg::matmul_f32(&mut mh, m, &hf, rows, cols, cols);
        mh.iter()
            .zip(m)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum::<f64>()
    };
    let df: Vec<f32> = w.iter().zip(d).map(|(a, b)| a - b).collect();
    quad(&df) / quad(w).max(1e-300)
}

/// A Linear over owned f32 values (to run the already-quantized layers during calibration).
fn f32_linear(name: &str, values: &[f32], rows: usize, cols: usize) -> Result<Linear> {
    let mut store = WeightStore::new(name);
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let len = bytes.len();
    let b = store.add_backing(Backing::Owned(bytes));
    store.insert(
        name,
        TensorEntry {
            dtype: GgmlType::F32,
            shape: vec![rows, cols],
            backing: b,
            offset: 0,
            len,
        },
    )?;
    Ok(Linear {
        tensor: store.handle(name)?,
        rows,
        cols,
        byte_offset: 0,
        act_quant: None,
    })
}

/// Progress events: (what is being done, step, total steps).
pub type Progress<'a> = &'a mut dyn FnMut(&str, usize, usize);

/// Which linear weights get quantized and which are kept in full precision by `--ignore`.
pub struct Plan {
    /// Weights to quantize, in store order.
    pub targets: Vec<String>,
    /// Linear modules kept in full precision.
    pub ignored: Vec<String>,
}

/// Decide what to quantize, checking every target's shape fits the quantizer.
pub fn plan(weights: &WeightStore, opts: &Options) -> Result<Plan> {
    let mut p = Plan {
        targets: Vec::new(),
        ignored: Vec::new(),
    };
    for n in weights.names() {
        let e = weights.entry(n).expect("listed");
        if !is_linear_weight(n, &e.shape) {
            continue;
        }
        let module = module_of(n);
        if opts.ignore.iter().any(|r| r.is_match(module)) {
            p.ignored.push(module.to_string());
        } else {
            opts.quantizer
                .groups(e.shape[1])
                .with_context(|| format!("{}: tensor {n} {:?}", weights.path.display(), e.shape))?;
            p.targets.push(n.to_string());
        }
    }
    Ok(p)
}

/// Resident memory of this process now (VmRSS), in bytes.
pub fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Give freed heap memory back to the OS. glibc keeps freed buffers of a finished layer in its heap
/// (its mmap threshold grows with the buffers freed), so without this the resident set would
/// count them and grow across layers.
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only returns free memory to the OS.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Abort when resident memory is over `--max-memory`.
fn check_memory(opts: &Options, after: &str) -> Result<()> {
    trim_heap();
    if let (Some(limit), Some(rss)) = (opts.max_rss_bytes, rss_bytes()) {
        if rss > limit {
            bail!(
                "memory limit exceeded: resident memory is {:.1} MiB after {after}, over the \
                 --max-memory limit of {:.1} MiB",
                rss as f64 / 1048576.0,
                limit as f64 / 1048576.0
            );
        }
    }
    Ok(())
}

/// Ask the kernel to drop the pages of a tensor we are done reading. Model files are memory-mapped
/// read-only, so their pages count in the resident set until reclaimed; paging them out keeps
/// resident memory at one layer. MADV_PAGEOUT only reclaims (it never changes contents), so it is
/// harmless on heap memory too; failures (old kernels, odd page sizes) are ignored.
pub(crate) fn release_pages(data: &[u8]) {
    #[cfg(target_os = "linux")]
    {
        extern "C" {
            fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
        }
        const MADV_PAGEOUT: i32 = 21;
        const PAGE: usize = 4096;
        if data.is_empty() {
            return;
        }
        let start = data.as_ptr() as usize;
        let aligned = start & !(PAGE - 1);
        let len = start + data.len() - aligned;
        // SAFETY: the range covers mapped memory of `data` (rounded down to its page start);
        // MADV_PAGEOUT does not change what the memory holds.
        unsafe {
            madvise(aligned as *mut std::ffi::c_void, len, MADV_PAGEOUT);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = data;
}

fn release_tensor(weights: &WeightStore, name: &str) {
    if let Some(t) = weights.get(name) {
        release_pages(t.data);
    }
}

/// Where quantized and kept tensors go as they are produced (HF name → tensor).
pub type Sink<'a> = &'a mut dyn FnMut(&str, OutTensor) -> Result<()>;

/// Quantize the linear layers of a model into memory. `calib` holds token sequences (GPTQ).
pub fn quantize_model(
    config: &ModelConfig,
    weights: &WeightStore,
    opts: &Options,
    calib: &[Vec<u32>],
    progress: Progress<'_>,
) -> Result<QuantizedModel> {
    let mut tensors = BTreeMap::new();
    let p = plan(weights, opts)?;
    let reports = quantize_streaming(
        config,
        weights,
        opts,
        &p,
        calib,
        &mut |n, t| {
            tensors.insert(n.to_string(), t);
            Ok(())
        },
        progress,
    )?;
    Ok(QuantizedModel {
        tensors,
        reports,
        ignored: p.ignored,
    })
}

/// Quantize the linear layers of a model, handing every output tensor (quantized or kept) to
/// `sink` as soon as it exists, so nothing accumulates: memory grows with one layer.
pub fn quantize_streaming(
    config: &ModelConfig,
    weights: &WeightStore,
    opts: &Options,
    plan: &Plan,
    calib: &[Vec<u32>],
    sink: Sink<'_>,
    progress: Progress<'_>,
) -> Result<Vec<LayerReport>> {
    quantize_streaming_ext(
        config,
        weights,
        opts,
        &ExtraOptions::default(),
        plan,
        calib,
        sink,
        progress,
    )
}

/// [`quantize_streaming`] with [`ExtraOptions`] (SmoothQuant, importance files).
#[allow(clippy::too_many_arguments)]
pub fn quantize_streaming_ext(
    config: &ModelConfig,
    weights: &WeightStore,
    opts: &Options,
    extra: &ExtraOptions,
    plan: &Plan,
    calib: &[Vec<u32>],
    sink: Sink<'_>,
    progress: Progress<'_>,
) -> Result<Vec<LayerReport>> {
    if let Some(a) = extra.smooth {
        if !(0.0..=1.0).contains(&a) {
            bail!("--smooth {a}: the migration strength must be in [0, 1]");
        }
        if opts.method.awq() {
            bail!("--smooth and --method awq both rescale input channels: use one of them");
        }
    }
    let loaded = match &extra.imatrix {
        Some(_) if opts.method != Method::Imatrix => {
            bail!("--imatrix FILE is read by --method imatrix only")
        }
        Some(p) => Some(ImatrixFile::load(p)?),
        None => None,
    };
    // A loaded importance file replaces calibration (unless --smooth still needs it).
    let calibrated =
        (opts.method.needs_calibration() && loaded.is_none()) || extra.smooth.is_some();
    if extra.imatrix_out.is_some() && !calibrated {
        bail!("--imatrix-out saves what calibration gathers: use it with --calib and a calibrated method");
    }
    let folds = fold_plan(config, weights, plan, opts.method, extra)?;
    let mut reports = Vec::new();
    let targets = &plan.targets;
    let is_target: std::collections::BTreeSet<&str> = targets.iter().map(|s| s.as_str()).collect();
    for n in weights.names() {
        // Targets are quantized below; norms that take folded scales are written with their layer.
        if is_target.contains(n) || folds.norms.contains(n) {
            continue;
        }
        let e = weights.entry(n).expect("listed");
        sink(n, kept_tensor(weights, n, &e.shape, None)?)?;
        // Embeddings are read again by calibration; everything else is done with.
        if !calibrated {
            release_tensor(weights, n);
        }
    }
    check_memory(opts, "writing the unquantized tensors")?;
    if calibrated {
        calibrated_layers(
            config,
            weights,
            opts,
            extra,
            loaded.as_ref(),
            &folds,
            calib,
            targets,
            &mut reports,
            sink,
            progress,
        )?;
        return Ok(reports);
    }
    let total = targets.len();
    for (k, n) in targets.iter().enumerate() {
        progress(n, k, total);
        let t0 = Instant::now();
        let e = weights.entry(n).expect("listed");
        let (rows, cols) = (e.shape[0], e.shape[1]);
        let w = weights.to_f32(n)?;
        release_tensor(weights, n);
        let q = match &loaded {
            Some(f) => imatrix_from_file(f, &opts.quantizer, n, &w, rows, cols)?,
            None => rtn(&opts.quantizer, &w, rows, cols).with_context(|| format!("tensor {n}"))?,
        };
        let d = q.dequantize();
        reports.push(LayerReport {
            module: module_of(n).to_string(),
            rows,
            cols,
            bits_per_weight: opts.quantizer.bits_per_weight(rows, cols),
            weight_rel_err: rel_err(&w, &d),
            output_rel_err: None,
            rtn_output_rel_err: None,
            seconds: t0.elapsed().as_secs_f64(),
        });
        drop((w, d));
        sink(n, OutTensor::Quantized(q))?;
        release_tensor(weights, n);
        check_memory(opts, &format!("quantizing {n}"))?;
    }
    progress("done", total, total);
    Ok(reports)
}

/// Importance-weighted quantization with saved importances: decoder-layer linears must have an
/// entry; others (an un-ignored lm_head) fall back to RTN when the file has none.
fn imatrix_from_file(
    f: &ImatrixFile,
    q: &Quantizer,
    n: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
) -> Result<QuantizedTensor> {
    let module = module_of(n);
    if !module.starts_with("model.layers.") && !f.importance.contains_key(module) {
        return rtn(q, w, rows, cols).with_context(|| format!("tensor {n}"));
    }
    let imp = f.get(module, cols)?;
    crate::imatrix::imatrix_quantize(q, w, rows, cols, &imp)
        .with_context(|| format!("imatrix quantization of tensor {n}"))
}

impl OutTensor {
    /// The values of a kept tensor as f32 (None for a quantized one).
    pub fn kept_values(&self) -> Option<Result<Vec<f32>>> {
        match self {
            OutTensor::Quantized(_) => None,
            OutTensor::Plain { values, .. } => Some(Ok(values.clone())),
            OutTensor::Raw {
                dtype,
                bytes,
                shape,
            } => {
                let mut v = vec![0f32; shape.iter().product()];
                Some(
                    lowbit_formats::dequantize(*dtype, bytes, &mut v)
                        .map(|_| v)
                        .map_err(|e| anyhow::anyhow!("{e}")),
                )
            }
            OutTensor::Source { shape, source } => {
                let mut v = vec![0f32; shape.iter().product()];
                Some(
                    lowbit_formats::dequantize(source.dtype, source.data(), &mut v)
                        .map(|_| v)
                        .map_err(|e| anyhow::anyhow!("tensor {}: {e}", source.name)),
                )
            }
        }
    }
}

/// A tensor kept in full precision: as stored when it is a plain float type, else as f32.
/// `values` replaces its contents (a norm weight that took folded scales).
fn kept_tensor(
    weights: &WeightStore,
    n: &str,
    shape: &[usize],
    values: Option<&[f32]>,
) -> Result<OutTensor> {
    let t = weights.require(n)?;
    let float = matches!(t.dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
    let out = match (float, values) {
        (_, None) if shape.len() == 2 => OutTensor::Source {
            shape: shape.to_vec(),
            source: weights.handle(n)?,
        },
        (true, None) => OutTensor::Raw {
            dtype: t.dtype,
            shape: shape.to_vec(),
            bytes: t.data.to_vec(),
        },
        (true, Some(v)) => OutTensor::Raw {
            dtype: t.dtype,
            shape: shape.to_vec(),
            bytes: match t.dtype {
                GgmlType::F16 => v
                    .iter()
                    .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                    .collect(),
                GgmlType::BF16 => v
                    .iter()
                    .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                    .collect(),
                _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            },
        },
        (false, v) => OutTensor::Plain {
            shape: shape.to_vec(),
            values: match v {
                Some(v) => v.to_vec(),
                None => weights.to_f32(n)?,
            },
        },
    };
    if matches!(out, OutTensor::Source { .. }) {
        // Read later, by the writer.
        return Ok(out);
    }
    // The source was copied (or decoded): its mapped pages are not needed again.
    release_tensor(weights, n);
    Ok(out)
}

/// Names (relative to `model.layers.{i}.`) of the RMSNorms feeding attention and the MLP, for the
/// architectures whose per-channel scales lowbit can fold.
fn norm_names(arch: Arch) -> Option<(&'static str, &'static str)> {
    match arch {
        Arch::Llama | Arch::Qwen2 | Arch::Qwen3 => {
            Some(("input_layernorm", "post_attention_layernorm"))
        }
        // Gemma 3's post_attention_layernorm normalizes the attention output (a sandwich norm).
        Arch::Gemma3 => Some(("input_layernorm", "pre_feedforward_layernorm")),
        _ => None,
    }
}

/// Where per-channel input scales (AWQ, SmoothQuant) are folded, per decoder layer: a slot is
/// scaled only when every linear reading it is quantized and the producer of its input can take
/// the inverse scale (RMSNorm weight; v_proj rows for o_proj, without a v bias; up_proj rows for
/// down_proj). Other slots keep identity scales.
#[derive(Debug, Default)]
pub struct FoldPlan {
    pub slots: Vec<Vec<LinearSlot>>,
    /// Norm weights that take folded scales (written with their layer, not up front).
    pub norms: std::collections::BTreeSet<String>,
}

fn fold_plan(
    config: &ModelConfig,
    weights: &WeightStore,
    plan: &Plan,
    method: Method,
    extra: &ExtraOptions,
) -> Result<FoldPlan> {
    let nl = config.num_layers;
    let mut f = FoldPlan {
        slots: vec![Vec::new(); nl],
        norms: Default::default(),
    };
    if !(method.awq() || extra.smooth.is_some()) {
        return Ok(f);
    }
    let (attn_norm, ffn_norm) = norm_names(config.arch).with_context(|| {
        format!(
            "{}: AWQ / SmoothQuant scaling supports dense Llama, Qwen2/3 and Gemma 3 models, not {:?}",
            weights.path.display(),
            config.arch
        )
    })?;
    let groups_ok = config.num_kv_heads > 0 && config.num_heads.is_multiple_of(config.num_kv_heads);
    let down_rotated = config
        .online_rotations
        .iter()
        .any(|r| r.module.contains("down_proj"));
    for i in 0..nl {
        let p = format!("model.layers.{i}.");
        let all = |ms: &[&str]| {
            ms.iter()
                .all(|m| plan.targets.iter().any(|t| *t == format!("{p}{m}.weight")))
        };
        let slots = &mut f.slots[i];
        let an = format!("{p}{attn_norm}.weight");
        if all(LinearSlot::AttnIn.modules()) && weights.contains(&an) {
            slots.push(LinearSlot::AttnIn);
            f.norms.insert(an);
        }
        if all(&["self_attn.o_proj", "self_attn.v_proj"])
            && !weights.contains(&format!("{p}self_attn.v_proj.bias"))
            && groups_ok
        {
            slots.push(LinearSlot::AttnOut);
        }
        let fnn = format!("{p}{ffn_norm}.weight");
        if all(LinearSlot::MlpIn.modules()) && weights.contains(&fnn) {
            slots.push(LinearSlot::MlpIn);
            f.norms.insert(fnn);
        }
        // With an online (R4) rotation down_proj reads Q·x: scales of x's channels (up_proj's
        // rows) are not scales of its input channels, so that slot stays unscaled.
        if all(&["mlp.down_proj", "mlp.up_proj"]) && !down_rotated {
            slots.push(LinearSlot::MlpAct);
        }
    }
    Ok(f)
}

/// Calibration statistics of one slot's input.
struct SlotStats {
    /// XᵀX (the factor 2 and 1/N of the Hessian cancel wherever it is used).
    h: Vec<f64>,
    dim: usize,
    abs_sum: Vec<f64>,
    abs_max: Vec<f32>,
    tokens: usize,
}

impl SlotStats {
    fn new(dim: usize) -> SlotStats {
        SlotStats {
            h: vec![0f64; dim * dim],
            dim,
            abs_sum: vec![0f64; dim],
            abs_max: vec![0f32; dim],
            tokens: 0,
        }
    }
    fn add(&mut self, a: &[f32]) {
        add_gram(&mut self.h, a, self.dim);
        for row in a.chunks_exact(self.dim) {
            for ((s, m), v) in self.abs_sum.iter_mut().zip(&mut self.abs_max).zip(row) {
                *s += v.abs() as f64;
                *m = m.max(v.abs());
            }
        }
        self.tokens += a.len() / self.dim;
    }
    fn mean_abs(&self) -> Vec<f64> {
        let n = self.tokens.max(1) as f64;
        self.abs_sum.iter().map(|v| v / n).collect()
    }
}

/// Quantize the decoder layers one at a time on calibration data: for each layer, gather its
/// inputs' statistics (with the earlier layers already quantized), fold per-channel scales
/// (AWQ / SmoothQuant) where planned, quantize each linear by the method, and run the layer with
/// its quantized weights to make the next layer's inputs.
#[allow(clippy::too_many_arguments)]
fn calibrated_layers(
    config: &ModelConfig,
    weights: &WeightStore,
    opts: &Options,
    extra: &ExtraOptions,
    loaded: Option<&ImatrixFile>,
    folds: &FoldPlan,
    calib: &[Vec<u32>],
    targets: &[String],
    reports: &mut Vec<LayerReport>,
    sink: Sink<'_>,
    progress: Progress<'_>,
) -> Result<()> {
    if calib.is_empty() || calib.iter().all(|s| s.is_empty()) {
        bail!(
            "--method {}{} needs calibration data (--calib)",
            opts.method.name(),
            if extra.smooth.is_some() {
                " with --smooth"
            } else {
                ""
            }
        );
    }
    let mut model = Transformer::load(config.clone(), weights)?;
    let nl = config.num_layers;
    let mut done: std::collections::BTreeSet<String> = Default::default();
    // Targets outside the decoder layers (lm_head when not ignored) get RTN.
    let in_layer = |n: &str, i: usize| n.starts_with(&format!("model.layers.{i}."));
    let mut seqs: Vec<Vec<f32>> = calib
        .iter()
        .map(|t| model.embed_tokens(t))
        .collect::<lowbit_model::Result<_>>()?;
    let (attn_norm, ffn_norm) = norm_names(config.arch).unwrap_or(("", ""));
    let mut saved = ImatrixFile::new(0);
    for i in 0..nl {
        progress(&format!("layer {i}: calibrating"), i, nl);
        let slots_needed: Vec<LinearSlot> = LinearSlot::ALL
            .into_iter()
            .filter(|s| {
                s.modules().iter().any(|m| {
                    targets
                        .iter()
                        .any(|t| *t == format!("model.layers.{i}.{m}.weight"))
                })
            })
            .collect();
        let mut stats: BTreeMap<LinearSlot, SlotStats> = BTreeMap::new();
        for s in &seqs {
            let mut x = s.clone();
            let mut cache = model.layer_cache(calib_len(s, config));
            let mut fail = None;
            model.layer_forward_with_hooks(i, &mut x, &mut cache, 0, &mut |slot, a| {
                if !slots_needed.contains(&slot) {
                    return;
                }
                let tokens = calib_len(s, config);
                let dim = a.len() / tokens.max(1);
                let e = stats.entry(slot).or_insert_with(|| SlotStats::new(dim));
                if e.dim != dim {
                    fail = Some(format!("layer {i}: {slot:?} width changed"));
                    return;
                }
                e.add(a);
            })?;
            if let Some(f) = fail {
                bail!(f);
            }
        }
        if extra.imatrix_out.is_some() {
            for slot in &slots_needed {
                let st = &stats[slot];
                let n = st.tokens.max(1) as f64;
                let diag: Vec<f32> = (0..st.dim)
                    .map(|k| (st.h[k * st.dim + k] / n) as f32)
                    .collect();
                for m in slot.modules() {
                    if targets.contains(&format!("model.layers.{i}.{m}.weight")) {
                        saved
                            .importance
                            .insert(format!("model.layers.{i}.{m}"), diag.clone());
                    }
                }
                saved.tokens = st.tokens;
            }
        }
        // This layer's target weights as f32: the originals, and the ones to quantize (scaled).
        let mut orig: BTreeMap<String, (Vec<f32>, usize, usize)> = BTreeMap::new();
        for slot in &slots_needed {
            for m in slot.modules() {
                let n = format!("model.layers.{i}.{m}.weight");
                if targets.contains(&n) {
                    let e = weights.entry(&n).expect("target exists");
                    let (rows, cols) = (e.shape[0], e.shape[1]);
                    if cols != stats[slot].dim {
                        bail!(
                            "tensor {n}: {cols} columns but the captured input has {}",
                            stats[slot].dim
                        );
                    }
                    orig.insert(m.to_string(), (weights.to_f32(&n)?, rows, cols));
                }
            }
        }
        // The weights to quantize: scaled copies of the slots that are folded (AWQ / smoothing);
        // the others are quantized from `orig` directly (no second copy: memory stays one
        // layer's weights, see tests/bounded_memory.rs).
        let mut cur: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        for &slot in &folds.slots[i] {
            for m in slot.modules() {
                if let Some((w, _, _)) = orig.get(*m) {
                    cur.insert(m.to_string(), w.clone());
                }
            }
        }
        if folds.slots[i].contains(&LinearSlot::AttnOut) && !cur.contains_key("self_attn.v_proj") {
            if let Some((w, _, _)) = orig.get("self_attn.v_proj") {
                cur.insert("self_attn.v_proj".into(), w.clone());
            }
        }
        if folds.slots[i].contains(&LinearSlot::MlpAct) && !cur.contains_key("mlp.up_proj") {
            if let Some((w, _, _)) = orig.get("mlp.up_proj") {
                cur.insert("mlp.up_proj".into(), w.clone());
            }
        }
        // Per-channel scales of each folded slot, searched on the original weights.
        let mut scales: BTreeMap<LinearSlot, Vec<f32>> = BTreeMap::new();
        for &slot in &folds.slots[i] {
            progress(&format!("layer {i}: scaling {slot:?}"), i, nl);
            let st = &stats[&slot];
            let ws: Vec<(&[f32], usize)> = slot
                .modules()
                .iter()
                .map(|m| (orig[*m].0.as_slice(), orig[*m].1))
                .collect();
            let tie = |v: Vec<f64>| {
                if slot == LinearSlot::AttnOut {
                    crate::awq::tie_heads(
                        &v,
                        config.num_heads,
                        config.num_kv_heads,
                        st.dim / config.num_heads.max(1),
                    )
                } else {
                    v
                }
            };
            let s = match extra.smooth {
                Some(alpha) => {
                    let amax = tie(st.abs_max.iter().map(|&v| v as f64).collect());
                    let amax: Vec<f32> = amax.iter().map(|&v| v as f32).collect();
                    crate::awq::smooth_scales(&ws, st.dim, &amax, alpha)
                }
                None => {
                    crate::awq::search(&opts.quantizer, &ws, st.dim, &tie(st.mean_abs()), &st.h)
                        .with_context(|| format!("AWQ search of layer {i} {slot:?}"))?
                        .scales
                }
            };
            // Heads sharing a KV head must share scales to fold into v_proj's rows.
            let s = if slot == LinearSlot::AttnOut {
                let t = tie(s.iter().map(|&v| v as f64).collect());
                t.iter().map(|&v| v as f32).collect()
            } else {
                s
            };
            scales.insert(slot, s);
        }
        // Fold: scale the readers' columns, divide the producer (norm or rows) by the scales, and
        // move the statistics to the scaled inputs (H' = S⁻¹ H S⁻¹).
        let layer = &mut model.layers[i];
        let off = config.norm_weight_offset;
        let mut norm_out: Vec<(String, Vec<f32>)> = Vec::new();
        for (&slot, s) in &scales {
            for m in slot.modules() {
                crate::awq::scale_columns(cur.get_mut(*m).expect("planned"), s.len(), s);
            }
            match slot {
                LinearSlot::AttnIn => {
                    crate::awq::unscale_norm(&mut layer.attn_norm, off, s);
                    norm_out.push((attn_norm.to_string(), layer.attn_norm.clone()));
                }
                LinearSlot::MlpIn => {
                    crate::awq::unscale_norm(&mut layer.ffn_norm, off, s);
                    norm_out.push((ffn_norm.to_string(), layer.ffn_norm.clone()));
                }
                LinearSlot::AttnOut => {
                    let hd = s.len() / config.num_heads.max(1);
                    let rs = crate::awq::kv_rows_of(s, config.num_heads, config.num_kv_heads, hd);
                    let cols = orig["self_attn.v_proj"].2;
                    crate::awq::unscale_rows(
                        cur.get_mut("self_attn.v_proj").expect("planned"),
                        cols,
                        &rs,
                    );
                }
                LinearSlot::MlpAct => {
                    let cols = orig["mlp.up_proj"].2;
                    crate::awq::unscale_rows(cur.get_mut("mlp.up_proj").expect("planned"), cols, s);
                }
            }
            let st = stats.get_mut(&slot).expect("captured");
            let d = st.dim;
            for a in 0..d {
                for b in 0..d {
                    st.h[a * d + b] /= (s[a] * s[b]) as f64;
                }
            }
        }
        for (name, v) in norm_out {
            let n = format!("model.layers.{i}.{name}.weight");
            let shape = weights.entry(&n).expect("planned").shape.clone();
            sink(&n, kept_tensor(weights, &n, &shape, Some(&v))?)?;
        }
        for slot in &slots_needed {
            // Each slot's statistics and weights are dropped as soon as it is done.
            let st = stats.remove(slot).expect("captured");
            let h = &st.h;
            for m in slot.modules() {
                let n = format!("model.layers.{i}.{m}.weight");
                let Some((w0, rows, cols)) = orig.remove(*m) else {
                    continue;
                };
                let w0 = &w0;
                progress(&format!("layer {i}: {m}"), i, nl);
                let t0 = Instant::now();
                let scaled = cur.remove(*m);
                let w = scaled.as_ref().unwrap_or(w0);
                let q = match opts.method {
                    Method::Gptq | Method::AwqGptq => {
                        gptq(&opts.quantizer, w, rows, cols, h, opts.gptq)
                            .with_context(|| format!("GPTQ of tensor {n}"))?
                    }
                    Method::Imatrix | Method::AwqImatrix => match loaded {
                        Some(f) => imatrix_from_file(f, &opts.quantizer, &n, w, rows, cols)?,
                        // diag(H') of the (possibly AWQ-scaled) inputs.
                        None => {
                            let imp: Vec<f64> = (0..cols).map(|k| h[k * cols + k]).collect();
                            crate::imatrix::imatrix_quantize(&opts.quantizer, w, rows, cols, &imp)
                                .with_context(|| format!("imatrix quantization of tensor {n}"))?
                        }
                    },
                    Method::Rtn | Method::Awq => rtn(&opts.quantizer, w, rows, cols)
                        .with_context(|| format!("tensor {n}"))?,
                };
                let d = q.dequantize();
                // RTN of the unscaled weight on the unscaled inputs, for comparison. The errors of
                // the scaled weight on the scaled inputs are the same quantities as unscaled.
                let r = rtn(&opts.quantizer, w0, rows, cols)?.dequantize();
                let h0 = slot_gram_unscaled(h, scales.get(slot));
                let h0: &[f64] = h0.as_deref().unwrap_or(h);
                reports.push(LayerReport {
                    module: module_of(&n).to_string(),
                    rows,
                    cols,
                    bits_per_weight: opts.quantizer.bits_per_weight(rows, cols),
                    weight_rel_err: rel_err(w, &d),
                    output_rel_err: Some(output_rel_err(w, &d, h, rows, cols)),
                    rtn_output_rel_err: Some(output_rel_err(w0, &r, h0, rows, cols)),
                    seconds: t0.elapsed().as_secs_f64(),
                });
                *model.layer_linear_mut(i, m)? = f32_linear(&n, &d, rows, cols)?;
                sink(&n, OutTensor::Quantized(q))?;
                done.insert(n);
            }
        }
        drop((stats, orig, cur));
        // The next layer sees the outputs of this layer with its weights quantized.
        for s in seqs.iter_mut() {
            let mut cache = model.layer_cache(calib_len(s, config));
            model.layer_forward_with_hooks(i, s, &mut cache, 0, &mut |_, _| {})?;
        }
        // Layer i is never run again: free its dequantized weights and the source pages.
        for m in LINEAR_MODULES {
            if let Ok(l) = model.layer_linear_mut(i, m) {
                *l = f32_linear(&format!("model.layers.{i}.{m}.weight"), &[], 0, 0)?;
            }
        }
        let prefix = format!("model.layers.{i}.");
        for n in weights.names().filter(|n| n.starts_with(&prefix)) {
            release_tensor(weights, n);
        }
        check_memory(opts, &format!("layer {i}"))?;
    }
    for n in targets {
        if (0..nl).any(|i| in_layer(n, i)) {
            continue;
        }
        let e = weights.entry(n).expect("target exists");
        let (rows, cols) = (e.shape[0], e.shape[1]);
        let w = weights.to_f32(n)?;
        release_tensor(weights, n);
        let q = rtn(&opts.quantizer, &w, rows, cols).with_context(|| format!("tensor {n}"))?;
        reports.push(LayerReport {
            module: module_of(n).to_string(),
            rows,
            cols,
            bits_per_weight: opts.quantizer.bits_per_weight(rows, cols),
            weight_rel_err: rel_err(&w, &q.dequantize()),
            output_rel_err: None,
            rtn_output_rel_err: None,
            seconds: 0.0,
        });
        sink(n, OutTensor::Quantized(q))?;
        done.insert(n.clone());
    }
    if let Some(n) = targets.iter().find(|n| !done.contains(*n)) {
        return Err(anyhow!(
            "tensor {n} was not quantized (not a dense decoder-layer linear)"
        ));
    }
    if let Some(p) = &extra.imatrix_out {
        saved.save(p)?;
    }
    progress("done", nl, nl);
    Ok(())
}

/// The Gram matrix of the unscaled inputs from the scaled one (H = S H' S); None when the slot
/// was not scaled (then it is `h` itself).
fn slot_gram_unscaled(h: &[f64], s: Option<&Vec<f32>>) -> Option<Vec<f64>> {
    let s = s?;
    let d = s.len();
    Some(
        (0..d * d)
            .map(|k| h[k] * (s[k / d] * s[k % d]) as f64)
            .collect(),
    )
}

fn calib_len(hidden: &[f32], c: &ModelConfig) -> usize {
    hidden.len() / c.hidden_size
}

/// Cut a token stream into `n` sequences of `len` tokens (error if it is too short).
pub fn calibration_sequences(tokens: &[u32], n: usize, len: usize) -> Result<Vec<Vec<u32>>> {
    if len == 0 || n == 0 {
        bail!("calibration needs at least one sequence of at least one token");
    }
    if tokens.len() < n * len {
        bail!(
            "calibration text has {} tokens, fewer than the {n} sequences × {len} tokens asked for: \
             give a longer text or fewer/shorter sequences",
            tokens.len()
        );
    }
    Ok(tokens
        .chunks_exact(len)
        .take(n)
        .map(|c| c.to_vec())
        .collect())
}

/// Which known linear modules a decoder layer has (for docs and checks).
pub fn linear_modules() -> &'static [&'static str] {
    &LINEAR_MODULES
}
