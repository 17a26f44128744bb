//! Model-level quantization: pick the linear layers to quantize, quantize them by RTN, or by GPTQ
//! calibrated one decoder layer at a time (only that layer's inputs are held), and report the
//! error, size and time of each.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use lowbit_formats::GgmlType;
use lowbit_model::arch::blocks::Linear;
use lowbit_model::arch::calib::LinearSlot;
use lowbit_model::{Backing, ModelConfig, TensorEntry, Transformer, WeightStore};
use regex::Regex;

use crate::gptq::{gptq, GptqOptions};
use crate::linalg::{add_gram, matmul_f64};
use crate::quantizer::{rtn, QuantizedTensor, Quantizer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Rtn,
    Gptq,
}

impl Method {
    pub fn parse(s: &str) -> Result<Method> {
        match s.to_ascii_lowercase().as_str() {
            "rtn" => Ok(Method::Rtn),
            "gptq" => Ok(Method::Gptq),
            other => {
                bail!("unknown method '{other}' (lowbit quantize supports rtn and gptq today)")
            }
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Method::Rtn => "rtn",
            Method::Gptq => "gptq",
        }
    }
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
    let quad = |m: &[f64]| {
        let mut mh = vec![0f64; rows * cols];
        matmul_f64(&mut mh, m, h, rows, cols, cols, false, 1.0);
        mh.iter().zip(m).map(|(a, b)| a * b).sum::<f64>()
    };
    let wf: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    let df: Vec<f64> = w.iter().zip(d).map(|(a, b)| (a - b) as f64).collect();
    quad(&df) / quad(&wf).max(1e-300)
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
fn release_pages(data: &[u8]) {
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
    let mut reports = Vec::new();
    let targets = &plan.targets;
    let is_target: std::collections::BTreeSet<&str> = targets.iter().map(|s| s.as_str()).collect();
    for n in weights.names() {
        if is_target.contains(n) {
            continue;
        }
        let e = weights.entry(n).expect("listed");
        // Everything else is kept: as stored when it is a plain float type, else as f32.
        let t = weights.require(n)?;
        let kept = if matches!(t.dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
            OutTensor::Raw {
                dtype: t.dtype,
                shape: e.shape.clone(),
                bytes: t.data.to_vec(),
            }
        } else {
            OutTensor::Plain {
                shape: e.shape.clone(),
                values: weights.to_f32(n)?,
            }
        };
        sink(n, kept)?;
        // Embeddings are read again by GPTQ calibration; everything else is done with.
        if opts.method != Method::Gptq {
            release_tensor(weights, n);
        }
    }
    check_memory(opts, "writing the unquantized tensors")?;
    match opts.method {
        Method::Rtn => {
            let total = targets.len();
            for (k, n) in targets.iter().enumerate() {
                progress(n, k, total);
                let t0 = Instant::now();
                let e = weights.entry(n).expect("listed");
                let (rows, cols) = (e.shape[0], e.shape[1]);
                let w = weights.to_f32(n)?;
                let q =
                    rtn(&opts.quantizer, &w, rows, cols).with_context(|| format!("tensor {n}"))?;
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
        }
        Method::Gptq => gptq_layers(
            config,
            weights,
            opts,
            calib,
            targets,
            &mut reports,
            sink,
            progress,
        )?,
    }
    Ok(reports)
}

#[allow(clippy::too_many_arguments)]
fn gptq_layers(
    config: &ModelConfig,
    weights: &WeightStore,
    opts: &Options,
    calib: &[Vec<u32>],
    targets: &[String],
    reports: &mut Vec<LayerReport>,
    sink: Sink<'_>,
    progress: Progress<'_>,
) -> Result<()> {
    if calib.is_empty() || calib.iter().all(|s| s.is_empty()) {
        bail!("GPTQ needs calibration data (--calib)");
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
        // Hessians (XᵀX; the factor 2 and 1/N cancel in GPTQ and in relative errors).
        let mut hs: BTreeMap<LinearSlot, (Vec<f64>, usize)> = BTreeMap::new();
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
                let e = hs
                    .entry(slot)
                    .or_insert_with(|| (vec![0f64; dim * dim], dim));
                if e.1 != dim {
                    fail = Some(format!("layer {i}: {slot:?} width changed"));
                    return;
                }
                add_gram(&mut e.0, a, dim);
            })?;
            if let Some(f) = fail {
                bail!(f);
            }
        }
        for slot in &slots_needed {
            let (h, dim) = &hs[slot];
            for m in slot.modules() {
                let n = format!("model.layers.{i}.{m}.weight");
                if !targets.contains(&n) {
                    continue;
                }
                progress(&format!("layer {i}: {m}"), i, nl);
                let t0 = Instant::now();
                let e = weights.entry(&n).expect("target exists");
                let (rows, cols) = (e.shape[0], e.shape[1]);
                if cols != *dim {
                    bail!("tensor {n}: {cols} columns but the captured input has {dim}");
                }
                let w = weights.to_f32(&n)?;
                let q = gptq(&opts.quantizer, &w, rows, cols, h, opts.gptq)
                    .with_context(|| format!("GPTQ of tensor {n}"))?;
                let d = q.dequantize();
                let r = rtn(&opts.quantizer, &w, rows, cols)?.dequantize();
                reports.push(LayerReport {
                    module: module_of(&n).to_string(),
                    rows,
                    cols,
                    bits_per_weight: opts.quantizer.bits_per_weight(rows, cols),
                    weight_rel_err: rel_err(&w, &d),
                    output_rel_err: Some(output_rel_err(&w, &d, h, rows, cols)),
                    rtn_output_rel_err: Some(output_rel_err(&w, &r, h, rows, cols)),
                    seconds: t0.elapsed().as_secs_f64(),
                });
                *model.layer_linear_mut(i, m)? = f32_linear(&n, &d, rows, cols)?;
                sink(&n, OutTensor::Quantized(q))?;
                done.insert(n);
            }
        }
        drop(hs);
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
    progress("done", nl, nl);
    Ok(())
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
