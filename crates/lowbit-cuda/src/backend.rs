//! Device, stream, kernel table and the launch wrappers.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig};

/// Kernel arguments for `cuLaunchKernelEx`: one 8-byte slot per argument (a device pointer or a
/// 4- or 8-byte scalar in its low bytes; the driver reads each through a pointer to its slot).
pub struct KernelArgs<'a> {
    stream: &'a CudaStream,
    slots: Vec<u64>,
}

/// A value that can be passed to a kernel.
pub trait KernelArg {
    fn slot(&self, stream: &CudaStream) -> u64;
}

impl<T> KernelArg for CudaSlice<T> {
    fn slot(&self, stream: &CudaStream) -> u64 {
        // Event tracking is disabled on the context, so the guard records nothing.
        let (ptr, _guard) = self.device_ptr(stream);
        ptr
    }
}
impl<T> KernelArg for cudarc::driver::CudaViewMut<'_, T> {
    fn slot(&self, stream: &CudaStream) -> u64 {
        let (ptr, _guard) = self.device_ptr(stream);
        ptr
    }
}
impl<T> KernelArg for cudarc::driver::CudaView<'_, T> {
    fn slot(&self, stream: &CudaStream) -> u64 {
        let (ptr, _guard) = self.device_ptr(stream);
        ptr
    }
}
impl KernelArg for i32 {
    fn slot(&self, _: &CudaStream) -> u64 {
        *self as u32 as u64
    }
}
impl KernelArg for u32 {
    fn slot(&self, _: &CudaStream) -> u64 {
        *self as u64
    }
}
impl KernelArg for f32 {
    fn slot(&self, _: &CudaStream) -> u64 {
        self.to_bits() as u64
    }
}
impl KernelArg for u64 {
    fn slot(&self, _: &CudaStream) -> u64 {
        *self
    }
}

impl KernelArgs<'_> {
    pub fn arg<A: KernelArg + ?Sized>(&mut self, a: &A) -> &mut Self {
        self.slots.push(a.slot(self.stream));
        self
    }
}

use crate::{compile_ptx, drv, Error, Result};

/// Weight layouts the GEMV kernels read (see `kernels/gemv.cu` for the exact byte layouts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightFormat {
    /// Symmetric INT4, groups of 128 along K, f16 scales; 8 codes (q + 8) per u32.
    Int4G128,
    /// The same numbers repacked at upload into 1 KB units of 16 rows x 128 (kernels/gemv.cu,
    /// "tiled layout"), read by a persistent streaming kernel; batch 1..16.
    Int4G128Tiled,
    /// GGML Q4_K (144-byte blocks of 256).
    Q4K,
    /// GGML Q8_0 (34-byte blocks of 32).
    Q8_0,
    /// bf16, row-major.
    Bf16,
    /// GGML Q6_K (210-byte blocks of 256).
    Q6K,
    /// f32, row-major, any K: small or odd-width matrices no other layout holds.
    F32,
    /// lowbit's LB_NVFP4 blocks (76 bytes per 128 values: f32 global scale, 8 E4M3 scales).
    Nvfp4,
    /// GGML MXFP4 (17-byte blocks of 32: E8M0 exponent, E2M1 codes).
    Mxfp4,
}

impl WeightFormat {
    pub fn parse(s: &str) -> Option<WeightFormat> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "int4g128" | "int4" => Some(WeightFormat::Int4G128),
            "int4g128t" | "int4t" => Some(WeightFormat::Int4G128Tiled),
            "q4k" => Some(WeightFormat::Q4K),
            "q80" => Some(WeightFormat::Q8_0),
            "bf16" => Some(WeightFormat::Bf16),
            "q6k" => Some(WeightFormat::Q6K),
            "f32" => Some(WeightFormat::F32),
            "nvfp4" => Some(WeightFormat::Nvfp4),
            "mxfp4" => Some(WeightFormat::Mxfp4),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::Int4G128 => "int4g128",
            WeightFormat::Int4G128Tiled => "int4g128t",
            WeightFormat::Q4K => "q4_k",
            WeightFormat::Q8_0 => "q8_0",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Q6K => "q6_k",
            WeightFormat::F32 => "f32",
            WeightFormat::Nvfp4 => "nvfp4",
            WeightFormat::Mxfp4 => "mxfp4",
        }
    }

    /// K must be a multiple of this.
    pub fn k_multiple(self) -> usize {
        match self {
            WeightFormat::Int4G128 | WeightFormat::Int4G128Tiled => 128,
            WeightFormat::Q4K | WeightFormat::Q6K => 256,
            WeightFormat::Q8_0 => 32,
            WeightFormat::Bf16 => 8,
            WeightFormat::F32 => 1,
            WeightFormat::Nvfp4 => 128,
            WeightFormat::Mxfp4 => 32,
        }
    }

    /// (bytes of the main array, number of f16 scales) for a rows x cols matrix as stored on
    /// the device (the tiled layout pads rows to a multiple of 16).
    pub fn sizes(self, rows: usize, cols: usize) -> (usize, usize) {
        match self {
            WeightFormat::Int4G128 => (rows * cols / 2, rows * cols / 128),
            WeightFormat::Int4G128Tiled => {
                let padded = rows.div_ceil(16) * 16;
                (padded * cols / 2, padded * cols / 128)
            }
            WeightFormat::Q4K => (rows * cols / 256 * 144, 0),
            WeightFormat::Q8_0 => (rows * cols / 32 * 34, 0),
            WeightFormat::Bf16 => (rows * cols * 2, 0),
            WeightFormat::Q6K => (rows * cols / 256 * 210, 0),
            WeightFormat::F32 => (rows * cols * 4, 0),
            WeightFormat::Nvfp4 => (rows * cols / 128 * 76, 0),
            WeightFormat::Mxfp4 => (rows * cols / 32 * 17, 0),
        }
    }

    fn kernel_prefix(self) -> &'static str {
        match self {
            WeightFormat::Int4G128 => "gemv_int4_g128",
            WeightFormat::Int4G128Tiled => "gemv_int4t",
            WeightFormat::Q4K => "gemv_q4_k",
            WeightFormat::Q8_0 => "gemv_q8_0",
            WeightFormat::Bf16 => "gemv_bf16",
            WeightFormat::Q6K => "gemv_q6_k",
            WeightFormat::F32 => "gemv_f32",
            WeightFormat::Nvfp4 => "gemv_nvfp4",
            WeightFormat::Mxfp4 => "gemv_mxfp4",
        }
    }
}

