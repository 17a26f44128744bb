//! lowbit's NVIDIA GPU backend.
//!
//! Nothing here links against CUDA: the driver (`libcuda`) and NVRTC are opened at run time
//! (cudarc's `dynamic-loading`), so the crate builds and its tests pass on machines without a
//! GPU. [`CudaBackend::new`] returns [`Error::NoDriver`] / [`Error::NoDevice`] there instead of
//! panicking. Kernels are CUDA C++ sources in `src/kernels/*.cu`, compiled to PTX by NVRTC once
//! per process and architecture (see [`compile_ptx`]).

pub mod backend;
pub mod bench;
pub mod cublaslt;
pub mod model;
pub mod reference;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

pub use backend::{
    tile_int4_g128, CudaBackend, DeviceMatrix, Int4Kernel, WeightFormat, MAX_BATCH, MAX_BATCH_TILED,
};
pub use model::{GpuHadamard, GpuKvCache, GpuModel};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no CUDA driver: could not load libcuda (is an NVIDIA driver installed?)")]
    NoDriver,
    #[error("no CUDA device {ordinal}: {reason}")]
    NoDevice { ordinal: usize, reason: String },
    #[error("NVRTC not found: {0}")]
    NoNvrtc(String),
    #[error("NVRTC failed to compile kernel source '{name}' for {arch}:\n{log}")]
    Compile {
        name: &'static str,
        arch: String,
        log: String,
    },
    #[error("CUDA driver error in {what}: {source}")]
    Driver {
        what: String,
        source: cudarc::driver::DriverError,
    },
    #[error("{0}")]
    Shape(String),
    #[error("cuBLASLt not available: {0}")]
    NoCublasLt(String),
    #[error("cuBLASLt error in {what}: {status}")]
    CublasLt { what: String, status: String },
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn drv<T>(
    what: impl Into<String>,
    r: std::result::Result<T, cudarc::driver::DriverError>,
) -> Result<T> {
    r.map_err(|source| Error::Driver {
        what: what.into(),
        source,
    })
}

/// Shared helpers prepended to every kernel source (NVRTC compiles each module alone).
pub const COMMON_SOURCE: &str = include_str!("kernels/common.cu");

/// Every kernel module: (name, source without the common prelude).
pub const KERNEL_SOURCES: &[(&str, &str)] = &[
    ("gemv", include_str!("kernels/gemv.cu")),
    ("ops", include_str!("kernels/ops.cu")),
    ("attention", include_str!("kernels/attention.cu")),
    ("gemm", include_str!("kernels/gemm.cu")),
    ("model", include_str!("kernels/model.cu")),
];

/// Environment variable naming the NVRTC library file to use (e.g. the PyPI wheel's
/// `.../nvidia/cu13/lib/libnvrtc.so.13`) when it is not on the loader's search path.
pub const NVRTC_ENV: &str = "LOWBIT_NVRTC_LIB";

/// Environment variable with extra `-DNAME=VALUE` options for the kernel sources (tuning).
pub const DEFINES_ENV: &str = "LOWBIT_NVRTC_DEFINES";

static NVRTC_LIB: OnceLock<std::result::Result<Option<PathBuf>, String>> = OnceLock::new();

/// Make NVRTC loadable. If `LOWBIT_NVRTC_LIB` names a file, it is opened with RTLD_GLOBAL first:
/// cudarc then finds it by its soname (`libnvrtc.so.13`) because the loader matches already
/// loaded libraries by soname. Otherwise the system search path must have it.
pub fn ensure_nvrtc() -> Result<()> {
    let r = NVRTC_LIB.get_or_init(|| {
        if let Some(path) = std::env::var_os(NVRTC_ENV) {
            let path = PathBuf::from(path);
            preload(&path)?;
            return Ok(Some(path));
        }
        Ok(None)
    });
    if let Err(e) = r {
        return Err(Error::NoNvrtc(e.clone()));
    }
    // SAFETY: only probes whether the library can be opened.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(Error::NoNvrtc(format!(
            "libnvrtc is not on the library search path; set {NVRTC_ENV} to the file \
             (pip install nvidia-cuda-nvrtc==13.0.88 ships it under nvidia/cu13/lib)"
        )))
    }
}

fn preload(path: &Path) -> std::result::Result<(), String> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // NVRTC opens its builtins library (libnvrtc-builtins.so.13.x) by soname at compile time; a
    // wheel's lib folder is not on the search path, so load the one beside libnvrtc first.
    if let Some(dir) = path.parent() {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("libnvrtc-builtins.so") {
                    // SAFETY: as below.
                    if let Ok(b) = unsafe { Library::open(Some(e.path()), RTLD_NOW | RTLD_GLOBAL) }
                    {
                        std::mem::forget(b);
                    }
                }
            }
        }
    }
    // SAFETY: NVRTC's initializers have no preconditions; the handle is leaked on purpose so
    // the library stays loaded for the life of the process.
    let lib = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }
        .map_err(|e| format!("{NVRTC_ENV}={}: cannot load: {e}", path.display()))?;
    std::mem::forget(lib);
    Ok(())
}

/// Full source of a kernel module as NVRTC sees it.
pub fn full_source(module_src: &str) -> String {
    format!("{COMMON_SOURCE}\n{module_src}")
}

/// PTX of one module, by module name.
pub type PtxSet = Vec<(&'static str, cudarc::nvrtc::Ptx)>;

static PTX_CACHE: OnceLock<Mutex<HashMap<String, std::sync::Arc<PtxSet>>>> = OnceLock::new();

/// Compile every kernel module for `arch` (e.g. "sm_90"), once per process and architecture.
pub fn compile_ptx(arch: &str) -> Result<std::sync::Arc<PtxSet>> {
    let cache = PTX_CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(p) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(arch) {
        return Ok(p.clone());
    }
    ensure_nvrtc()?;
    let mut set = Vec::new();
    for &(name, src) in KERNEL_SOURCES {
        let mut options = vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()];
        // Kernel tuning knobs (-DNAME=VALUE), for trying variants without a rebuild.
        if let Ok(defs) = std::env::var(DEFINES_ENV) {
            options.extend(
                defs.split_whitespace()
                    .filter(|d| d.starts_with("-D"))
                    .map(String::from),
            );
        }
        let opts = cudarc::nvrtc::CompileOptions {
            options,
            name: Some(format!("{name}.cu")),
            ..Default::default()
        };
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(full_source(src), opts).map_err(|e| {
            Error::Compile {
                name,
                arch: arch.to_string(),
                log: format!("{e:?}"),
            }
        })?;
        // LOWBIT_DUMP_PTX=DIR writes each module's PTX there (for ptxas -v / disassembly).
        if let Ok(dir) = std::env::var("LOWBIT_DUMP_PTX") {
            let path = std::path::Path::new(&dir).join(format!("{name}.{arch}.ptx"));
            if let Err(e) = std::fs::write(&path, ptx.to_src()) {
                eprintln!("LOWBIT_DUMP_PTX: cannot write {}: {e}", path.display());
            }
        }
        set.push((name, ptx));
    }
    let set = std::sync::Arc::new(set);
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(arch.to_string(), set.clone());
    Ok(set)
}
