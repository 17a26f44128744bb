//! CI check without a GPU: every kernel source compiles to PTX for sm_90 with NVRTC.
//!
//! NVRTC comes from `LOWBIT_NVRTC_LIB` (a path to libnvrtc.so.13) or from the PyPI wheel
//! `nvidia-cuda-nvrtc==13.0.88` installed for `$PYTHON` (default python3). Without either the
//! test prints SKIP and passes.

use std::path::PathBuf;
use std::process::Command;

fn wheel_nvrtc() -> Option<PathBuf> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    // The 13.x wheel installs nvidia/cu13/lib/libnvrtc.so.13; ask pip's metadata where.
    let script = "import importlib.metadata as m\n\
        d = m.distribution('nvidia-cuda-nvrtc')\n\
        print(next(str(d.locate_file(f)) for f in d.files if f.name.startswith('libnvrtc.so')))";
    let out = Command::new(python).args(["-c", script]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let p = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    p.is_file().then_some(p)
}

#[test]
fn every_kernel_compiles_to_ptx_for_sm90() {
    if std::env::var_os(lowbit_cuda::NVRTC_ENV).is_none() {
        match wheel_nvrtc() {
            Some(p) => std::env::set_var(lowbit_cuda::NVRTC_ENV, p),
            None if lowbit_cuda::ensure_nvrtc().is_ok() => {}
            None => {
                println!(
                    "SKIP: NVRTC not found (set {} or `pip install nvidia-cuda-nvrtc==13.0.88`)",
                    lowbit_cuda::NVRTC_ENV
                );
                return;
            }
        }
    }
    let set = lowbit_cuda::compile_ptx("sm_90").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.len(), lowbit_cuda::KERNEL_SOURCES.len());
    let mut entries = Vec::new();
    for (name, ptx) in set.iter() {
        let src = ptx.to_src();
        assert!(src.contains(".target sm_90"), "{name}: PTX not for sm_90");
        entries.extend(lowbit_cuda::backend::ptx_entries(&src));
    }
    // Every launch wrapper's kernel exists.
    let mut want: Vec<String> = Vec::new();
    for f in ["gemv_int4_g128", "gemv_q8_0", "gemv_q4_k", "gemv_bf16"] {
        want.extend((1..=8).map(|b| format!("{f}_b{b}")));
    }
    for rt in [1, 2] {
        for src in ["f32", "f16"] {
            want.extend((1..=8).map(|b| format!("gemv_int4_g128_s{rt}_{src}_b{b}")));
        }
    }
    for k in [
        "int4_act_to_f16",
        "rmsnorm_f32",
        "rope_f32",
        "silu_mul_f32",
        "add_f32",
        "embed_bf16",
        "store_kv_bf16",
        "argmax_f32",
        "fill_random_u32",
        "fill_random_half",
        "fill_random_f32",
        "fill_random_q4_k",
        "fill_random_q8_0",
        "attn_decode_split_hd64",
        "attn_decode_merge_hd64",
        "attn_decode_split_hd128",
        "attn_decode_merge_hd128",
    ] {
        want.push(k.to_string());
    }
    for w in &want {
        assert!(
            entries.contains(w),
            "kernel {w} missing from PTX (have {entries:?})"
        );
    }
    println!(
        "compiled {} kernel modules, {} entries, for sm_90",
        set.len(),
        entries.len()
    );
}
