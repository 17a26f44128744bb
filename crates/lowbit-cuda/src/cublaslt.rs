//! Dense GEMMs through cuBLASLt: bf16 and FP8 E4M3 (W8A8, per-tensor scales), bf16 output,
//! f32 accumulation, plus the device kernels (kernels/gemm.cu) that quantize activations to
//! E4M3 with a scale computed on the device.
//!
//! Like the driver and NVRTC, libcublasLt is opened at run time (cudarc `dynamic-loading`):
//! without it [`CublasLt::new`] returns [`Error::NoCublasLt`]. `LOWBIT_CUBLASLT_LIB` names the
//! file when it is not on the loader's search path; otherwise the folder of `LOWBIT_NVRTC_LIB`
//! (CUDA 13 wheels put every library in `nvidia/cu13/lib`) and `/usr/local/cuda/lib64` are tried.
//!
//! Layout: every matrix is row-major. `a` is [m][k] (activations), `b` is [n][k] (weights, one
//! row per output), `c` is [m][n], and the GEMM computes c = a · bᵀ. cuBLASLt is column-major, so
//! a row-major [r][s] matrix is passed as a column-major s x r one and the product is computed
//! transposed: cᵀ (n x m) = op(b) · a with op = transpose. That is cuBLASLt's "TN" form (A
//! transposed, B not), the only one Hopper's FP8 kernels accept.

use std::collections::HashMap;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublaslt::result::{self as lt, CublasError};
use cudarc::cublaslt::sys;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig,
    PushKernelArg,
};

use crate::{compile_ptx, drv, CudaBackend, Error, Result, NVRTC_ENV};

/// Environment variable naming the libcublasLt file (e.g. `.../nvidia/cu13/lib/libcublasLt.so.13`).
pub const CUBLASLT_ENV: &str = "LOWBIT_CUBLASLT_LIB";
/// Workspace given to every matmul (NVIDIA recommends 32 MiB on Hopper), allocated once.
pub const WORKSPACE_BYTES: usize = 32 << 20;
/// FP8 GEMMs need K and N multiples of 16: the leading dimensions of the E4M3 operands (K bytes)
/// and of the bf16 output (N values) must keep rows 16-byte aligned. M is free (M = 1 works).
pub const FP8_K_MULTIPLE: usize = 16;
pub const FP8_N_MULTIPLE: usize = 16;
/// Largest finite E4M3 value: the activation quantizer maps the tensor's absmax to it.
pub const E4M3_MAX: f32 = 448.0;

fn lt_err<T>(what: &str, r: std::result::Result<T, CublasError>) -> Result<T> {
    r.map_err(|e| Error::CublasLt {
        what: what.to_string(),
        status: format!("{:?}", e.0),
    })
}

static CUBLASLT_LIB: OnceLock<std::result::Result<(), String>> = OnceLock::new();

/// Make libcublasLt loadable (see the module docs for where it is looked for).
pub fn ensure_cublaslt() -> Result<()> {
    let r = CUBLASLT_LIB.get_or_init(|| {
        if let Some(p) = std::env::var_os(CUBLASLT_ENV) {
            return crate::preload(Path::new(&p));
        }
        // SAFETY: only probes whether the library can be opened.
        if unsafe { sys::is_culib_present() } {
            return Ok(());
        }
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(nvrtc) = std::env::var_os(NVRTC_ENV) {
            if let Some(dir) = Path::new(&nvrtc).parent() {
                candidates.push(dir.join("libcublasLt.so.13"));
            }
        }
        candidates.push(PathBuf::from("/usr/local/cuda/lib64/libcublasLt.so.13"));
        match candidates.iter().find(|c| c.is_file()) {
            // Loaded with RTLD_GLOBAL: cudarc then finds it by its soname.
            Some(c) => crate::preload(c),
            None => Err(format!(
                "libcublasLt.so.13 is not on the library search path; set {CUBLASLT_ENV} to the \
                 file (pip install nvidia-cublas ships it under nvidia/cu13/lib)"
            )),
        }
    });
    if let Err(e) = r {
        return Err(Error::NoCublasLt(e.clone()));
    }
    // SAFETY: as above.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err(Error::NoCublasLt(format!(
            "libcublasLt could not be opened (set {CUBLASLT_ENV})"
        )))
    }
}