/// A weight matrix [rows = N outputs][cols = K inputs] resident on the device.
pub struct DeviceMatrix {
    pub format: WeightFormat,
    pub rows: usize,
    pub cols: usize,
    pub data: CudaSlice<u8>,
    /// f16 group scales (INT4 g128 only).
    pub scales: Option<CudaSlice<u16>>,
}

impl DeviceMatrix {
    /// Bytes the GEMV reads from device memory for this matrix.
    pub fn bytes(&self) -> usize {
        self.data.len() + self.scales.as_ref().map_or(0, |s| s.len() * 2)
    }
}

/// Which INT4 g128 GEMV kernel runs (kernels/gemv.cu). `LOWBIT_INT4_KERNEL` picks the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int4Kernel {
    /// f32 activations re-read by every lane through L1 (the first tensor-core kernel).
    L1F32,
    /// Activations staged per block in shared memory as permuted f16; `tiles` 16-row tiles per
    /// block; `prepass`: a separate kernel converts x to f16 first (else each block converts).
    Staged { tiles: u32, prepass: bool },
    /// Per batch, the faster on the H100 (2026-11-23, BENCHMARKS.md): `L1F32` for batch 1..2
    /// (staging did not beat it there), `Staged { tiles: 2, prepass: false }` for 3..8
    /// (1.3-1.6x on 14336x4096 at batch 4..8).
    Auto,
}

impl Int4Kernel {
    pub const ALL: [Int4Kernel; 6] = [
        Int4Kernel::Auto,
        Int4Kernel::L1F32,
        Int4Kernel::Staged {
            tiles: 1,
            prepass: false,
        },
        Int4Kernel::Staged {
            tiles: 2,
            prepass: false,
        },
        Int4Kernel::Staged {
            tiles: 1,
            prepass: true,
        },
        Int4Kernel::Staged {
            tiles: 2,
            prepass: true,
        },
    ];
    /// Environment variable naming the default kernel (one of the `name()`s).
    pub const ENV: &'static str = "LOWBIT_INT4_KERNEL";
    /// The shipped default.
    pub const DEFAULT: Int4Kernel = Int4Kernel::Auto;

    /// The kernel that runs at this batch size.
    pub fn resolve(self, batch: usize) -> Int4Kernel {
        match self {
            Int4Kernel::Auto if batch <= 2 => Int4Kernel::L1F32,
            Int4Kernel::Auto => Int4Kernel::Staged {
                tiles: 2,
                prepass: false,
            },
            k => k,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Int4Kernel::Auto => "auto",
            Int4Kernel::L1F32 => "l1f32",
            Int4Kernel::Staged {
                tiles: 1,
                prepass: false,
            } => "s1f32",
            Int4Kernel::Staged {
                tiles: _,
                prepass: false,
            } => "s2f32",
            Int4Kernel::Staged {
                tiles: 1,
                prepass: true,
            } => "s1f16",
            Int4Kernel::Staged {
                tiles: _,
                prepass: true,
            } => "s2f16",
        }
    }

    pub fn parse(s: &str) -> Option<Int4Kernel> {
        Int4Kernel::ALL.into_iter().find(|k| k.name() == s)
    }
}

const GEMV_WARPS: u32 = 4; // matches kernels/gemv.cu
const INT4_WARPS: u32 = 8; // matches kernels/gemv.cu
const INT4T_WARPS: u32 = 8; // matches kernels/gemv.cu
/// Largest GEMV batch of the row-major kernels.
pub const MAX_BATCH: usize = 8;
/// Largest GEMV batch of the tiled INT4 kernel.
pub const MAX_BATCH_TILED: usize = 16;

/// Repack a row-major INT4 g128 matrix (`WeightFormat::Int4G128`: u32 words of 8 codes, f16
/// scales [rows][cols/128]) into the tiled layout of `WeightFormat::Int4G128Tiled`: units of
/// 16 rows x 128 columns, 1 KB each, lane-ordered for the streaming kernel (kernels/gemv.cu).
/// Padding rows get code 8 (value 0) and scale 0.
pub fn tile_int4_g128(
    rows: usize,
    cols: usize,
    data: &[u8],
    scales: &[u16],
) -> Result<(Vec<u8>, Vec<u16>)> {
    check_shape(WeightFormat::Int4G128, rows, cols)?;
    let (nbytes, nscales) = WeightFormat::Int4G128.sizes(rows, cols);
    if data.len() != nbytes || scales.len() != nscales {
        return Err(Error::Shape(format!(
            "int4g128 matrix {rows}x{cols}: expected {nbytes} bytes and {nscales} scales, got {} and {}",
            data.len(),
            scales.len()
        )));
    }
    let groups = cols / 128;
    let tiles = rows.div_ceil(16);
    let (tbytes, tscales) = WeightFormat::Int4G128Tiled.sizes(rows, cols);
    let mut out = vec![0x88u8; tbytes];
    let mut out_scales = vec![0u16; tscales];
    let row_bytes = cols / 2;
    for tile in 0..tiles {
        for grp in 0..groups {
            let unit = tile * groups + grp;
            for r in 0..16 {
                let row = tile * 16 + r;
                if row >= rows {
                    continue;
                }
                out_scales[unit * 16 + r] = scales[row * groups + grp];
                // Row r of the tile is g = r % 8 in half r / 8; lane (g, t) holds 16 bytes.
                let (g, half) = (r % 8, r / 8);
                for t in 0..4 {
                    let lane = 4 * g + t;
                    let dst = unit * 1024 + half * 512 + lane * 16;
                    let src = row * row_bytes + grp * 64 + t * 16;
                    out[dst..dst + 16].copy_from_slice(&data[src..src + 16]);
                }
            }
        }
    }
    Ok((out, out_scales))
}