/// Element type of the A and B operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmType {
    Bf16,
    Fp8E4m3,
}

impl GemmType {
    pub fn name(self) -> &'static str {
        match self {
            GemmType::Bf16 => "bf16",
            GemmType::Fp8E4m3 => "fp8 e4m3",
        }
    }
}

/// Check a GEMM's shape and buffer lengths (elements) before anything reaches cuBLASLt.
pub fn check_gemm_shape(
    ty: GemmType,
    m: usize,
    n: usize,
    k: usize,
    a_len: usize,
    b_len: usize,
    c_len: usize,
) -> Result<()> {
    let what = format!("{} GEMM m={m} n={n} k={k}", ty.name());
    if m == 0 || n == 0 || k == 0 {
        return Err(Error::Shape(format!("{what}: dimensions must be positive")));
    }
    if m > i32::MAX as usize || n > i32::MAX as usize || k > i32::MAX as usize {
        return Err(Error::Shape(format!(
            "{what}: dimensions must fit in 31 bits"
        )));
    }
    if ty == GemmType::Fp8E4m3
        && (!k.is_multiple_of(FP8_K_MULTIPLE) || !n.is_multiple_of(FP8_N_MULTIPLE))
    {
        return Err(Error::Shape(format!(
            "{what}: FP8 needs k a multiple of {FP8_K_MULTIPLE} and n a multiple of \
             {FP8_N_MULTIPLE} (16-byte aligned rows)"
        )));
    }
    for (name, have, rows, cols) in [("a", a_len, m, k), ("b", b_len, n, k), ("c", c_len, m, n)] {
        let need = rows
            .checked_mul(cols)
            .ok_or_else(|| Error::Shape(format!("{what}: {name} is too large")))?;
        if have < need {
            return Err(Error::Shape(format!(
                "{what}: {name} ({rows}x{cols}) holds {have} elements, needs {need}"
            )));
        }
    }
    Ok(())
}

/// Plan cache key: operand type, fast accumulation (FP8), m, n, k.
type PlanKey = (GemmType, bool, usize, usize, usize);

/// Descriptors and the chosen algorithm of one GEMM shape; destroyed on drop.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    /// Weights b as cuBLAS's A (column-major k x n, transposed by the op).
    w_layout: sys::cublasLtMatrixLayout_t,
    /// Activations a as cuBLAS's B (column-major k x m).
    x_layout: sys::cublasLtMatrixLayout_t,
    /// Output (column-major n x m = row-major [m][n]); also C, which beta = 0 never reads.
    d_layout: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each handle is null or was created by cuBLASLt and is destroyed once here.
        // Errors cannot be reported from drop; they only leak a descriptor.
        unsafe {
            for l in [self.w_layout, self.x_layout, self.d_layout] {
                if !l.is_null() {
                    let _ = lt::destroy_matrix_layout(l);
                }
            }
            if !self.desc.is_null() {
                let _ = lt::destroy_matmul_desc(self.desc);
            }
        }
    }
}

struct Pref(sys::cublasLtMatmulPreference_t);

impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by cuBLASLt, destroyed once.
        unsafe {
            let _ = lt::destroy_matmul_pref(self.0);
        }
    }
}

fn set_desc<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: sys::cublasLtMatmulDescAttributes_t,
    v: &T,
) -> Result<()> {
    // SAFETY: `v` has the size and type cuBLASLt documents for `attr` (callers pass i32 for
    // TRANSA/B, i8 for FAST_ACCUM, u64 device pointers for the scale pointers).
    lt_err(&format!("set {attr:?}"), unsafe {
        lt::set_matmul_desc_attribute(
            desc,
            attr,
            v as *const T as *const c_void,
            std::mem::size_of::<T>(),
        )
    })
}

/// cuBLASLt handle, workspace, cached plans and the FP8 helper kernels, on a backend's stream.
pub struct CublasLt {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    plans: Mutex<HashMap<PlanKey, Plan>>,
    /// Absmax accumulator (f32 bits) of the activation quantizer.
    amax: Mutex<CudaSlice<u32>>,
    absmax_f32: CudaFunction,
    absmax_bf16: CudaFunction,
    quantize_f32: CudaFunction,
    quantize_bf16: CudaFunction,
    fill_e4m3: CudaFunction,
    fp8_supported: bool,
    fp8_fast_accum: bool,
}

// SAFETY: the raw cuBLASLt handles are only used under `&self` with the plans behind a mutex;
// cuBLASLt handles may be used from any thread that binds the context.
unsafe impl Send for CublasLt {}
unsafe impl Sync for CublasLt {}

impl Drop for CublasLt {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        let _ = self.stream.synchronize();
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).clear();
        // SAFETY: created in `new`, destroyed once.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

impl CublasLt {
    /// Open cuBLASLt on `be`'s device and stream. Its operations are ordered on that stream
    /// with the backend's kernels.
    pub fn new(be: &CudaBackend) -> Result<CublasLt> {
        ensure_cublaslt()?;
        let ctx = be.context().clone();
        let stream = be.stream().clone();
        drv("bind context", ctx.bind_to_thread())?;
        // cudarc panics on a missing symbol; keep that an error.
        let handle = std::panic::catch_unwind(lt::create_handle)
            .map_err(|_| Error::NoCublasLt("cublasLtCreate panicked (missing symbol?)".into()))?;
        let handle = lt_err("cublasLtCreate", handle)?;
        let workspace = match stream.alloc_zeros::<u8>(WORKSPACE_BYTES) {
            Ok(w) => w,
            Err(e) => {
                // SAFETY: created just above.
                unsafe {
                    let _ = lt::destroy_handle(handle);
                }
                return Err(Error::Driver {
                    what: "allocate cuBLASLt workspace".into(),
                    source: e,
                });
            }
        };
        // The helper kernels: the backend compiled every module for this architecture already
        // (compile_ptx caches it); load the "gemm" module here so backend.rs stays untouched.
        let ptx = compile_ptx(be.arch())?;
        let (_, gemm_ptx) = ptx
            .iter()
            .find(|(name, _)| *name == "gemm")
            .ok_or_else(|| Error::Shape("kernel module 'gemm' was not compiled".into()))?;
        let module = drv("load module gemm", ctx.load_module(gemm_ptx.clone()))?;
        let f = |name: &str| drv(format!("load kernel {name}"), module.load_function(name));
        let (major, minor) = drv("compute capability", ctx.compute_capability())?;
        Ok(CublasLt {
            absmax_f32: f("fp8_absmax_f32")?,
            absmax_bf16: f("fp8_absmax_bf16")?,
            quantize_f32: f("fp8_quantize_f32")?,
            quantize_bf16: f("fp8_quantize_bf16")?,
            fill_e4m3: f("fill_random_e4m3")?,
            amax: Mutex::new(drv("allocate absmax", stream.alloc_zeros::<u32>(1))?),
            // E4M3 tensor-core GEMMs exist from Ada (sm_89) on.
            fp8_supported: (major, minor) >= (8, 9),
            fp8_fast_accum: false,
            ctx,
            stream,
            handle,
            workspace,
            plans: Mutex::new(HashMap::new()),
        })
    }

    /// FP8 fast accumulation (CUBLASLT_MATMUL_DESC_FAST_ACCUM): faster on Hopper, but partial
    /// sums are not promoted to full f32 along K (slightly less accurate). Off by default.
    pub fn set_fp8_fast_accum(&mut self, on: bool) {
        self.fp8_fast_accum = on;
    }

    pub fn fp8_fast_accum(&self) -> bool {
        self.fp8_fast_accum
    }

    /// Whether this device has FP8 GEMMs (compute capability 8.9+).
    pub fn fp8_supported(&self) -> bool {
        self.fp8_supported
    }