/// One CUDA device with its stream and compiled kernels.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    funcs: HashMap<String, CudaFunction>,
    name: String,
    arch: String,
    int4_kernel: Int4Kernel,
    /// Largest dynamic shared memory a staged INT4 block may ask for.
    max_dyn_smem: usize,
    /// Pre-pass output (permuted f16 activations), allocated once so decode never allocates.
    xh: std::sync::Mutex<CudaSlice<u16>>,
    /// Tiled INT4 kernel: partial sums [tiles][16][16] and unit counters per 16-row tile, all
    /// zero between launches; grown when a larger tiled matrix is created, never during decode.
    int4t_ws: std::sync::Mutex<(CudaSlice<f32>, CudaSlice<u32>)>,
    /// Streaming multiprocessors (the tiled INT4 kernel's grid is a multiple).
    sms: u32,
    /// LOWBIT_INT4T_BLOCKS_PER_SM, if set (tuning).
    int4t_blocks_per_sm: Option<u32>,
    /// LOWBIT_INT4T_ACT: "smem" or "l1" forces the activation path of the tiled kernel.
    int4t_act: Option<String>,
    /// Resident blocks per SM for (kernel, dynamic shared memory), from the occupancy API.
    occupancy: std::sync::Mutex<HashMap<(String, usize), u32>>,
    /// Programmatic dependent launch in use / possible on this device (sm_90+).
    pdl: bool,
    pdl_supported: bool,
    /// Kernels that do not call pdl_wait() (the random fills), by CUfunction handle.
    no_pdl: std::collections::HashSet<usize>,
    /// Set when a non-kernel operation was issued: the next launch is not programmatic.
    pdl_fence: std::sync::atomic::AtomicBool,
}

/// f16 values the pre-pass scratch holds (batch x K); larger inputs use the in-block conversion.
const XH_SCRATCH: usize = 8 * 32768;
/// Static shared memory of the staged INT4 kernels (the reduction array).
const INT4_STATIC_SMEM: usize = INT4_WARPS as usize * 16 * 8 * 4;

fn check_len(what: &str, have: usize, need: usize) -> Result<()> {
    if have < need {
        return Err(Error::Shape(format!(
            "{what}: buffer holds {have} elements, need {need}"
        )));
    }
    Ok(())
}