    /// c[m][n] = a[m][k] · b[n][k]ᵀ, bf16 in and out, f32 accumulation.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_bf16(
        &self,
        a: &CudaSlice<u16>,
        b: &CudaSlice<u16>,
        c: &mut CudaSlice<u16>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        check_gemm_shape(GemmType::Bf16, m, n, k, a.len(), b.len(), c.len())?;
        let (pa, _ga) = a.device_ptr(&self.stream);
        let (pb, _gb) = b.device_ptr(&self.stream);
        let (pc, _gc) = c.device_ptr_mut(&self.stream);
        self.matmul(GemmType::Bf16, pa, pb, pc, None, m, n, k)
    }

    /// W8A8: c[m][n] = (a_scale · a[m][k]) · (b_scale · b[n][k])ᵀ with E4M3 a and b, per-tensor
    /// f32 scales read from the device (`a_scale[0]`, `b_scale[0]`), f32 accumulation, bf16 c.
    /// k and n must be multiples of 16.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_fp8_e4m3(
        &self,
        a: &CudaSlice<u8>,
        a_scale: &CudaSlice<f32>,
        b: &CudaSlice<u8>,
        b_scale: &CudaSlice<f32>,
        c: &mut CudaSlice<u16>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        check_gemm_shape(GemmType::Fp8E4m3, m, n, k, a.len(), b.len(), c.len())?;
        if a_scale.is_empty() || b_scale.is_empty() {
            return Err(Error::Shape(format!(
                "fp8 GEMM m={m} n={n} k={k}: a_scale and b_scale must hold one f32 each"
            )));
        }
        if !self.fp8_supported {
            return Err(Error::CublasLt {
                what: "fp8 GEMM".into(),
                status: "this device has no FP8 tensor cores (needs compute capability 8.9+)"
                    .into(),
            });
        }
        let (pa, _ga) = a.device_ptr(&self.stream);
        let (pb, _gb) = b.device_ptr(&self.stream);
        let (sa, _gsa) = a_scale.device_ptr(&self.stream);
        let (sb, _gsb) = b_scale.device_ptr(&self.stream);
        let (pc, _gc) = c.device_ptr_mut(&self.stream);
        self.matmul(GemmType::Fp8E4m3, pa, pb, pc, Some((sa, sb)), m, n, k)
    }

    /// Build (or reuse) the plan for this shape and enqueue the matmul on the stream.
    /// `x` = activations a, `w` = weights b, `d` = output; `scales` = (a_scale, b_scale).
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        ty: GemmType,
        x: u64,
        w: u64,
        d: u64,
        scales: Option<(u64, u64)>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        drv("bind context", self.ctx.bind_to_thread())?;
        let fast = ty == GemmType::Fp8E4m3 && self.fp8_fast_accum;
        let key = (ty, fast, m, n, k);
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if let std::collections::hash_map::Entry::Vacant(e) = plans.entry(key) {
            e.insert(self.make_plan(ty, fast, scales, m, n, k)?);
        }
        let plan = &plans[&key];
        use sys::cublasLtMatmulDescAttributes_t as A;
        if let Some((sa, sb)) = scales {
            // cuBLAS's A is our b (weights), its B our a (activations).
            set_desc(plan.desc, A::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sb)?;
            set_desc(plan.desc, A::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sa)?;
        }
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (ws, _g) = self.workspace.device_ptr(&self.stream);
        // SAFETY: the layouts describe buffers whose lengths check_gemm_shape verified; the
        // scale pointers point at one f32 each; alpha/beta are host f32 (the default pointer
        // mode) matching the f32 scale type; the workspace holds WORKSPACE_BYTES, the limit the
        // algorithm was chosen under.
        lt_err(
            &format!("cublasLtMatmul ({} m={m} n={n} k={k})", ty.name()),
            unsafe {
                lt::matmul(
                    self.handle,
                    plan.desc,
                    &alpha as *const f32 as *const c_void,
                    &beta as *const f32 as *const c_void,
                    w as *const c_void,
                    plan.w_layout,
                    x as *const c_void,
                    plan.x_layout,
                    d as *const c_void,
                    plan.d_layout,
                    d as *mut c_void,
                    plan.d_layout,
                    &plan.algo,
                    ws as *mut c_void,
                    WORKSPACE_BYTES,
                    self.stream.cu_stream() as sys::cudaStream_t,
                )
            },
        )
    }

    fn make_plan(
        &self,
        ty: GemmType,
        fast: bool,
        scales: Option<(u64, u64)>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<Plan> {
        use sys::cublasLtMatmulDescAttributes_t as A;
        use sys::cudaDataType::{CUDA_R_16BF, CUDA_R_32F, CUDA_R_8F_E4M3};
        let what = format!("{} GEMM m={m} n={n} k={k}", ty.name());
        let in_type = match ty {
            GemmType::Bf16 => CUDA_R_16BF,
            GemmType::Fp8E4m3 => CUDA_R_8F_E4M3,
        };
        // Filled in step by step: on an error, drop frees what was created.
        let mut plan = Plan {
            desc: std::ptr::null_mut(),
            w_layout: std::ptr::null_mut(),
            x_layout: std::ptr::null_mut(),
            d_layout: std::ptr::null_mut(),
            // SAFETY: plain data, overwritten by the heuristic's choice below.
            algo: unsafe { std::mem::zeroed() },
        };
        plan.desc = lt_err(
            "cublasLtMatmulDescCreate",
            lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, CUDA_R_32F),
        )?;
        // cublasOperation_t: 0 = N, 1 = T.
        set_desc(plan.desc, A::CUBLASLT_MATMUL_DESC_TRANSA, &1i32)?;
        set_desc(plan.desc, A::CUBLASLT_MATMUL_DESC_TRANSB, &0i32)?;
        if let Some((sa, sb)) = scales {
            // Set before the heuristic query: algorithms differ with and without scaling.
            set_desc(plan.desc, A::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sb)?;
            set_desc(plan.desc, A::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sa)?;
            set_desc(plan.desc, A::CUBLASLT_MATMUL_DESC_FAST_ACCUM, &(fast as i8))?;
        }
        let layout = |ty, rows: usize, cols: usize| {
            lt_err(
                "cublasLtMatrixLayoutCreate",
                lt::create_matrix_layout(ty, rows as u64, cols as u64, rows as i64),
            )
        };
        plan.w_layout = layout(in_type, k, n)?;
        plan.x_layout = layout(in_type, k, m)?;
        plan.d_layout = layout(CUDA_R_16BF, n, m)?;
        let pref = Pref(lt_err(
            "cublasLtMatmulPreferenceCreate",
            lt::create_matmul_pref(),
        )?);
        let ws = WORKSPACE_BYTES as u64;
        // SAFETY: MAX_WORKSPACE_BYTES takes a uint64_t.
        lt_err("set preference MAX_WORKSPACE_BYTES", unsafe {
            lt::set_matmul_pref_attribute(
                pref.0,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as *const c_void,
                std::mem::size_of::<u64>(),
            )
        })?;
        // SAFETY: every descriptor above is live.
        let heuristic = unsafe {
            lt::get_matmul_algo_heuristic(
                self.handle,
                plan.desc,
                plan.w_layout,
                plan.x_layout,
                plan.d_layout,
                plan.d_layout,
                pref.0,
            )
        }
        .map_err(|e| Error::CublasLt {
            what: format!("algorithm heuristic for {what}"),
            status: format!("{:?} (no algorithm supports this shape/type)", e.0),
        })?;
        plan.algo = heuristic.algo;
        Ok(plan)
    }

    /// Quantize `n` f32 activations to E4M3 with a per-tensor scale computed on the device
    /// (absmax / 448, 1 for an all-zero tensor), written to `scale[0]`; q = e4m3(x / scale),
    /// round to nearest even, saturating. No host round trip.
    pub fn quantize_e4m3_f32(
        &self,
        x: &CudaSlice<f32>,
        n: usize,
        q: &mut CudaSlice<u8>,
        scale: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.quantize(&self.absmax_f32, &self.quantize_f32, x, n, q, scale)
    }

    /// As [`CublasLt::quantize_e4m3_f32`], from bf16 activations.
    pub fn quantize_e4m3_bf16(
        &self,
        x: &CudaSlice<u16>,
        n: usize,
        q: &mut CudaSlice<u8>,
        scale: &mut CudaSlice<f32>,
    ) -> Result<()> {
        self.quantize(&self.absmax_bf16, &self.quantize_bf16, x, n, q, scale)
    }

    fn quantize<T>(
        &self,
        absmax: &CudaFunction,
        quant: &CudaFunction,
        x: &CudaSlice<T>,
        n: usize,
        q: &mut CudaSlice<u8>,
        scale: &mut CudaSlice<f32>,
    ) -> Result<()> {
        if n == 0 || x.len() < n || q.len() < n || scale.is_empty() {
            return Err(Error::Shape(format!(
                "e4m3 quantize of {n} values: need n > 0, x ({}) and q ({}) of at least n \
                 elements and one scale ({})",
                x.len(),
                q.len(),
                scale.len()
            )));
        }
        let cfg = grid_cfg(n);
        let n64 = n as u64;
        let mut amax = self.amax.lock().unwrap_or_else(|e| e.into_inner());
        drv("zero absmax", self.stream.memset_zeros(&mut *amax))?;
        // SAFETY: the kernels read x[0..n] and write q[0..n] and scale[0] (lengths checked
        // above), amax[0] is one u32; argument types match the kernel signatures.
        unsafe {
            drv(
                "launch fp8 absmax",
                self.stream
                    .launch_builder(absmax)
                    .arg(x)
                    .arg(&n64)
                    .arg(&mut *amax)
                    .launch(cfg),
            )?;
            drv(
                "launch fp8 quantize",
                self.stream
                    .launch_builder(quant)
                    .arg(x)
                    .arg(&n64)
                    .arg(&*amax)
                    .arg(q)
                    .arg(scale)
                    .launch(cfg),
            )?;
        }
        Ok(())
    }

    /// Fill `p` with E4M3 codes of values uniform in [lo, hi) (saturating to +-448).
    pub fn fill_random_e4m3(
        &self,
        p: &mut CudaSlice<u8>,
        seed: u64,
        lo: f32,
        hi: f32,
    ) -> Result<()> {
        if p.is_empty() {
            return Ok(());
        }
        let n = p.len() as u64;
        // SAFETY: the kernel writes p[0..n].
        unsafe {
            drv(
                "launch fill_random_e4m3",
                self.stream
                    .launch_builder(&self.fill_e4m3)
                    .arg(p)
                    .arg(&n)
                    .arg(&seed)
                    .arg(&lo)
                    .arg(&hi)
                    .launch(grid_cfg(n as usize)),
            )?;
        }
        Ok(())
    }
}