impl CudaBackend {
    /// Open device `ordinal`, compile (or reuse) the kernels for its architecture and load them.
    /// Without a driver or device this is an error, never a panic.
    pub fn new(ordinal: usize) -> Result<CudaBackend> {
        // SAFETY: only probes whether libcuda can be opened.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::NoDriver);
        }
        // cudarc panics on some loader failures (e.g. a missing symbol); keep that an error.
        let ctx = std::panic::catch_unwind(|| CudaContext::new(ordinal))
            .map_err(|_| Error::NoDevice {
                ordinal,
                reason: "driver initialisation panicked".into(),
            })?
            .map_err(|e| Error::NoDevice {
                ordinal,
                reason: e.to_string(),
            })?;
        // One stream, in order: cudarc's per-buffer event tracking only costs launch time here.
        // SAFETY: no buffer is shared between streams in this backend.
        unsafe { ctx.disable_event_tracking() };
        // A stream of our own, not the legacy default stream: CUDA graphs cannot capture that.
        let stream = drv("create stream", ctx.new_stream())?;
        let (major, minor) = drv("compute capability", ctx.compute_capability())?;
        let arch = format!("sm_{major}{minor}");
        let name = drv("device name", ctx.name())?;
        let ptx = compile_ptx(&arch)?;
        let mut funcs = HashMap::new();
        for (module_name, p) in ptx.iter() {
            let module = drv(
                format!("load module {module_name}"),
                ctx.load_module(p.clone()),
            )?;
            for entry in ptx_entries(&p.to_src()) {
                let f = drv(format!("load kernel {entry}"), module.load_function(&entry))?;
                funcs.insert(entry, f);
            }
        }
        // Staged INT4 kernels keep up to batch x K f16 activations in shared memory: allow the
        // device's opt-in maximum (227 KB on H100) instead of the default 48 KB.
        use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute};
        let optin = drv(
            "shared memory opt-in limit",
            ctx.attribute(
                CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            ),
        )? as usize;
        let max_dyn_smem = optin.saturating_sub(INT4_STATIC_SMEM);
        for (entry, f) in funcs.iter() {
            if entry.starts_with("gemv_int4_g128_s") || entry.starts_with("gemv_int4t_smem") {
                drv(
                    format!("set shared memory limit of {entry}"),
                    f.set_attribute(
                        CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        max_dyn_smem as i32,
                    ),
                )?;
            }
        }
        let int4_kernel = match std::env::var(Int4Kernel::ENV) {
            Ok(v) => Int4Kernel::parse(&v).ok_or_else(|| {
                Error::Shape(format!(
                    "{}={v}: expected one of {:?}",
                    Int4Kernel::ENV,
                    Int4Kernel::ALL.map(|k| k.name())
                ))
            })?,
            Err(_) => Int4Kernel::DEFAULT,
        };
        let xh = std::sync::Mutex::new(drv(
            "allocate activation scratch",
            stream.alloc_zeros::<u16>(XH_SCRATCH),
        )?);
        let sms = drv(
            "multiprocessor count",
            ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT),
        )? as u32;
        let int4t_blocks_per_sm = std::env::var("LOWBIT_INT4T_BLOCKS_PER_SM")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|&n| n > 0);
        let int4t_act = std::env::var("LOWBIT_INT4T_ACT").ok();
        let pdl_supported = major >= 9;
        let pdl = pdl_supported && std::env::var("LOWBIT_PDL").map_or(true, |v| v != "0");
        let no_pdl = funcs
            .iter()
            .filter(|(name, _)| name.starts_with("fill_random"))
            .map(|(_, f)| f.cu_function() as usize)
            .collect();
        let int4t_ws = std::sync::Mutex::new((
            drv("allocate int4t workspace", stream.alloc_zeros::<f32>(256))?,
            drv("allocate int4t counters", stream.alloc_zeros::<u32>(1))?,
        ));
        Ok(CudaBackend {
            ctx,
            stream,
            funcs,
            name,
            arch,
            int4_kernel,
            max_dyn_smem,
            xh,
            int4t_ws,
            sms,
            int4t_blocks_per_sm,
            int4t_act,
            occupancy: std::sync::Mutex::new(HashMap::new()),
            pdl,
            pdl_supported,
            no_pdl,
            pdl_fence: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Make the tiled INT4 workspace large enough for a matrix of `rows` rows.
    fn reserve_int4t_workspace(&self, rows: usize) -> Result<()> {
        let tiles = rows.div_ceil(16);
        let mut ws = self.int4t_ws.lock().unwrap_or_else(|e| e.into_inner());
        if ws.1.len() < tiles {
            *ws = (self.alloc::<f32>(tiles * 256)?, self.alloc::<u32>(tiles)?);
        }
        Ok(())
    }

    /// Blocks of `kernel` (of `threads` threads) resident per SM with `smem` bytes of dynamic
    /// shared memory; cached, so launches do not query the driver every time.
    fn blocks_per_sm(&self, kernel: &str, threads: u32, smem: usize) -> Result<u32> {
        let key = (kernel.to_string(), smem);
        let mut cache = self.occupancy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&n) = cache.get(&key) {
            return Ok(n);
        }
        let n = drv(
            format!("occupancy of {kernel}"),
            self.func(kernel)?
                .occupancy_max_active_blocks_per_multiprocessor(threads, smem, None),
        )?;
        cache.insert(key, n);
        Ok(n)
    }

    /// (kernel name, grid blocks, dynamic shared memory) of the tiled INT4 GEMV for this call.
    /// Activations are staged in shared memory when they fit, else read through L1.
    pub fn int4t_launch_plan(&self, batch: usize, cols: usize) -> Result<(String, u32, usize)> {
        let threads = INT4T_WARPS * 32;
        let smem = batch * (cols / 8 + 4) * 16;
        let smem_name = format!("gemv_int4t_smem_b{batch}");
        let l1_name = format!("gemv_int4t_b{batch}");
        let use_smem = match self.int4t_act.as_deref() {
            Some("smem") => smem <= self.max_dyn_smem,
            Some("l1") => false,
            // Measured on the H100 (BENCHMARKS.md, round 4): shared memory wins at every batch
            // where it fits, even at one block per SM (batch 16, K 4096: 30.6 us vs 74 us).
            _ => smem <= self.max_dyn_smem,
        };
        let (name, smem) = if use_smem {
            (smem_name, smem)
        } else {
            (l1_name, 0)
        };
        let per_sm = match self.int4t_blocks_per_sm {
            Some(n) => n,
            None => self.blocks_per_sm(&name, threads, smem)?.max(1),
        };
        Ok((name, self.sms * per_sm, smem))
    }

    pub fn int4_kernel(&self) -> Int4Kernel {
        self.int4_kernel
    }

    /// Choose the INT4 g128 GEMV kernel (all compute the same function).
    pub fn set_int4_kernel(&mut self, k: Int4Kernel) {
        self.int4_kernel = k;
    }

    pub fn device_name(&self) -> &str {
        &self.name
    }

    pub fn arch(&self) -> &str {
        &self.arch
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn synchronize(&self) -> Result<()> {
        drv("synchronize", self.stream.synchronize())
    }

    pub(crate) fn func(&self, name: &str) -> Result<&CudaFunction> {
        self.funcs
            .get(name)
            .ok_or_else(|| Error::Shape(format!("kernel '{name}' is not in the compiled modules")))
    }

    pub fn alloc<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>> {
        self.pdl_fence();
        drv(
            format!("allocate {n} elements"),
            self.stream.alloc_zeros::<T>(n.max(1)),
        )
    }

    pub fn upload<T: cudarc::driver::DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        self.pdl_fence();
        drv("copy to device", self.stream.clone_htod(host))
    }

    pub fn download<T: cudarc::driver::DeviceRepr + Default + Clone>(
        &self,
        dev: &CudaSlice<T>,
    ) -> Result<Vec<T>> {
        drv("copy to host", self.stream.clone_dtoh(dev))
    }

    /// Upload a matrix stored in `format` (scales: f16 bits, INT4 g128 only).
    pub fn upload_matrix(
        &self,
        format: WeightFormat,
        rows: usize,
        cols: usize,
        data: &[u8],
        scales: Option<&[u16]>,
    ) -> Result<DeviceMatrix> {
        if format == WeightFormat::Int4G128Tiled {
            // Given in the row-major INT4 layout; repacked here.
            let scales = scales.ok_or_else(|| {
                Error::Shape(format!("int4g128t matrix {rows}x{cols}: scales missing"))
            })?;
            let (tiled, tiled_scales) = tile_int4_g128(rows, cols, data, scales)?;
            self.reserve_int4t_workspace(rows)?;
            return Ok(DeviceMatrix {
                format,
                rows,
                cols,
                data: self.upload(&tiled)?,
                scales: Some(self.upload(&tiled_scales)?),
            });
        }
        check_shape(format, rows, cols)?;
        let (nbytes, nscales) = format.sizes(rows, cols);
        if data.len() != nbytes {
            return Err(Error::Shape(format!(
                "{} matrix {rows}x{cols}: expected {nbytes} bytes, got {}",
                format.name(),
                data.len()
            )));
        }
        let scales = match (nscales, scales) {
            (0, None) => None,
            (n, Some(s)) if s.len() == n => Some(self.upload(s)?),
            (n, s) => {
                return Err(Error::Shape(format!(
                    "{} matrix {rows}x{cols}: expected {n} scales, got {}",
                    format.name(),
                    s.map_or(0, |s| s.len())
                )))
            }
        };
        Ok(DeviceMatrix {
            format,
            rows,
            cols,
            data: self.upload(data)?,
            scales,
        })
    }

    /// A matrix of random weights built on the device (no host copy), with value ranges that
    /// keep activations finite through a deep network.
    pub fn random_matrix(
        &self,
        format: WeightFormat,
        rows: usize,
        cols: usize,
        seed: u64,
    ) -> Result<DeviceMatrix> {
        check_shape(format, rows, cols)?;
        let (nbytes, nscales) = format.sizes(rows, cols);
        let mut data = self.alloc::<u8>(nbytes)?;
        let mut scales = None;
        let cfg = grid_stride_cfg();
        match format {
            WeightFormat::Int4G128 | WeightFormat::Int4G128Tiled => {
                if format == WeightFormat::Int4G128Tiled {
                    self.reserve_int4t_workspace(rows)?;
                }
                let f = self.func("fill_random_u32")?;
                let n = (nbytes / 4) as u64;
                self.launch(f, cfg, |b| b.arg(&mut data).arg(&n).arg(&seed))?;
                let mut s = self.alloc::<u16>(nscales)?;
                self.fill_half(
                    &mut s,
                    seed ^ 0x5ca1e,
                    0.5 / (cols as f32).sqrt() / 4.0,
                    1.5 / (cols as f32).sqrt() / 4.0,
                    0,
                )?;
                scales = Some(s);
            }
            WeightFormat::Q4K => {
                let f = self.func("fill_random_q4_k")?;
                let n = (nbytes / 144) as u64;
                self.launch(f, cfg, |b| b.arg(&mut data).arg(&n).arg(&seed))?;
            }
            WeightFormat::Q8_0 => {
                let f = self.func("fill_random_q8_0")?;
                let n = (nbytes / 34) as u64;
                self.launch(f, cfg, |b| b.arg(&mut data).arg(&n).arg(&seed))?;
            }
            WeightFormat::Q6K => {
                let f = self.func("fill_random_q6_k")?;
                let n = (nbytes / 210) as u64;
                self.launch(f, cfg, |b| b.arg(&mut data).arg(&n).arg(&seed))?;
            }
            WeightFormat::Nvfp4 | WeightFormat::Mxfp4 => {
                let (name, block) = if format == WeightFormat::Nvfp4 {
                    ("fill_random_nvfp4", 76)
                } else {
                    ("fill_random_mxfp4", 17)
                };
                let f = self.func(name)?;
                let n = (nbytes / block) as u64;
                self.launch(f, cfg, |b| b.arg(&mut data).arg(&n).arg(&seed))?;
            }
            WeightFormat::F32 => {
                let f = self.func("fill_random_f32")?;
                let n = (nbytes / 4) as u64;
                let a = 1.0 / (cols as f32).sqrt();
                let (lo, hi) = (-a, a);
                self.launch(f, cfg, |b| {
                    b.arg(&mut data).arg(&n).arg(&seed).arg(&lo).arg(&hi)
                })?;
            }
            WeightFormat::Bf16 => {
                let f = self.func("fill_random_half")?;
                let n = (nbytes / 2) as u64;
                let a = 1.0 / (cols as f32).sqrt();
                let (lo, hi, kind) = (-a, a, 1i32);
                self.launch(f, cfg, |b| {
                    b.arg(&mut data)
                        .arg(&n)
                        .arg(&seed)
                        .arg(&lo)
                        .arg(&hi)
                        .arg(&kind)
                })?;
            }
        }
        Ok(DeviceMatrix {
            format,
            rows,
            cols,
            data,
            scales,
        })
    }

    /// Fill with uniform values in [lo, hi): kind 0 = f16, 1 = bf16.
    pub fn fill_half(
        &self,
        p: &mut CudaSlice<u16>,
        seed: u64,
        lo: f32,
        hi: f32,
        kind: i32,
    ) -> Result<()> {
        let f = self.func("fill_random_half")?;
        let n = p.len() as u64;
        self.launch(f, grid_stride_cfg(), |b| {
            b.arg(p).arg(&n).arg(&seed).arg(&lo).arg(&hi).arg(&kind)
        })
    }

    pub fn fill_f32(&self, p: &mut CudaSlice<f32>, seed: u64, lo: f32, hi: f32) -> Result<()> {
        let f = self.func("fill_random_f32")?;
        let n = p.len() as u64;
        self.launch(f, grid_stride_cfg(), |b| {
            b.arg(p).arg(&n).arg(&seed).arg(&lo).arg(&hi)
        })
    }

    /// Launch `f`; with programmatic dependent launch on (sm_90+, `LOWBIT_PDL` not 0) every
    /// kernel except the random fills is launched with programmatic stream serialization, so it
    /// may start before the previous kernel ends (each such kernel calls pdl_wait() before
    /// touching data another kernel wrote: kernels/common.cu).
    pub(crate) fn launch<'a>(
        &'a self,
        f: &'a CudaFunction,
        cfg: LaunchConfig,
        args: impl for<'b> FnOnce(&'b mut KernelArgs<'a>) -> &'b mut KernelArgs<'a>,
    ) -> Result<()> {
        use cudarc::driver::sys;
        let mut ka = KernelArgs {
            stream: &self.stream,
            slots: Vec::with_capacity(16),
        };
        args(&mut ka);
        let mut params: Vec<*mut std::ffi::c_void> = ka
            .slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut std::ffi::c_void)
            .collect();
        // A kernel may only overlap a kernel that calls pdl_wait()'s counterpart: after a copy or
        // memset (issued outside `launch`), the next launch is a normal one (measured on the
        // H100: a programmatic launch right after a host-to-device copy read stale data).
        let after_other_op = self
            .pdl_fence
            .swap(false, std::sync::atomic::Ordering::Relaxed);
        let pdl = self.pdl && !after_other_op && !self.no_pdl.contains(&(f.cu_function() as usize));
        // SAFETY: an all-zero attribute value is valid; only the field for the id is read.
        let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: if pdl { &mut attr } else { std::ptr::null_mut() },
            numAttrs: pdl as u32,
        };
        drv("bind context", self.ctx.bind_to_thread())?;
        // SAFETY: every wrapper checks buffer lengths against the sizes the kernel indexes, and
        // passes exactly the kernel's parameters in order; `params` points into `ka.slots`,
        // which outlives the call.
        let r = unsafe {
            sys::cuLaunchKernelEx(
                &config,
                f.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        drv("kernel launch", r.result())
    }

    /// The next kernel launch waits for everything before it in the stream (call after issuing
    /// copies or memsets on the stream directly). Uploads and allocations do this themselves.
    pub fn pdl_fence(&self) {
        self.pdl_fence
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether kernels are launched with programmatic dependent launch.
    pub fn pdl(&self) -> bool {
        self.pdl
    }

    /// Turn programmatic dependent launch on or off (results are the same either way).
    pub fn set_pdl(&mut self, on: bool) {
        self.pdl = on && self.pdl_supported;
    }

    /// y[b][0..rows] = W x[b] for b < batch (1..=8); x is [batch][cols], y is [batch][rows].
    pub fn gemv(
        &self,
        w: &DeviceMatrix,
        x: &CudaSlice<f32>,
        batch: usize,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let max_batch = if w.format == WeightFormat::Int4G128Tiled {
            MAX_BATCH_TILED
        } else {
            MAX_BATCH
        };
        if !(1..=max_batch).contains(&batch) {
            return Err(Error::Shape(format!(
                "gemv batch for {} must be 1..={max_batch}, got {batch}",
                w.format.name()
            )));
        }
        check_len("gemv x", x.len(), batch * w.cols)?;
        check_len("gemv y", y.len(), batch * w.rows)?;
        if w.format == WeightFormat::Int4G128Tiled {
            let scales = w
                .scales
                .as_ref()
                .ok_or_else(|| Error::Shape("int4g128t matrix without scales".into()))?;
            let mut ws = self.int4t_ws.lock().unwrap_or_else(|e| e.into_inner());
            check_len("int4t counters", ws.1.len(), w.rows.div_ceil(16))?;
            let (name, grid, smem) = self.int4t_launch_plan(batch, w.cols)?;
            let f = self.func(&name)?;
            let cfg = LaunchConfig {
                grid_dim: (grid, 1, 1),
                block_dim: (INT4T_WARPS * 32, 1, 1),
                shared_mem_bytes: smem as u32,
            };
            let (n, k) = (w.rows as i32, w.cols as i32);
            let (wsf, cnt) = &mut *ws;
            return self.launch(f, cfg, |b| {
                b.arg(&w.data)
                    .arg(scales)
                    .arg(x)
                    .arg(y)
                    .arg(wsf)
                    .arg(cnt)
                    .arg(&n)
                    .arg(&k)
            });
        }
        if w.format == WeightFormat::Int4G128 {
            if let Int4Kernel::Staged { tiles, prepass } = self.int4_kernel.resolve(batch) {
                let smem = batch * (w.cols / 8 + 4) * 16;
                if smem <= self.max_dyn_smem {
                    return self.gemv_int4_staged(w, x, batch, y, tiles, prepass, smem);
                }
                // Too many activations for shared memory: the L1 kernel below.
            }
        }
        let f = self.func(&format!("{}_b{batch}", w.format.kernel_prefix()))?;
        // INT4: a block of INT4_WARPS warps per 16-row tensor-core tile (kernels/gemv.cu);
        // the others: one warp per row.
        let (rows_per_block, threads) = if w.format == WeightFormat::Int4G128 {
            (16, INT4_WARPS * 32)
        } else {
            (GEMV_WARPS, GEMV_WARPS * 32)
        };
        let cfg = LaunchConfig {
            grid_dim: ((w.rows as u32).div_ceil(rows_per_block), 1, 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        };
        let (n, k) = (w.rows as i32, w.cols as i32);
        match &w.scales {
            Some(s) => self.launch(f, cfg, |b| {
                b.arg(&w.data).arg(s).arg(x).arg(y).arg(&n).arg(&k)
            }),
            None => self.launch(f, cfg, |b| b.arg(&w.data).arg(x).arg(y).arg(&n).arg(&k)),
        }
    }

    /// The staged INT4 kernels; the caller checked the lengths and the shared memory size.
    #[allow(clippy::too_many_arguments)]
    fn gemv_int4_staged(
        &self,
        w: &DeviceMatrix,
        x: &CudaSlice<f32>,
        batch: usize,
        y: &mut CudaSlice<f32>,
        tiles: u32,
        prepass: bool,
        smem: usize,
    ) -> Result<()> {
        let scales = w
            .scales
            .as_ref()
            .ok_or_else(|| Error::Shape("int4g128 matrix without scales".into()))?;
        let (n, k) = (w.rows as i32, w.cols as i32);
        let tiles = tiles.clamp(1, 2);
        let cfg = LaunchConfig {
            grid_dim: ((w.rows as u32).div_ceil(16 * tiles), 1, 1),
            block_dim: (INT4_WARPS * 32, 1, 1),
            shared_mem_bytes: smem as u32,
        };
        if prepass && batch * w.cols <= XH_SCRATCH {
            let mut xh = self.xh.lock().unwrap_or_else(|e| e.into_inner());
            let nchunks = (batch * w.cols / 8) as i32;
            let f = self.func("int4_act_to_f16")?;
            self.launch(f, LaunchConfig::for_num_elems(nchunks as u32), |b| {
                b.arg(x).arg(&mut *xh).arg(&nchunks)
            })?;
            let f = self.func(&format!("gemv_int4_g128_s{tiles}_f16_b{batch}"))?;
            return self.launch(f, cfg, |b| {
                b.arg(&w.data).arg(scales).arg(&*xh).arg(y).arg(&n).arg(&k)
            });
        }
        let f = self.func(&format!("gemv_int4_g128_s{tiles}_f32_b{batch}"))?;
        self.launch(f, cfg, |b| {
            b.arg(&w.data).arg(scales).arg(x).arg(y).arg(&n).arg(&k)
        })
    }

    /// y[r] = rmsnorm(x[r]) * w for `rows` rows of `n`.
    pub fn rmsnorm(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        rows: usize,
        n: usize,
        eps: f32,
    ) -> Result<()> {
        check_len("rmsnorm x", x.len(), rows * n)?;
        check_len("rmsnorm y", y.len(), rows * n)?;
        check_len("rmsnorm weight", w.len(), n)?;
        let f = self.func("rmsnorm_f32")?;
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let n = n as i32;
        self.launch(f, cfg, |b| b.arg(x).arg(w).arg(y).arg(&n).arg(&eps))
    }

    /// x[r] += delta[r], then y[r] = rmsnorm(x[r]) * w, for `rows` rows of `n` (one kernel).
    #[allow(clippy::too_many_arguments)]
    pub fn add_rmsnorm(
        &self,
        x: &mut CudaSlice<f32>,
        delta: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        rows: usize,
        n: usize,
        eps: f32,
    ) -> Result<()> {
        check_len("add_rmsnorm x", x.len(), rows * n)?;
        check_len("add_rmsnorm delta", delta.len(), rows * n)?;
        check_len("add_rmsnorm y", y.len(), rows * n)?;
        check_len("add_rmsnorm weight", w.len(), n)?;
        let f = self.func("add_rmsnorm_f32")?;
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let n = n as i32;
        self.launch(f, cfg, |b| {
            b.arg(x).arg(delta).arg(w).arg(y).arg(&n).arg(&eps)
        })
    }

    /// From a fused qkv projection ([q][k][v], one token): rotate q into `q_out`, rotate k and
    /// store it and v into the bf16 caches at position `pos[0]` (one kernel instead of the
    /// split copies, two ropes and store_kv).
    #[allow(clippy::too_many_arguments)]
    pub fn qkv_rope_store(
        &self,
        qkv: &CudaSlice<f32>,
        q_out: &mut CudaSlice<f32>,
        kc: &mut CudaSlice<u16>,
        vc: &mut CudaSlice<u16>,
        n_heads: usize,
        n_kv: usize,
        hd: usize,
        max_seq: usize,
        pos: &CudaSlice<i32>,
        theta: f32,
        neox: bool,
    ) -> Result<()> {
        if hd % 2 != 0 {
            return Err(Error::Shape(format!(
                "rope head_dim must be even, got {hd}"
            )));
        }
        check_len("qkv", qkv.len(), (n_heads + 2 * n_kv) * hd)?;
        check_len("q out", q_out.len(), n_heads * hd)?;
        check_len("k cache", kc.len(), n_kv * max_seq * hd)?;
        check_len("v cache", vc.len(), n_kv * max_seq * hd)?;
        let f = self.func("qkv_rope_store_f32")?;
        let total = ((n_heads + n_kv) * hd / 2 + n_kv * hd) as u32;
        let (nh, nk, h, m, nx) = (
            n_heads as i32,
            n_kv as i32,
            hd as i32,
            max_seq as i32,
            neox as i32,
        );
        self.launch(f, LaunchConfig::for_num_elems(total), |b| {
            b.arg(qkv)
                .arg(q_out)
                .arg(kc)
                .arg(vc)
                .arg(&nh)
                .arg(&nk)
                .arg(&h)
                .arg(&m)
                .arg(pos)
                .arg(&theta)
                .arg(&nx)
        })
    }

    /// Rotary embedding in place on [n_heads][head_dim] at position `pos[0]` (device int).
    pub fn rope(
        &self,
        v: &mut CudaSlice<f32>,
        n_heads: usize,
        head_dim: usize,
        pos: &CudaSlice<i32>,
        theta: f32,
        neox: bool,
    ) -> Result<()> {
        if head_dim % 2 != 0 {
            return Err(Error::Shape(format!(
                "rope head_dim must be even, got {head_dim}"
            )));
        }
        check_len("rope input", v.len(), n_heads * head_dim)?;
        let f = self.func("rope_f32")?;
        let total = (n_heads * head_dim / 2) as u32;
        let (nh, hd, nx) = (n_heads as i32, head_dim as i32, neox as i32);
        self.launch(f, LaunchConfig::for_num_elems(total), |b| {
            b.arg(v).arg(&nh).arg(&hd).arg(pos).arg(&theta).arg(&nx)
        })
    }

    /// out[b][i] = silu(gu[b][i]) * gu[b][n + i].
    pub fn silu_mul(
        &self,
        gu: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        n: usize,
        batch: usize,
    ) -> Result<()> {
        check_len("silu_mul input", gu.len(), 2 * n * batch)?;
        check_len("silu_mul output", out.len(), n * batch)?;
        let f = self.func("silu_mul_f32")?;
        let cfg = LaunchConfig {
            grid_dim: ((n as u32).div_ceil(256), batch as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let n = n as i32;
        self.launch(f, cfg, |b| b.arg(gu).arg(out).arg(&n))
    }

    /// a[0..n] += b[0..n].
    pub fn add(&self, a: &mut CudaSlice<f32>, b_: &CudaSlice<f32>, n: usize) -> Result<()> {
        check_len("add a", a.len(), n)?;
        check_len("add b", b_.len(), n)?;
        let f = self.func("add_f32")?;
        let n = n as i32;
        self.launch(f, LaunchConfig::for_num_elems(n as u32), |b| {
            b.arg(a).arg(b_).arg(&n)
        })
    }

    /// out[0..dim] = bf16 table row token[0].
    pub fn embed(
        &self,
        table: &CudaSlice<u16>,
        token: &CudaSlice<i32>,
        out: &mut CudaSlice<f32>,
        dim: usize,
    ) -> Result<()> {
        check_len("embedding output", out.len(), dim)?;
        let f = self.func("embed_bf16")?;
        let d = dim as i32;
        self.launch(f, LaunchConfig::for_num_elems(dim as u32), |b| {
            b.arg(table).arg(token).arg(out).arg(&d)
        })
    }

    /// Write k, v ([n_kv][hd]) into the bf16 caches ([n_kv][max_seq][hd]) at position pos[0].
    #[allow(clippy::too_many_arguments)]
    pub fn store_kv(
        &self,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
        kc: &mut CudaSlice<u16>,
        vc: &mut CudaSlice<u16>,
        n_kv: usize,
        hd: usize,
        max_seq: usize,
        pos: &CudaSlice<i32>,
    ) -> Result<()> {
        check_len("store_kv k", k.len(), n_kv * hd)?;
        check_len("store_kv v", v.len(), n_kv * hd)?;
        check_len("k cache", kc.len(), n_kv * max_seq * hd)?;
        check_len("v cache", vc.len(), n_kv * max_seq * hd)?;
        let f = self.func("store_kv_bf16")?;
        let (a, h, m) = (n_kv as i32, hd as i32, max_seq as i32);
        self.launch(f, LaunchConfig::for_num_elems((n_kv * hd) as u32), |b| {
            b.arg(k)
                .arg(v)
                .arg(kc)
                .arg(vc)
                .arg(&a)
                .arg(&h)
                .arg(&m)
                .arg(pos)
        })
    }

    /// Decode attention of q ([n_heads][hd]) over cache positions 0..=last_pos[0], split-K with
    /// `split_len` positions per block. `scratch` must hold `attention_scratch_len` floats.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_decode(
        &self,
        q: &CudaSlice<f32>,
        kc: &CudaSlice<u16>,
        vc: &CudaSlice<u16>,
        out: &mut CudaSlice<f32>,
        scratch: &mut CudaSlice<f32>,
        n_heads: usize,
        n_kv: usize,
        hd: usize,
        max_seq: usize,
        last_pos: &CudaSlice<i32>,
        split_len: usize,
    ) -> Result<()> {
        if hd != 64 && hd != 128 {
            return Err(Error::Shape(format!(
                "attention head_dim must be 64 or 128, got {hd}"
            )));
        }
        if n_kv == 0 || n_heads % n_kv != 0 || split_len == 0 {
            return Err(Error::Shape(format!(
                "attention: n_heads {n_heads} must be a multiple of n_kv {n_kv}, split_len > 0"
            )));
        }
        check_len("attention q", q.len(), n_heads * hd)?;
        check_len("attention out", out.len(), n_heads * hd)?;
        check_len("k cache", kc.len(), n_kv * max_seq * hd)?;
        check_len("v cache", vc.len(), n_kv * max_seq * hd)?;
        let n_splits = max_seq.div_ceil(split_len);
        check_len(
            "attention scratch",
            scratch.len(),
            Self::attention_scratch_len(n_heads, hd, max_seq, split_len),
        )?;
        let (mut part_o, mut part_ml) = scratch.split_at_mut(n_heads * n_splits * hd);
        let f = self.func(&format!("attn_decode_split_hd{hd}"))?;
        let cfg = LaunchConfig {
            grid_dim: (n_heads as u32, n_splits as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let scale = 1.0 / (hd as f32).sqrt();
        let (nh, nk, ms, sl) = (
            n_heads as i32,
            n_kv as i32,
            max_seq as i32,
            split_len as i32,
        );
        self.launch(f, cfg, |b| {
            b.arg(q)
                .arg(kc)
                .arg(vc)
                .arg(&mut part_o)
                .arg(&mut part_ml)
                .arg(&nh)
                .arg(&nk)
                .arg(&ms)
                .arg(last_pos)
                .arg(&sl)
                .arg(&scale)
        })?;
        let f = self.func(&format!("attn_decode_merge_hd{hd}"))?;
        let cfg = LaunchConfig {
            grid_dim: (n_heads as u32, 1, 1),
            block_dim: (hd as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let ns = n_splits as i32;
        self.launch(f, cfg, |b| {
            b.arg(&mut part_o).arg(&mut part_ml).arg(out).arg(&ns)
        })
    }

    pub fn attention_scratch_len(
        n_heads: usize,
        hd: usize,
        max_seq: usize,
        split_len: usize,
    ) -> usize {
        let n_splits = max_seq.div_ceil(split_len.max(1));
        n_heads * n_splits * (hd + 2)
    }

    /// out[0] = argmax(x[0..n]); if `pos` is given, pos[0] += 1 (next decode position).
    pub fn argmax(
        &self,
        x: &CudaSlice<f32>,
        n: usize,
        out: &mut CudaSlice<i32>,
        pos: &mut CudaSlice<i32>,
    ) -> Result<()> {
        check_len("argmax input", x.len(), n)?;
        let f = self.func("argmax_f32")?;
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: 0,
        };
        let n = n as i32;
        self.launch(f, cfg, |b| b.arg(x).arg(&n).arg(out).arg(pos))
    }

    /// Median milliseconds of `f` over `reps` runs timed with device events, after `warmup` runs.
    pub fn time_ms(
        &self,
        warmup: usize,
        reps: usize,
        mut f: impl FnMut() -> Result<()>,
    ) -> Result<f64> {
        for _ in 0..warmup {
            f()?;
        }
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps.max(1) {
            let a = drv("event", self.ctx.new_event(flags))?;
            let b = drv("event", self.ctx.new_event(flags))?;
            drv("event record", a.record(&self.stream))?;
            f()?;
            drv("event record", b.record(&self.stream))?;
            drv("event sync", b.synchronize())?;
            times.push(drv("event elapsed", a.elapsed_ms(&b))? as f64);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        Ok(times[times.len() / 2])
    }
}

fn check_shape(format: WeightFormat, rows: usize, cols: usize) -> Result<()> {
    if rows == 0 || cols == 0 || cols % format.k_multiple() != 0 {
        return Err(Error::Shape(format!(
            "{} matrix {rows}x{cols}: K ({cols}) must be a positive multiple of {}",
            format.name(),
            format.k_multiple()
        )));
    }
    if rows > i32::MAX as usize || cols > i32::MAX as usize {
        return Err(Error::Shape(format!("matrix {rows}x{cols} too large")));
    }
    Ok(())
}

fn grid_stride_cfg() -> LaunchConfig {
    LaunchConfig {
        grid_dim: (1024, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Kernel names declared in a PTX module (`.entry name(`).
pub fn ptx_entries(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter_map(|l| {
            let i = l.find(".entry ")?;
            let rest = &l[i + 7..];
            let end = rest
                .find(|c: char| c == '(' || c.is_whitespace())
                .unwrap_or(rest.len());
            Some(rest[..end].to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walk the tiled layout the way `gemv_int4t` addresses it (unit, lane, half, word, nibble)
    /// and check every code and scale lands where the row-major matrix had it.
    #[test]
    fn tiled_layout_matches_kernel_addressing() {
        let (rows, cols) = (37usize, 384usize);
        let codes: Vec<u8> = (0..rows * cols)
            .map(|i| ((i * 7 + i / 5) % 16) as u8)
            .collect();
        let words = lowbit_formats::pack::pack(&codes, 4).unwrap();
        let data: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let scales: Vec<u16> = (0..rows * cols / 128).map(|i| i as u16 + 1).collect();
        let (tiled, tscales) = tile_int4_g128(rows, cols, &data, &scales).unwrap();
        let groups = cols / 128;
        for tile in 0..rows.div_ceil(16) {
            for grp in 0..groups {
                let unit = tile * groups + grp;
                for lane in 0..32 {
                    let (g, t) = (lane / 4, lane % 4);
                    for half in 0..2 {
                        let row = tile * 16 + g + 8 * half;
                        let sc = tscales[unit * 16 + g + 8 * half];
                        for j in 0..4 {
                            let off = unit * 1024 + half * 512 + lane * 16 + 4 * j;
                            let word = u32::from_le_bytes(tiled[off..off + 4].try_into().unwrap());
                            for n in 0..8 {
                                let code = ((word >> (4 * n)) & 15) as u8;
                                let k = grp * 128 + 32 * t + 8 * j + n;
                                if row < rows {
                                    assert_eq!(code, codes[row * cols + k], "row {row} k {k}");
                                    assert_eq!(sc, scales[row * groups + grp]);
                                } else {
                                    assert_eq!((code, sc), (8, 0), "padding row {row}");
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(tile_int4_g128(rows, cols, &data[1..], &scales).is_err());
    }
}