/// Grid-stride launch: 256 threads a block, at most 1024 blocks.
fn grid_cfg(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 1024) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_checks() {
        let ok = |ty, m: usize, n: usize, k: usize| {
            check_gemm_shape(ty, m, n, k, m * k, n * k, m * n).is_ok()
        };
        assert!(ok(GemmType::Bf16, 1, 24, 40));
        assert!(ok(GemmType::Fp8E4m3, 1, 16, 16));
        assert!(ok(GemmType::Fp8E4m3, 7, 4096, 4096));
        assert!(!ok(GemmType::Fp8E4m3, 1, 16, 24), "k not a multiple of 16");
        assert!(!ok(GemmType::Fp8E4m3, 1, 24, 32), "n not a multiple of 16");
        assert!(!ok(GemmType::Bf16, 0, 16, 16));
        assert!(!ok(GemmType::Bf16, 16, 0, 16));
        assert!(check_gemm_shape(GemmType::Bf16, 4, 8, 16, 4 * 16 - 1, 8 * 16, 32).is_err());
        assert!(check_gemm_shape(GemmType::Bf16, 4, 8, 16, 64, 8 * 16 - 1, 32).is_err());
        assert!(check_gemm_shape(GemmType::Bf16, 4, 8, 16, 64, 128, 31).is_err());
        assert!(check_gemm_shape(GemmType::Bf16, usize::MAX, 8, 16, 64, 128, 31).is_err());
    }
}
