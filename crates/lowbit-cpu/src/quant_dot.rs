//! Fused dot products of one quantized weight row with one row of 8-bit activation blocks
//! ([`Q8Block`]), without expanding the weights to f32.
//!
//! Every format is written as integer dot products over 32 (or 16) values followed by one float
//! scale per block:
//! - signed weights (Q8_0, IQ4_NL, MXFP4): `y += dw·da · Σ w a`;
//! - unsigned quants with a zero point (Q4_0, Q5_0, Q6_K, Q3_K): `y += dw·da · (Σ q a − z Σ a)`;
//! - scale and min (Q4_K, Q5_K, Q2_K): `y += da · (d·sc · Σ q a − dmin·m · Σ a)`;
//! - lowbit's NVFP4 blocks (`LB_NVFP4`): doubled E2M1 codes (integers −12..12) per 16 values,
//!   `y += (s/2)·da · Σ 2e2m1(q) a` with the f32 sub-scale `s = e4m3 / global` of each 16.
//!
//! [`row_dot_scalar`] is the reference (exact integer sums, then the float formula). The x86 paths
//! compute the same integer sums with AVX-512 VNNI (`vpdpbusd` on 256-bit vectors) or AVX2
//! (`vpmaddubsw` + `vpmaddwd`) and differ from the reference only in the order of the float
//! additions. The AVX2 path's `vpmaddubsw` saturates at 16 bits, so unsigned quants go in
//! unshifted (≤ 63 · 127 · 2 < 32767) and signed weights use the sign trick (`|a|`, `w·sign(a)`),
//! which needs `w ≠ -128`: ggml's Q8_0 quantizer never writes -128 (its scale is `amax/127`).
//! With AVX-512 VNNI the 4-bit formats (Q4_0, IQ4_NL, MXFP4 with an even number of blocks per
//! row, LB_NVFP4, Q4_K) use 512-bit kernels (`x86::zmm`: 64 codes per `vpdpbusd`, activations
//! rearranged once per task, block scales converted 8 at a time); `LOWBIT_GEMV512=0` in the
//! environment keeps them on the 256-bit kernels (A/B timing).

use lowbit_formats::GgmlType;

use crate::q8act::{Q8Block, QA};

/// Weight types with fused integer kernels (scalar reference for all of them).
pub fn is_supported(t: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        t,
        Q8_0 | Q4_0 | Q5_0 | IQ4_NL | MXFP4 | LB_NVFP4 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K
    )
}

/// Weight types with SIMD kernels (the others fall back to the f32 path in `matmul`).
pub fn has_simd_kernel(t: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        t,
        Q8_0 | Q4_0 | Q5_0 | IQ4_NL | MXFP4 | LB_NVFP4 | Q4_K | Q5_K | Q6_K
    )
}

/// Which instruction set the kernels use on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 VNNI + BW + VL (256-bit `vpdpbusd`).
    Avx512Vnni,
    /// AVX2 + FMA + F16C.
    Avx2,
    Scalar,
}

impl Isa {
    /// The best instruction set this CPU has (checked at run time, cached by std).
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c");
            if avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni")
            {
                return Isa::Avx512Vnni;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }
}

const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];
/// E2M1 values doubled; the E8M0 scale is halved to match (as ggml).
pub(crate) const KVALUES_MXFP4: [i8; 16] =
    [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Bytes per block and values per block of the supported types.
fn block_shape(t: GgmlType) -> (usize, usize) {
    use GgmlType::*;
    match t {
        Q8_0 => (34, 32),
        Q4_0 | IQ4_NL => (18, 32),
        Q5_0 => (22, 32),
        MXFP4 => (17, 32),
        LB_NVFP4 => (
            lowbit_formats::lb_nvfp4::BLOCK_BYTES,
            lowbit_formats::lb_nvfp4::BLOCK,
        ),
        Q2_K => (84, 256),
        Q3_K => (110, 256),
        Q4_K => (144, 256),
        Q5_K => (176, 256),
        Q6_K => (210, 256),
        _ => (0, 0),
    }
}

/// Checks that `w` is one row of `a.len() * 32` values of type `t`.
fn check_row(t: GgmlType, w: &[u8], a: &[Q8Block]) -> bool {
    let (bytes, vals) = block_shape(t);
    vals != 0 && (a.len() * QA) % vals == 0 && w.len() == a.len() * QA / vals * bytes
}

#[inline(always)]
fn f16(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Half of the E8M0 scale, 2^(e − 128) (ggml `ggml_e8m0_to_fp32_half`).
#[inline(always)]
pub(crate) fn e8m0_half(e: u8) -> f32 {
    f32::from_bits(if e < 2 {
        0x0020_0000u32 << e
    } else {
        ((e - 1) as u32) << 23
    })
}

/// The 8 (scale, min) pairs of 6 bits of Q4_K / Q5_K.
#[inline(always)]
fn scale_min_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 0x3F;
        mn[j] = s[j + 4] & 0x3F;
        sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, mn)
}

/// The 16 signed 6-bit scales of Q3_K.
#[inline(always)]
fn q3_k_scales(s: &[u8]) -> [i32; 16] {
    let mut out = [0i32; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 { s[j] & 0x0F } else { s[j - 8] >> 4 };
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = (low | (high << 4)) as i32 - 32;
    }
    out
}

/// Σ q[i] · a[i] over 16 or 32 values.
#[inline(always)]
fn idot(q: &[i32], a: &[i8]) -> i32 {
    q.iter().zip(a).map(|(&q, &a)| q * a as i32).sum()
}

/// Reference dot product of one weight row with its activation blocks; `None` for a type
/// without a fused kernel or a row whose length does not match `a`.
pub fn row_dot_scalar(t: GgmlType, w: &[u8], a: &[Q8Block]) -> Option<f32> {
    use GgmlType::*;
    if !is_supported(t) || !check_row(t, w, a) {
        return None;
    }
    let mut acc = 0f32;
    match t {
        Q8_0 | Q4_0 | Q5_0 | IQ4_NL | MXFP4 => {
            let (bytes, _) = block_shape(t);
            for (b, ab) in w.chunks_exact(bytes).zip(a) {
                let mut q = [0i32; 32];
                let (d, zero) = match t {
                    Q8_0 => {
                        for (q, &v) in q.iter_mut().zip(&b[2..34]) {
                            *q = v as i8 as i32;
                        }
                        (f16(b, 0), 0)
                    }
                    MXFP4 => {
                        for l in 0..16 {
                            q[l] = KVALUES_MXFP4[(b[1 + l] & 0x0F) as usize] as i32;
                            q[l + 16] = KVALUES_MXFP4[(b[1 + l] >> 4) as usize] as i32;
                        }
                        (e8m0_half(b[0]), 0)
                    }
                    IQ4_NL => {
                        for l in 0..16 {
                            q[l] = KVALUES_IQ4NL[(b[2 + l] & 0x0F) as usize] as i32;
                            q[l + 16] = KVALUES_IQ4NL[(b[2 + l] >> 4) as usize] as i32;
                        }
                        (f16(b, 0), 0)
                    }
                    Q4_0 => {
                        for l in 0..16 {
                            q[l] = (b[2 + l] & 0x0F) as i32;
                            q[l + 16] = (b[2 + l] >> 4) as i32;
                        }
                        (f16(b, 0), 8)
                    }
                    _ => {
                        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                        for l in 0..16 {
                            q[l] = ((b[6 + l] & 0x0F) as u32 | ((qh >> l) & 1) << 4) as i32;
                            q[l + 16] =
                                ((b[6 + l] >> 4) as u32 | ((qh >> (l + 16)) & 1) << 4) as i32;
                        }
                        (f16(b, 0), 16)
                    }
                };
                let s = idot(&q, &ab.qs) - zero * ab.sum;
                acc += (d * ab.d) * s as f32;
            }
        }
        Q4_K | Q5_K => {
            let (bytes, _) = block_shape(t);
            for (b, ab) in w.chunks_exact(bytes).zip(a.chunks_exact(8)) {
                let (d, dmin) = (f16(b, 0), f16(b, 2));
                let (sc, mn) = scale_min_k4(&b[4..16]);
                let (qh, qs): (Option<&[u8]>, &[u8]) = if t == Q5_K {
                    (Some(&b[16..48]), &b[48..176])
                } else {
                    (None, &b[16..144])
                };
                for c in 0..4 {
                    for h in 0..2 {
                        let sub = 2 * c + h;
                        let mut q = [0i32; 32];
                        for l in 0..32 {
                            let nib = (qs[32 * c + l] >> (4 * h)) & 0x0F;
                            let hb = qh.map_or(0, |qh| ((qh[l] >> sub) & 1) << 4);
                            q[l] = (nib | hb) as i32;
                        }
                        let blk = &ab[sub];
                        let s = idot(&q, &blk.qs);
                        acc += (d * sc[sub] as f32 * blk.d) * s as f32
                            - (dmin * mn[sub] as f32 * blk.d) * blk.sum as f32;
                    }
                }
            }
        }
        LB_NVFP4 => {
            use lowbit_formats::lb_nvfp4::{sub_scales, BLOCK_BYTES};
            for (b, ab) in w.chunks_exact(BLOCK_BYTES).zip(a.chunks_exact(4)) {
                let sc = sub_scales(b);
                for (k, blk) in ab.iter().enumerate() {
                    let qs = &b[12 + 16 * k..28 + 16 * k];
                    let mut q = [0i32; 32];
                    for l in 0..16 {
                        q[l] = KVALUES_MXFP4[(qs[l] & 0x0F) as usize] as i32;
                        q[l + 16] = KVALUES_MXFP4[(qs[l] >> 4) as usize] as i32;
                    }
                    for h in 0..2 {
                        let s = idot(&q[16 * h..16 * h + 16], &blk.qs[16 * h..16 * h + 16]);
                        acc += (0.5 * sc[2 * k + h] * blk.d) * s as f32;
                    }
                }
            }
        }
        Q6_K => {
            for (b, ab) in w.chunks_exact(210).zip(a.chunks_exact(8)) {
                let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
                let d = f16(b, 208);
                for n in 0..2 {
                    for j in 0..4 {
                        let blk = &ab[4 * n + j];
                        let mut q = [0i32; 32];
                        for l in 0..32 {
                            let lo = (ql[64 * n + 32 * (j % 2) + l] >> (4 * (j / 2))) & 0x0F;
                            let hi = ((qh[32 * n + l] >> (2 * j)) & 3) << 4;
                            q[l] = (lo | hi) as i32;
                        }
                        let mut s = 0i32;
                        for h in 0..2 {
                            let part = idot(&q[16 * h..16 * h + 16], &blk.qs[16 * h..16 * h + 16])
                                - 32 * blk.half_sums[h];
                            s += (sc[8 * n + 2 * j + h] as i8) as i32 * part;
                        }
                        acc += (d * blk.d) * s as f32;
                    }
                }
            }
        }
        Q2_K => {
            for (b, ab) in w.chunks_exact(84).zip(a.chunks_exact(8)) {
                let (sc, qs) = (&b[0..16], &b[16..80]);
                let (d, dmin) = (f16(b, 80), f16(b, 82));
                for n in 0..2 {
                    for j in 0..4 {
                        let blk = &ab[4 * n + j];
                        let mut q = [0i32; 32];
                        for l in 0..32 {
                            q[l] = ((qs[32 * n + l] >> (2 * j)) & 3) as i32;
                        }
                        for h in 0..2 {
                            let s = sc[8 * n + 2 * j + h];
                            let dot = idot(&q[16 * h..16 * h + 16], &blk.qs[16 * h..16 * h + 16]);
                            acc += (d * (s & 0x0F) as f32 * blk.d) * dot as f32
                                - (dmin * (s >> 4) as f32 * blk.d) * blk.half_sums[h] as f32;
                        }
                    }
                }
            }
        }
        Q3_K => {
            for (b, ab) in w.chunks_exact(110).zip(a.chunks_exact(8)) {
                let (hmask, qs) = (&b[0..32], &b[32..96]);
                let sc = q3_k_scales(&b[96..108]);
                let d = f16(b, 108);
                for n in 0..2 {
                    for j in 0..4 {
                        let blk = &ab[4 * n + j];
                        let mut q = [0i32; 32];
                        for l in 0..32 {
                            let low = (qs[32 * n + l] >> (2 * j)) & 3;
                            let high = (hmask[l] >> (4 * n + j)) & 1;
                            q[l] = (low | (high << 2)) as i32;
                        }
                        let mut s = 0i32;
                        for h in 0..2 {
                            let part = idot(&q[16 * h..16 * h + 16], &blk.qs[16 * h..16 * h + 16])
                                - 4 * blk.half_sums[h];
                            s += sc[8 * n + 2 * j + h] * part;
                        }
                        acc += (d * blk.d) * s as f32;
                    }
                }
            }
        }
        _ => return None,
    }
    Some(acc)
}

/// One job of the GEMV: rows of `w` dotted with `tokens` activation rows of `nb` blocks each.
pub(crate) struct RowsJob<'a> {
    pub dtype: GgmlType,
    pub data: &'a [u8],
    pub row_bytes: usize,
    pub rows: usize,
    pub act: &'a [Q8Block],
    pub tokens: usize,
    pub nb: usize,
}

impl RowsJob<'_> {
    #[inline(always)]
    fn row(&self, r: usize) -> &[u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }
    #[inline(always)]
    fn act(&self, t: usize) -> &[Q8Block] {
        &self.act[t * self.nb..(t + 1) * self.nb]
    }
}

/// `out[t * job.rows + r]` for rows `r0..r1` and every token, with the given instruction set.
///
/// # Safety
/// `out` must be valid for writes at those indices (no other thread writing them), `isa` must be
/// supported by this CPU, and the job's shapes must be consistent (`data` holds `rows` rows of
/// `row_bytes` bytes, each matching `nb` activation blocks; `act` holds `tokens × nb` blocks).
pub(crate) unsafe fn dot_rows(isa: Isa, job: &RowsJob<'_>, r0: usize, r1: usize, out: *mut f32) {
    #[cfg(target_arch = "x86_64")]
    if has_simd_kernel(job.dtype) {
        match isa {
            Isa::Avx512Vnni => return x86::rows_vnni(job, r0, r1, out),
            Isa::Avx2 => return x86::rows_avx2(job, r0, r1, out),
            Isa::Scalar => {}
        }
    }
    let _ = isa;
    for r in r0..r1 {
        let w = job.row(r);
        for t in 0..job.tokens {
            // Shapes were checked by the caller; a mismatch would be a bug, so write NaN.
            let v = row_dot_scalar(job.dtype, w, job.act(t)).unwrap_or(f32::NAN);
            *out.add(t * job.rows + r) = v;
        }
    }
}

/// Software prefetch distance of the GEMV kernels in bytes (0: off, hardware prefetch only).
/// 4 KiB ahead (at least one row group): +38% on Gemma-3's 178 MB Q8_0 output matrix on the
/// 2-core dev VM (`examples/prefetch_ab`: 16.6 → 23 GB/s); the hardware prefetcher alone does
/// not keep enough lines in flight for the interleaved rows of a group. On long rows the
/// requests are issued one cache line at a time inside the block loops (each row asks for its
/// own bytes `pf` ahead as it reads them; short rows: see [`PREFETCH_MODE`]): issuing a whole
/// row group's lines at once at the start of the group filled the line-fill buffers and stalled
/// the arithmetic (Q4_0 streaming 4096 × 4096 from
/// DRAM: ~8 → ~11-14 GB/s on the loaded dev VM, Q8_0 ~9.5 → 13).
static PREFETCH_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(4096);

/// Set the GEMV software prefetch distance (bytes ahead of the rows being read; 0 turns it
/// off). For bandwidth experiments (`examples/gemv_bandwidth`).
#[doc(hidden)]
pub fn set_prefetch_bytes(bytes: usize) {
    PREFETCH_BYTES.store(bytes, std::sync::atomic::Ordering::Relaxed);
}

/// How the prefetches are issued: 0 (auto) a row group's lines at the start of the group when
/// the group holds at most [`GROUP_PREFETCH_MAX_BYTES`], otherwise inside the block loops (see
/// `pf_block`); 1: always inside the block loops; 2: always per group.
static PREFETCH_MODE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Row groups up to this size are prefetched in one burst: on short rows that was faster
/// (Gemma-3's 262144 × 640 Q8_0 output matrix: 19.8 vs 17.6-18.2 GB/s, `gemv_prefetch_ab`),
/// while on long rows the burst stalls the arithmetic (4096 × 4096: 11.3 vs 14.6 GB/s).
const GROUP_PREFETCH_MAX_BYTES: usize = 4096;

/// Experiment switch of the prefetch pattern: `None` automatic, `Some(true)` per row group,
/// `Some(false)` inside the block loops (see [`PREFETCH_MODE`]).
#[doc(hidden)]
pub fn set_prefetch_group(mode: Option<bool>) {
    let m = match mode {
        None => 0,
        Some(false) => 1,
        Some(true) => 2,
    };
    PREFETCH_MODE.store(m, std::sync::atomic::Ordering::Relaxed);
}

/// Whether a row group of `group_bytes` is prefetched in one burst (see [`PREFETCH_MODE`]).
fn group_prefetch_for(group_bytes: usize) -> bool {
    match PREFETCH_MODE.load(std::sync::atomic::Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => group_bytes <= GROUP_PREFETCH_MAX_BYTES,
    }
}

/// Whether `w` (one row) and `a` have matching lengths for type `t`.
pub(crate) fn row_matches(t: GgmlType, row_bytes: usize, nb: usize) -> bool {
    let (bytes, vals) = block_shape(t);
    vals != 0 && (nb * QA) % vals == 0 && row_bytes == nb * QA / vals * bytes
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{scale_min_k4, RowsJob, KVALUES_IQ4NL, KVALUES_MXFP4};
    use crate::q8act::Q8Block;
    use lowbit_formats::GgmlType;

    /// The few operations that differ between AVX-512 VNNI and AVX2. Everything is inlined into
    /// the `#[target_feature]` entry points below, so the intrinsics compile with their features.
    trait Ops {
        /// `acc` plus 8 sums of 4 products `u[i] · a[i]`, `u` unsigned (≤ 63), `a` signed.
        unsafe fn dot_u8_acc(acc: __m256i, u: __m256i, a: __m256i) -> __m256i;
        /// The same with signed `w` (≠ -128) and no start value.
        unsafe fn dot_s8(w: __m256i, a: __m256i) -> __m256i;
        /// 0xFF in byte i where bit i of `x` is set.
        unsafe fn bits32(x: u32) -> __m256i;
        #[inline(always)]
        unsafe fn dot_u8(u: __m256i, a: __m256i) -> __m256i {
            Self::dot_u8_acc(_mm256_setzero_si256(), u, a)
        }
    }

    struct Vnni;
    struct Avx2;

    impl Ops for Vnni {
        #[inline(always)]
        unsafe fn dot_u8_acc(acc: __m256i, u: __m256i, a: __m256i) -> __m256i {
            _mm256_dpbusd_epi32(acc, u, a)
        }
        #[inline(always)]
        unsafe fn dot_s8(w: __m256i, a: __m256i) -> __m256i {
            _mm256_dpbusd_epi32(
                _mm256_setzero_si256(),
                _mm256_abs_epi8(a),
                _mm256_sign_epi8(w, a),
            )
        }
        #[inline(always)]
        unsafe fn bits32(x: u32) -> __m256i {
            _mm256_movm_epi8(x)
        }
    }

    impl Ops for Avx2 {
        #[inline(always)]
        unsafe fn dot_u8_acc(acc: __m256i, u: __m256i, a: __m256i) -> __m256i {
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, a), _mm256_set1_epi16(1));
            _mm256_add_epi32(acc, p)
        }
        #[inline(always)]
        unsafe fn dot_s8(w: __m256i, a: __m256i) -> __m256i {
            Self::dot_u8(_mm256_sign_epi8(a, a), _mm256_sign_epi8(w, a))
        }
        #[inline(always)]
        unsafe fn bits32(x: u32) -> __m256i {
            // Byte i takes byte i/8 of x, then tests its bit i%8.
            let v = _mm256_set1_epi32(x as i32);
            let idx = _mm256_setr_epi64x(
                0,
                0x0101_0101_0101_0101,
                0x0202_0202_0202_0202,
                0x0303_0303_0303_0303,
            );
            let bytes = _mm256_shuffle_epi8(v, idx);
            let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
            _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit)
        }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn rows_vnni(job: &RowsJob<'_>, r0: usize, r1: usize, out: *mut f32) {
        if zmm::handles(job.dtype, job.nb) {
            return zmm::rows(job, r0, r1, out);
        }
        rows::<Vnni>(job, r0, r1, out)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn rows_avx2(job: &RowsJob<'_>, r0: usize, r1: usize, out: *mut f32) {
        rows::<Avx2>(job, r0, r1, out)
    }

    /// Rows per step of the kernels: each activation block is loaded once for all of them and
    /// their accumulators are independent, so the float chains overlap instead of waiting on
    /// one another.
    const GROUP: usize = 4;

    #[inline(always)]
    unsafe fn rows<O: Ops>(job: &RowsJob<'_>, r0: usize, r1: usize, out: *mut f32) {
        let mut r = r0;
        let pf = match super::PREFETCH_BYTES.load(std::sync::atomic::Ordering::Relaxed) {
            0 => 0,
            d => d.max(GROUP * job.row_bytes),
        };
        let group = super::group_prefetch_for(GROUP * job.row_bytes);
        let end = job.data.as_ptr().add(r1 * job.row_bytes);
        while r + GROUP <= r1 {
            let w: [*const u8; GROUP] = std::array::from_fn(|k| job.row(r + k).as_ptr());
            if group && pf > 0 {
                group_prefetch(w[0].add(pf), GROUP * job.row_bytes, end);
            }
            // Tokens inside the row group: the group's weights are read from DRAM once, and the
            // first token's pass asks for the weights `pf` bytes ahead (see `pf_block`).
            for t in 0..job.tokens {
                let d = if t == 0 && !group { pf } else { 0 };
                let v = kernel::<O, GROUP>(job.dtype, w, job.act(t), d);
                for (k, v) in v.into_iter().enumerate() {
                    *out.add(t * job.rows + r + k) = v;
                }
            }
            r += GROUP;
        }
        for r in r..r1 {
            let w = [job.row(r).as_ptr()];
            for t in 0..job.tokens {
                *out.add(t * job.rows + r) = kernel::<O, 1>(job.dtype, w, job.act(t), 0)[0];
            }
        }
    }

    /// Dot products of `N` rows with one token's activation blocks.
    #[inline(always)]
    unsafe fn kernel<O: Ops, const N: usize>(
        dtype: GgmlType,
        w: [*const u8; N],
        a: &[Q8Block],
        pf: usize,
    ) -> [f32; N] {
        match dtype {
            GgmlType::Q8_0 => q8_0::<O, N>(w, a, pf),
            GgmlType::Q4_0 => q4_0::<O, N, false>(w, a, pf),
            GgmlType::Q5_0 => q4_0::<O, N, true>(w, a, pf),
            GgmlType::IQ4_NL => table4::<O, N>(w, a, 18, &KVALUES_IQ4NL, pf),
            GgmlType::MXFP4 => table4::<O, N>(w, a, 17, &KVALUES_MXFP4, pf),
            GgmlType::LB_NVFP4 => lb_nvfp4::<O, N>(w, a, pf),
            GgmlType::Q4_K => q4_k::<O, N, false>(w, a, pf),
            GgmlType::Q5_K => q4_k::<O, N, true>(w, a, pf),
            GgmlType::Q6_K => q6_k::<O, N>(w, a, pf),
            _ => [f32::NAN; N],
        }
    }

    /// Software prefetch of the block of `bytes` bytes at `b + pf` (0: off) while the block at
    /// `b` is processed, one request per cache line (the line where a block crosses into a new
    /// one): the requests stay spread over the row instead of arriving in bursts that fill the
    /// line-fill buffers and stall the core.
    #[inline(always)]
    unsafe fn pf_block(b: *const u8, pf: usize, bytes: usize) {
        if pf == 0 {
            return;
        }
        let a = b.wrapping_add(pf);
        let last = a.wrapping_add(bytes - 1);
        if bytes >= 64 {
            let mut off = 0;
            while off < bytes {
                _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(off) as *const i8);
                off += 64;
            }
            _mm_prefetch::<_MM_HINT_T0>(last as *const i8);
        } else if (a as usize).wrapping_sub(1) >> 6 != last as usize >> 6 {
            _mm_prefetch::<_MM_HINT_T0>(last as *const i8);
        }
    }

    /// Every cache line of `len` bytes from `from` (not past `end`).
    #[inline(always)]
    unsafe fn group_prefetch(from: *const u8, len: usize, end: *const u8) {
        let mut p = from;
        while p < from.wrapping_add(len) && p < end {
            _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
            p = p.wrapping_add(64);
        }
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    #[inline(always)]
    unsafe fn hsums<const N: usize>(acc: [__m256; N]) -> [f32; N] {
        std::array::from_fn(|k| hsum(acc[k]))
    }

    /// The f16 at `p` in all 8 lanes. Converting all lanes keeps the compiler from turning this
    /// into a scalar `vpinsrw` that merges into (and so waits on) the accumulator register.
    #[inline(always)]
    unsafe fn f16_splat(p: *const u8) -> __m256 {
        let bits = (p as *const u16).read_unaligned();
        _mm256_cvtph_ps(_mm_set1_epi16(bits as i16))
    }

    #[inline(always)]
    unsafe fn load_a(b: &Q8Block) -> __m256i {
        _mm256_loadu_si256(b.qs.as_ptr() as *const __m256i)
    }

    /// `-(z · Σ a)` over each group of 4 activations (the lanes of the integer dot products): the
    /// start value that turns `Σ q·a` into `Σ (q − z)·a` for unsigned quants with zero point `z`.
    #[inline(always)]
    unsafe fn neg_zero_sums<O: Ops>(z: i8, a: __m256i) -> __m256i {
        _mm256_sub_epi32(_mm256_setzero_si256(), O::dot_u8(_mm256_set1_epi8(z), a))
    }

    /// `f(i)` for the 8 activation blocks of a 256-value super-block, one per lane.
    #[inline(always)]
    unsafe fn lanes8(ab: &[Q8Block], f: impl Fn(&Q8Block) -> f32) -> __m256 {
        _mm256_setr_ps(
            f(&ab[0]),
            f(&ab[1]),
            f(&ab[2]),
            f(&ab[3]),
            f(&ab[4]),
            f(&ab[5]),
            f(&ab[6]),
            f(&ab[7]),
        )
    }

    /// Lane `i` of `v` in all lanes.
    #[inline(always)]
    unsafe fn lane(v: __m256, i: i32) -> __m256 {
        _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(i))
    }

    #[inline(always)]
    unsafe fn mask4() -> __m256i {
        _mm256_set1_epi8(0x0F)
    }

    /// 16 bytes of nibbles → 32 bytes: low nibbles (values 0..16) then high nibbles (16..32).
    #[inline(always)]
    unsafe fn nibbles16(p: *const u8) -> __m256i {
        let x = _mm_loadu_si128(p as *const __m128i);
        _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(x), x), mask4())
    }

    #[inline(always)]
    unsafe fn q8_0<O: Ops, const N: usize>(
        w: [*const u8; N],
        a: &[Q8Block],
        pf: usize,
    ) -> [f32; N] {
        let mut acc = [_mm256_setzero_ps(); N];
        for (i, ab) in a.iter().enumerate() {
            let av = load_a(ab);
            let da = _mm256_set1_ps(ab.d);
            for k in 0..N {
                let b = w[k].add(34 * i);
                pf_block(b, pf, 34);
                let s = O::dot_s8(_mm256_loadu_si256(b.add(2) as *const __m256i), av);
                let scale = _mm256_mul_ps(f16_splat(b), da);
                acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc[k]);
            }
        }
        hsums(acc)
    }

    /// Q4_0, and Q5_0 when `FIVE` (the fifth bits as a u32 before the nibbles). The zero point
    /// (8 or 16) enters the integer sums through their start value.
    #[inline(always)]
    unsafe fn q4_0<O: Ops, const N: usize, const FIVE: bool>(
        w: [*const u8; N],
        a: &[Q8Block],
        pf: usize,
    ) -> [f32; N] {
        let bytes = if FIVE { 22 } else { 18 };
        let mut acc = [_mm256_setzero_ps(); N];
        for (i, ab) in a.iter().enumerate() {
            let av = load_a(ab);
            let init = neg_zero_sums::<O>(if FIVE { 16 } else { 8 }, av);
            let da = _mm256_set1_ps(ab.d);
            for k in 0..N {
                let b = w[k].add(bytes * i);
                pf_block(b, pf, bytes);
                let q = if FIVE {
                    let qh = (b.add(2) as *const u32).read_unaligned();
                    let hi = _mm256_and_si256(O::bits32(qh), _mm256_set1_epi8(0x10));
                    _mm256_or_si256(nibbles16(b.add(6)), hi)
                } else {
                    nibbles16(b.add(2))
                };
                let s = O::dot_u8_acc(init, q, av);
                let scale = _mm256_mul_ps(f16_splat(b), da);
                acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc[k]);
            }
        }
        hsums(acc)
    }

    /// IQ4_NL and MXFP4: nibbles index a table of signed values; the scale is f16 (block of 18
    /// bytes) or E8M0 (17 bytes).
    #[inline(always)]
    unsafe fn table4<O: Ops, const N: usize>(
        w: [*const u8; N],
        a: &[Q8Block],
        bytes: usize,
        table: &[i8; 16],
        pf: usize,
    ) -> [f32; N] {
        let t = _mm256_broadcastsi128_si256(_mm_loadu_si128(table.as_ptr() as *const __m128i));
        let mut acc = [_mm256_setzero_ps(); N];
        for (i, ab) in a.iter().enumerate() {
            let av = load_a(ab);
            let da = _mm256_set1_ps(ab.d);
            for k in 0..N {
                let b = w[k].add(bytes * i);
                pf_block(b, pf, bytes);
                let (d, qs) = if bytes == 17 {
                    (_mm256_set1_ps(super::e8m0_half(*b)), b.add(1))
                } else {
                    (f16_splat(b), b.add(2))
                };
                let v = _mm256_shuffle_epi8(t, nibbles16(qs));
                let s = O::dot_s8(v, av);
                acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(d, da), acc[k]);
            }
        }
        hsums(acc)
    }

    /// lowbit's NVFP4 blocks of 128: per block the 8 E4M3 sub-scales become f32 lanes (the E4M3
    /// bits placed in an f16, converted, times 2^8: exact, subnormals included), divided by the
    /// global scale (correctly rounded, as the scalar decoder); per 32 values the codes are
    /// looked up as doubled E2M1 integers (offset to be unsigned, see `U`), lanes 0..4 of the
    /// integer sums take sub-scale 2k and lanes 4..8 sub-scale 2k + 1.
    #[inline(always)]
    unsafe fn lb_nvfp4<O: Ops, const N: usize>(
        w: [*const u8; N],
        a: &[Q8Block],
        pf: usize,
    ) -> [f32; N] {
        const BYTES: usize = lowbit_formats::lb_nvfp4::BLOCK_BYTES;
        // Doubled E2M1 values plus 12 (0..24): unsigned, so one `dot_u8_acc` whose start value
        // subtracts 12 · Σa (as the zero point of Q4_0) replaces the signed product.
        const U: [u8; 16] = [12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0];
        let t = _mm256_broadcastsi128_si256(_mm_loadu_si128(U.as_ptr() as *const __m128i));
        let mut acc = [_mm256_setzero_ps(); N];
        let lanes: [__m256i; 4] = std::array::from_fn(|k| {
            let (lo, hi) = (2 * k as i32, 2 * k as i32 + 1);
            _mm256_setr_epi32(lo, lo, lo, lo, hi, hi, hi, hi)
        });
        for (i, ab) in a.chunks_exact(4).enumerate() {
            let av: [__m256i; 4] = std::array::from_fn(|k| load_a(&ab[k]));
            let init: [__m256i; 4] = std::array::from_fn(|k| neg_zero_sums::<O>(12, av[k]));
            let da: [__m256; 4] = std::array::from_fn(|k| _mm256_set1_ps(0.5 * ab[k].d));
            for k in 0..N {
                let b = w[k].add(BYTES * i);
                pf_block(b, pf, BYTES);
                let g = _mm256_set1_ps((b as *const f32).read_unaligned());
                let e = _mm_cvtepu8_epi16(_mm_loadl_epi64(b.add(4) as *const __m128i));
                let h = _mm_or_si128(
                    _mm_slli_epi16::<8>(_mm_and_si128(e, _mm_set1_epi16(0x80))),
                    _mm_slli_epi16::<7>(_mm_and_si128(e, _mm_set1_epi16(0x7F))),
                );
                let e4m3 = _mm256_mul_ps(_mm256_cvtph_ps(h), _mm256_set1_ps(256.0));
                let sc = _mm256_div_ps(e4m3, g);
                for c in 0..4 {
                    let v = _mm256_shuffle_epi8(t, nibbles16(b.add(12 + 16 * c)));
                    let s = O::dot_u8_acc(init[c], v, av[c]);
                    let scale = _mm256_mul_ps(_mm256_permutevar8x32_ps(sc, lanes[c]), da[c]);
                    acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc[k]);
                }
            }
        }
        hsums(acc)
    }

    /// 8 bytes as 8 f32 lanes.
    #[inline(always)]
    unsafe fn u8x8_to_ps(v: [u8; 8]) -> __m256 {
        let x = _mm_loadl_epi64(v.as_ptr() as *const __m128i);
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(x))
    }

    /// Q4_K, and Q5_K when `FIVE` (the fifth bits in `qh[32]` before the nibbles). Per
    /// super-block the 8 sub-block scales become one vector `d·sc·da` and the mins one vector
    /// `dmin·m·da·Σa`, subtracted from the accumulator lane-wise.
    #[inline(always)]
    unsafe fn q4_k<O: Ops, const N: usize, const FIVE: bool>(
        w: [*const u8; N],
        a: &[Q8Block],
        pf: usize,
    ) -> [f32; N] {
        let bytes = if FIVE { 176 } else { 144 };
        let mut acc = [_mm256_setzero_ps(); N];
        let one = _mm256_set1_epi8(1);
        for (sb, ab) in a.chunks_exact(8).enumerate() {
            let da = lanes8(ab, |b| b.d);
            let dsum = lanes8(ab, |b| b.d * b.sum as f32);
            for k in 0..N {
                let b = w[k].add(bytes * sb);
                pf_block(b, pf, bytes);
                let (sc, mn) = scale_min_k4(std::slice::from_raw_parts(b.add(4), 12));
                let scale = _mm256_mul_ps(_mm256_mul_ps(f16_splat(b), u8x8_to_ps(sc)), da);
                let mins = _mm256_mul_ps(u8x8_to_ps(mn), dsum);
                acc[k] = _mm256_fnmadd_ps(mins, f16_splat(b.add(2)), acc[k]);
                let qs = if FIVE { b.add(48) } else { b.add(16) };
                let qh = if FIVE {
                    _mm256_loadu_si256(b.add(16) as *const __m256i)
                } else {
                    _mm256_setzero_si256()
                };
                for c in 0..4 {
                    let q = _mm256_loadu_si256(qs.add(32 * c) as *const __m256i);
                    let mut lo = _mm256_and_si256(q, mask4());
                    let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), mask4());
                    if FIVE {
                        // Bit 2c (low half) and 2c + 1 (high half) of each qh byte, moved to bit 4.
                        let h0 = _mm256_and_si256(
                            _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * c as i32)),
                            one,
                        );
                        let h1 = _mm256_and_si256(
                            _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * c as i32 + 1)),
                            one,
                        );
                        lo = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(h0));
                        hi = _mm256_or_si256(hi, _mm256_slli_epi16::<4>(h1));
                    }
                    let s0 = O::dot_u8(lo, load_a(&ab[2 * c]));
                    let s1 = O::dot_u8(hi, load_a(&ab[2 * c + 1]));
                    let k0 = lane(scale, 2 * c as i32);
                    let k1 = lane(scale, 2 * c as i32 + 1);
                    acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s0), k0, acc[k]);
                    acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s1), k1, acc[k]);
                }
            }
        }
        hsums(acc)
    }

    /// Q6_K: 6-bit quants with zero point 32 (folded into the integer start value) and a signed
    /// 8-bit scale per 16 values (lanes 0..4 and 4..8 of each block's integer sums).
    #[inline(always)]
    unsafe fn q6_k<O: Ops, const N: usize>(
        w: [*const u8; N],
        a: &[Q8Block],
        pf: usize,
    ) -> [f32; N] {
        let mut acc = [_mm256_setzero_ps(); N];
        let three = _mm256_set1_epi8(3);
        for (sb, ab) in a.chunks_exact(8).enumerate() {
            for k in 0..N {
                let b = w[k].add(210 * sb);
                pf_block(b, pf, 210);
                let dv = f16_splat(b.add(208));
                let sc = _mm_loadu_si128(b.add(192) as *const __m128i);
                // The 16 scales times d, as two vectors of 8 (sub-blocks 0..8 and 8..16).
                let sc_lo = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc)), dv);
                let sc_hi = _mm256_mul_ps(
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128::<8>(sc))),
                    dv,
                );
                for n in 0..2 {
                    let ql0 = _mm256_loadu_si256(b.add(64 * n) as *const __m256i);
                    let ql1 = _mm256_loadu_si256(b.add(64 * n + 32) as *const __m256i);
                    let qh = _mm256_loadu_si256(b.add(128 + 32 * n) as *const __m256i);
                    let scv = if n == 0 { sc_lo } else { sc_hi };
                    for j in 0..4 {
                        let src = if j % 2 == 0 { ql0 } else { ql1 };
                        let lo = if j < 2 {
                            src
                        } else {
                            _mm256_srli_epi16::<4>(src)
                        };
                        let lo = _mm256_and_si256(lo, mask4());
                        let hi = _mm256_and_si256(
                            _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * j as i32)),
                            three,
                        );
                        let q = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(hi));
                        let blk = &ab[4 * n + j];
                        let av = load_a(blk);
                        let s = O::dot_u8_acc(neg_zero_sums::<O>(32, av), q, av);
                        // Lanes 0..4 hold values 0..16 (scale 2j), lanes 4..8 values 16..32.
                        let idx = _mm256_setr_epi32(
                            2 * j as i32,
                            2 * j as i32,
                            2 * j as i32,
                            2 * j as i32,
                            2 * j as i32 + 1,
                            2 * j as i32 + 1,
                            2 * j as i32 + 1,
                            2 * j as i32 + 1,
                        );
                        let scale = _mm256_mul_ps(
                            _mm256_permutevar8x32_ps(scv, idx),
                            _mm256_set1_ps(blk.d),
                        );
                        acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc[k]);
                    }
                }
            }
        }
        hsums(acc)
    }

    /// 512-bit kernels of the 4-bit formats (Q4_0, IQ4_NL, MXFP4, LB_NVFP4, Q4_K) for AVX-512
    /// VNNI: 64 codes per `vpdpbusd`, unpacked with one shift and one `and` (two 128-bit
    /// broadcasts put each 16 bytes of nibbles in two lanes; lanes 2 and 3 shift by 4). The
    /// activations of a task are rearranged once to the order of the unpacked codes, with the
    /// zero-point start values `−z·Σa` of every pair of blocks precomputed, so the inner loop of
    /// a row is load, unpack, one dot product, one conversion and one FMA per 64 weights; the
    /// block scales of 8 blocks (256 weights) are gathered from the row with one word permute and
    /// converted together, and each pair's two scales are spread over its lanes by `vpermps`.
    /// The 256-bit kernels above did the same per 32 weights with a scalar f16 load and a
    /// broadcast per block, which made them compute-bound on 2 cores.
    pub(super) mod zmm {
        use std::arch::x86_64::*;
        use std::cell::RefCell;

        use super::super::{RowsJob, KVALUES_IQ4NL, PREFETCH_BYTES};
        use super::GROUP;
        use crate::q8act::Q8Block;
        use lowbit_formats::GgmlType;

        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        enum Kind {
            Q4_0,
            Iq4Nl,
            Mxfp4,
            Nvfp4,
            Q4K,
        }

        fn kind(t: GgmlType, nb: usize) -> Option<Kind> {
            // The block-of-32 formats go in pairs of blocks; an odd count keeps the 256-bit kernel.
            match t {
                GgmlType::Q4_0 if nb.is_multiple_of(2) => Some(Kind::Q4_0),
                GgmlType::IQ4_NL if nb.is_multiple_of(2) => Some(Kind::Iq4Nl),
                GgmlType::MXFP4 if nb.is_multiple_of(2) => Some(Kind::Mxfp4),
                GgmlType::LB_NVFP4 => Some(Kind::Nvfp4),
                GgmlType::Q4_K => Some(Kind::Q4K),
                _ => None,
            }
        }

        /// Whether [`rows`] handles this type and row length.
        pub(in super::super) fn handles(t: GgmlType, nb: usize) -> bool {
            // `LOWBIT_GEMV512=0` keeps the 256-bit kernels (A/B timing of the decode).
            static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
            let on = *ON.get_or_init(|| std::env::var("LOWBIT_GEMV512").map_or(true, |v| v != "0"));
            on && kind(t, nb).is_some()
        }

        /// Per-thread buffers of the rearranged activations (reused across calls).
        #[derive(Default)]
        struct Scratch {
            qs: Vec<__m512i>,
            init: Vec<__m512i>,
            f: Vec<f32>,
        }

        thread_local! {
            static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
        }

        /// One token's rearranged activations: per pair of blocks the 64 quants and the start
        /// values; per block `da` and `da·Σa` (padded with zeros to a multiple of 8).
        #[derive(Clone, Copy)]
        struct Act {
            qs: *const __m512i,
            init: *const __m512i,
            da: *const f32,
            dsum: *const f32,
            nb: usize,
        }

        /// Rearranges the blocks of `a` into `qs`/`init` (one entry per pair) and `da`/`dsum`.
        /// `split`: lanes [a0[0..16], a1[0..16], a0[16..32], a1[16..32]] (the order of
        /// [`split2`]'s codes for two blocks of 32); otherwise the natural [a0, a1] (Q4_K's two
        /// sub-blocks of one 32-byte chunk). `z`: the offset of the unsigned codes per byte lane.
        #[inline(always)]
        unsafe fn pack(
            a: &[Q8Block],
            split: bool,
            z: __m512i,
            qs: *mut __m512i,
            init: *mut __m512i,
            da: *mut f32,
            dsum: *mut f32,
        ) {
            for p in 0..a.len() / 2 {
                let a0 = _mm256_loadu_si256(a[2 * p].qs.as_ptr() as *const __m256i);
                let a1 = _mm256_loadu_si256(a[2 * p + 1].qs.as_ptr() as *const __m256i);
                let nat = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a0), a1);
                // 128-bit lanes [0, 2, 1, 3].
                let v = if split {
                    _mm512_shuffle_i32x4::<0xD8>(nat, nat)
                } else {
                    nat
                };
                _mm512_storeu_si512(qs.add(p) as *mut _, v);
                let zs = _mm512_dpbusd_epi32(_mm512_setzero_si512(), z, v);
                _mm512_storeu_si512(
                    init.add(p) as *mut _,
                    _mm512_sub_epi32(_mm512_setzero_si512(), zs),
                );
            }
            for (i, b) in a.iter().enumerate() {
                *da.add(i) = b.d;
                *dsum.add(i) = b.d * b.sum as f32;
            }
        }

        /// Shift counts of the 16-bit words: 0 in lanes 0 and 1 (low nibbles), 4 in lanes 2
        /// and 3 (high nibbles).
        #[inline(always)]
        unsafe fn shifts() -> __m512i {
            _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(4))
        }

        /// The high nibbles left in place (`x & 0xF0`, 16 times the code) in lanes 2 and 3:
        /// one `and` and no shift. Their integer sums are then 16 times too large, which
        /// [`hi16_factors`] undoes at the end (exact: a power of two). Only for formats whose codes are
        /// used as they are (no table lookup), where `16·15 = 240` still fits the unsigned byte.
        #[inline(always)]
        unsafe fn nibble_mask(hi16: bool) -> __m512i {
            if hi16 {
                _mm512_inserti64x4::<1>(_mm512_set1_epi8(0x0F), _mm256_set1_epi8(0xF0u8 as i8))
            } else {
                _mm512_set1_epi8(0x0F)
            }
        }

        /// Per-lane factors of the float accumulators when `hi16`: 1 for lanes 0..8, 1/16 for
        /// lanes 8..16 (the high nibbles of [`nibble_mask`]).
        #[inline(always)]
        unsafe fn hi16_factors() -> __m512 {
            _mm512_insertf32x8::<1>(_mm512_set1_ps(1.0), _mm256_set1_ps(1.0 / 16.0))
        }

        /// The 4-bit codes of two blocks of 16 bytes at `p0` and `p1`, as
        /// [p0 low nibbles, p1 low, p0 high, p1 high] (one byte per code; with `hi16` the high
        /// nibbles stay in bits 4..8, see [`nibble_mask`]).
        #[inline(always)]
        unsafe fn split2(
            p0: *const u8,
            p1: *const u8,
            sh: __m512i,
            mask: __m512i,
            hi16: bool,
        ) -> __m512i {
            let x = _mm512_broadcast_i32x4(_mm_loadu_si128(p0 as *const __m128i));
            let x = _mm512_mask_broadcast_i32x4(x, 0xF0F0, _mm_loadu_si128(p1 as *const __m128i));
            let x = if hi16 { x } else { _mm512_srlv_epi16(x, sh) };
            _mm512_and_si512(x, mask)
        }

        /// The same for 32 contiguous bytes (`p0 = p`, `p1 = p + 16`).
        #[inline(always)]
        unsafe fn split32(p: *const u8, sh: __m512i, mask: __m512i, hi16: bool) -> __m512i {
            let x = _mm512_broadcast_i64x4(_mm256_loadu_si256(p as *const __m256i));
            let x = if hi16 { x } else { _mm512_srlv_epi16(x, sh) };
            _mm512_and_si512(x, mask)
        }

        /// Dword index vector: `a` in dwords 0..4, `b` in 4..8, `c` in 8..12, `d` in 12..16.
        #[inline(always)]
        unsafe fn idx4(a: i32, b: i32, c: i32, d: i32) -> __m512i {
            _mm512_setr_epi32(a, a, a, a, b, b, b, b, c, c, c, c, d, d, d, d)
        }

        /// Up to 128 bytes from `p` as two vectors, `len` of them read (the rest zero): masked
        /// loads do not touch the bytes past the row.
        #[inline(always)]
        unsafe fn load128(p: *const u8, len: usize, full: bool) -> (__m512i, __m512i) {
            if full {
                return (
                    _mm512_loadu_si512(p as *const _),
                    _mm512_loadu_si512(p.add(64) as *const _),
                );
            }
            let m0 = if len >= 64 { !0u64 } else { (1u64 << len) - 1 };
            let m1 = if len <= 64 {
                0
            } else if len >= 128 {
                !0u64
            } else {
                (1u64 << (len - 64)) - 1
            };
            (
                _mm512_maskz_loadu_epi8(m0, p as *const i8),
                _mm512_maskz_loadu_epi8(m1, p.wrapping_add(64) as *const i8),
            )
        }

        /// The 8 block scales of the 8 blocks of `bytes` bytes at `b` (`nblk` of them present,
        /// the others 0): f16 at the start of each block (Q4_0, IQ4_NL) or E8M0 (MXFP4, halved
        /// as [`super::super::e8m0_half`]).
        #[inline(always)]
        unsafe fn scales8<const FULL: bool>(kind: Kind, b: *const u8, nblk: usize) -> __m256 {
            if kind == Kind::Mxfp4 {
                // Byte 17k is the low (k even) or high (k odd) byte of word ⌊17k/2⌋.
                const W: [u16; 32] = {
                    let mut w = [0u16; 32];
                    let mut k = 0;
                    while k < 8 {
                        w[k] = (17 * k / 2) as u16;
                        k += 1;
                    }
                    w
                };
                let (l0, l1) = load128(b, 17 * nblk, FULL);
                let w =
                    _mm512_permutex2var_epi16(l0, _mm512_loadu_si512(W.as_ptr() as *const _), l1);
                let w = _mm_srlv_epi16(
                    _mm512_castsi512_si128(w),
                    _mm_setr_epi16(0, 8, 0, 8, 0, 8, 0, 8),
                );
                let e = _mm256_cvtepu16_epi32(_mm_and_si128(w, _mm_set1_epi16(0xFF)));
                // 2^(e − 128): exponent field e − 1, or the subnormals 2^-128 and 2^-127.
                let normal = _mm256_slli_epi32::<23>(_mm256_sub_epi32(e, _mm256_set1_epi32(1)));
                let sub = _mm256_sllv_epi32(_mm256_set1_epi32(0x0020_0000), e);
                let small = _mm256_cmpgt_epi32(_mm256_set1_epi32(2), e);
                _mm256_castsi256_ps(_mm256_blendv_epi8(normal, sub, small))
            } else {
                const W: [u16; 32] = {
                    let mut w = [0u16; 32];
                    let mut k = 0;
                    while k < 8 {
                        w[k] = (9 * k) as u16;
                        k += 1;
                    }
                    w
                };
                let (l0, l1) = load128(b, 18 * nblk, FULL);
                let w =
                    _mm512_permutex2var_epi16(l0, _mm512_loadu_si512(W.as_ptr() as *const _), l1);
                _mm256_cvtph_ps(_mm512_castsi512_si128(w))
            }
        }

        /// The block-of-32 formats of [`blocks32`] as const parameters (one compiled kernel
        /// each, no format tests inside the loops).
        const K_Q4_0: u8 = 0;
        const K_IQ4_NL: u8 = 1;
        const K_MXFP4: u8 = 2;

        const fn kind_of(k: u8) -> Kind {
            match k {
                K_Q4_0 => Kind::Q4_0,
                K_IQ4_NL => Kind::Iq4Nl,
                _ => Kind::Mxfp4,
            }
        }

        /// Q4_0 / IQ4_NL / MXFP4: blocks of 32 with one scale, 8 blocks (`nblk` < 8 in the tail
        /// of a row, when not `FULL`) starting at block `o`. The scales of every row first, then
        /// per pair of blocks the rows innermost: the activations are loaded once per pair and
        /// the accumulators stay in registers.
        #[inline(always)]
        unsafe fn octet<const N: usize, const K: u8, const FULL: bool>(
            c: &Blocks32,
            w: &[*const u8; N],
            act: Act,
            o: usize,
            nblk: usize,
            acc: &mut [__m512; N],
        ) {
            let kind = kind_of(K);
            let (bytes, off) = if kind == Kind::Mxfp4 {
                (17, 1)
            } else {
                (18, 2)
            };
            let pairs = if FULL { 4 } else { nblk / 2 };
            let sh = shifts();
            let hi16 = kind == Kind::Q4_0;
            let mask = nibble_mask(hi16);
            let da8 = _mm256_loadu_ps(act.da.add(o));
            let s8: [__m512; N] = std::array::from_fn(|k| {
                let b = w[k].add(bytes * o);
                prefetch(b, c.pf, bytes * 8);
                _mm512_castps256_ps512(_mm256_mul_ps(scales8::<FULL>(kind, b, nblk), da8))
            });
            for (p, idx) in c.pidx.iter().enumerate().take(pairs) {
                let pa = o / 2 + p;
                let (init, a) = (*act.init.add(pa), *act.qs.add(pa));
                for k in 0..N {
                    let b = w[k].add(bytes * (o + 2 * p) + off);
                    let mut q = split2(b, b.add(bytes), sh, mask, hi16);
                    if kind != Kind::Q4_0 {
                        q = _mm512_shuffle_epi8(c.table, q);
                    }
                    let s = _mm512_dpbusd_epi32(init, q, a);
                    let sc = _mm512_permutexvar_ps(*idx, s8[k]);
                    acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), sc, acc[k]);
                }
            }
        }

        /// What [`octet`] needs besides the rows: its code table (IQ4_NL, MXFP4), the scale
        /// index vector of each pair and the prefetch distance.
        struct Blocks32 {
            table: __m512i,
            pidx: [__m512i; 4],
            pf: usize,
        }

        #[inline(always)]
        unsafe fn blocks32<const N: usize, const K: u8>(
            w: [*const u8; N],
            act: Act,
            pf: usize,
        ) -> [f32; N] {
            let kind = kind_of(K);
            // Codes offset to be unsigned (see `zero_point`).
            let table: [u8; 16] = match kind {
                Kind::Iq4Nl => std::array::from_fn(|i| (KVALUES_IQ4NL[i] as i32 + 128) as u8),
                _ => MXFP4_U,
            };
            let table = _mm512_broadcast_i32x4(_mm_loadu_si128(table.as_ptr() as *const __m128i));
            let pidx: [__m512i; 4] = std::array::from_fn(|p| {
                let (a, b) = (2 * p as i32, 2 * p as i32 + 1);
                idx4(a, b, a, b)
            });
            let c = Blocks32 { table, pidx, pf };
            let mut acc = [_mm512_setzero_ps(); N];
            let mut o = 0;
            while o + 8 <= act.nb {
                octet::<N, K, true>(&c, &w, act, o, 8, &mut acc);
                o += 8;
            }
            if o < act.nb {
                octet::<N, K, false>(&c, &w, act, o, act.nb - o, &mut acc);
            }
            if kind == Kind::Q4_0 {
                acc.iter_mut()
                    .for_each(|a| *a = _mm512_mul_ps(*a, hi16_factors()));
            }
            std::array::from_fn(|k| _mm512_reduce_add_ps(acc[k]))
        }

        /// Doubled E2M1 values plus 12 (0..24), as `lb_nvfp4` of the 256-bit kernels.
        const MXFP4_U: [u8; 16] = [12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0];

        /// The offset `z` of the unsigned codes in every byte lane (the integer sums start at
        /// `−z·Σa`); 16 times larger where the codes are (see [`nibble_mask`]).
        #[inline(always)]
        unsafe fn zero_point(kind: Kind) -> __m512i {
            match kind {
                Kind::Q4_0 => _mm512_inserti64x4::<1>(_mm512_set1_epi8(8), _mm256_set1_epi8(-128)),
                Kind::Iq4Nl => _mm512_set1_epi8(-128),
                Kind::Mxfp4 | Kind::Nvfp4 => _mm512_set1_epi8(12),
                Kind::Q4K => _mm512_setzero_si512(),
            }
        }

        /// lowbit's NVFP4 blocks of 128: the 8 E4M3 sub-scales as in the 256-bit kernel; the two
        /// pairs of blocks of 32 are 32 contiguous bytes each.
        #[inline(always)]
        unsafe fn nvfp4<const N: usize>(w: [*const u8; N], act: Act, pf: usize) -> [f32; N] {
            const BYTES: usize = lowbit_formats::lb_nvfp4::BLOCK_BYTES;
            let table = _mm512_broadcast_i32x4(_mm_loadu_si128(MXFP4_U.as_ptr() as *const __m128i));
            let sh = shifts();
            let mask = _mm512_set1_epi8(0x0F);
            // Sub-scale j = 2·block + half; pair p holds blocks 2p (lanes 0, 2) and 2p + 1.
            let pidx = [idx4(0, 2, 1, 3), idx4(4, 6, 5, 7)];
            let halves = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
            let mut acc = [_mm512_setzero_ps(); N];
            for blk in 0..act.nb / 4 {
                let da4 = _mm256_castps128_ps256(_mm_loadu_ps(act.da.add(4 * blk)));
                let dd = _mm256_mul_ps(_mm256_permutevar8x32_ps(da4, halves), _mm256_set1_ps(0.5));
                let s8: [__m512; N] = std::array::from_fn(|k| {
                    let b = w[k].add(BYTES * blk);
                    prefetch(b, pf, BYTES);
                    let g = _mm256_set1_ps((b as *const f32).read_unaligned());
                    let e = _mm_cvtepu8_epi16(_mm_loadl_epi64(b.add(4) as *const __m128i));
                    let h = _mm_or_si128(
                        _mm_slli_epi16::<8>(_mm_and_si128(e, _mm_set1_epi16(0x80))),
                        _mm_slli_epi16::<7>(_mm_and_si128(e, _mm_set1_epi16(0x7F))),
                    );
                    let e4m3 = _mm256_mul_ps(_mm256_cvtph_ps(h), _mm256_set1_ps(256.0));
                    _mm512_castps256_ps512(_mm256_mul_ps(_mm256_div_ps(e4m3, g), dd))
                });
                for (p, idx) in pidx.iter().enumerate() {
                    let pa = 2 * blk + p;
                    let (init, a) = (*act.init.add(pa), *act.qs.add(pa));
                    for k in 0..N {
                        let b = w[k].add(BYTES * blk + 12 + 32 * p);
                        let q = _mm512_shuffle_epi8(table, split32(b, sh, mask, false));
                        let s = _mm512_dpbusd_epi32(init, q, a);
                        let sc = _mm512_permutexvar_ps(*idx, s8[k]);
                        acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), sc, acc[k]);
                    }
                }
            }
            std::array::from_fn(|k| _mm512_reduce_add_ps(acc[k]))
        }

        /// 8 bytes as 8 f32 lanes.
        #[inline(always)]
        unsafe fn u8x8_to_ps(v: u64) -> __m256 {
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(v as i64)))
        }

        /// Q4_K: per super-block the 8 scales `d·sc·da` as one vector (spread per pair of
        /// sub-blocks by `vpermps`) and the mins `dmin·m·da·Σa` summed in a second accumulator.
        #[inline(always)]
        unsafe fn q4_k<const N: usize>(w: [*const u8; N], act: Act, pf: usize) -> [f32; N] {
            let sh = shifts();
            let mask = nibble_mask(true);
            let pidx: [__m512i; 4] = std::array::from_fn(|c| {
                let (a, b) = (2 * c as i32, 2 * c as i32 + 1);
                idx4(a, a, b, b)
            });
            let mut acc = [_mm512_setzero_ps(); N];
            let mut mins = [_mm256_setzero_ps(); N];
            for sb in 0..act.nb / 8 {
                let da8 = _mm256_loadu_ps(act.da.add(8 * sb));
                let ds8 = _mm256_loadu_ps(act.dsum.add(8 * sb));
                let s8: [__m512; N] = std::array::from_fn(|k| {
                    let b = w[k].add(144 * sb);
                    prefetch(b, pf, 144);
                    // The 6-bit scales and mins (`scale_min_k4`) four bytes at a time.
                    let s = |i: usize| (b.add(4 + 4 * i) as *const u32).read_unaligned();
                    let (s0, s1, s2) = (s(0), s(1), s(2));
                    let sc_hi = (s2 & 0x0F0F_0F0F) | ((s0 >> 2) & 0x3030_3030);
                    let mn_hi = ((s2 >> 4) & 0x0F0F_0F0F) | ((s1 >> 2) & 0x3030_3030);
                    let sc = (s0 & 0x3F3F_3F3F) as u64 | (sc_hi as u64) << 32;
                    let mn = (s1 & 0x3F3F_3F3F) as u64 | (mn_hi as u64) << 32;
                    let d = super::f16_splat(b);
                    let dmin = super::f16_splat(b.add(2));
                    mins[k] = _mm256_fmadd_ps(_mm256_mul_ps(u8x8_to_ps(mn), dmin), ds8, mins[k]);
                    _mm512_castps256_ps512(_mm256_mul_ps(_mm256_mul_ps(u8x8_to_ps(sc), d), da8))
                });
                for (c, idx) in pidx.iter().enumerate() {
                    let a = *act.qs.add(4 * sb + c);
                    for k in 0..N {
                        let q = split32(w[k].add(144 * sb + 16 + 32 * c), sh, mask, true);
                        let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, a);
                        let sc = _mm512_permutexvar_ps(*idx, s8[k]);
                        acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sc, acc[k]);
                    }
                }
            }
            std::array::from_fn(|k| {
                _mm512_reduce_add_ps(_mm512_mul_ps(acc[k], hi16_factors())) - super::hsum(mins[k])
            })
        }

        #[inline(always)]
        unsafe fn kernel<const N: usize>(
            kind: Kind,
            w: [*const u8; N],
            act: Act,
            pf: usize,
        ) -> [f32; N] {
            match kind {
                Kind::Q4K => q4_k::<N>(w, act, pf),
                Kind::Nvfp4 => nvfp4::<N>(w, act, pf),
                Kind::Q4_0 => blocks32::<N, K_Q4_0>(w, act, pf),
                Kind::Iq4Nl => blocks32::<N, K_IQ4_NL>(w, act, pf),
                Kind::Mxfp4 => blocks32::<N, K_MXFP4>(w, act, pf),
            }
        }

        /// Software prefetch of the `len` bytes at `b + pf` (0: off), one request per cache
        /// line, issued while the bytes at `b` are processed: the requests stay spread over the
        /// row instead of arriving in bursts that fill the line-fill buffers and stall the core.
        #[inline(always)]
        unsafe fn prefetch(b: *const u8, pf: usize, len: usize) {
            if pf == 0 {
                return;
            }
            let mut off = 0;
            while off < len {
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(pf + off) as *const i8);
                off += 64;
            }
        }

        /// [`super::rows`] for the types of [`handles`].
        #[inline(always)]
        pub(in super::super) unsafe fn rows(
            job: &RowsJob<'_>,
            r0: usize,
            r1: usize,
            out: *mut f32,
        ) {
            let kind = kind(job.dtype, job.nb).expect("checked by handles()");
            let nb = job.nb;
            let pairs = nb / 2;
            let nbp = nb.next_multiple_of(8);
            // Take the thread's buffers (a fresh set if they are in use).
            let mut s = Scratch::default();
            SCRATCH.with(|c| {
                if let Ok(mut c) = c.try_borrow_mut() {
                    std::mem::swap(&mut *c, &mut s);
                }
            });
            s.qs.resize(job.tokens * pairs, std::mem::zeroed());
            s.init.resize(job.tokens * pairs, std::mem::zeroed());
            s.f.clear();
            s.f.resize(job.tokens * 2 * nbp, 0.0);
            for t in 0..job.tokens {
                pack(
                    job.act(t),
                    kind != Kind::Q4K,
                    zero_point(kind),
                    s.qs.as_mut_ptr().add(t * pairs),
                    s.init.as_mut_ptr().add(t * pairs),
                    s.f.as_mut_ptr().add(2 * t * nbp),
                    s.f.as_mut_ptr().add(2 * t * nbp + nbp),
                );
            }
            let act = |t: usize| Act {
                qs: s.qs.as_ptr().add(t * pairs),
                init: s.init.as_ptr().add(t * pairs),
                da: s.f.as_ptr().add(2 * t * nbp),
                dsum: s.f.as_ptr().add(2 * t * nbp + nbp),
                nb,
            };
            let pf = match PREFETCH_BYTES.load(std::sync::atomic::Ordering::Relaxed) {
                0 => 0,
                d => d.max(GROUP * job.row_bytes),
            };
            let mut r = r0;
            let group = super::super::group_prefetch_for(GROUP * job.row_bytes);
            let end = job.data.as_ptr().add(r1 * job.row_bytes);
            while r + GROUP <= r1 {
                let w: [*const u8; GROUP] = std::array::from_fn(|k| job.row(r + k).as_ptr());
                if group && pf > 0 {
                    super::group_prefetch(w[0].add(pf), GROUP * job.row_bytes, end);
                }
                for t in 0..job.tokens {
                    // The first token's pass prefetches; the others find the rows in cache.
                    let d = if t == 0 && !group { pf } else { 0 };
                    let v = kernel::<GROUP>(kind, w, act(t), d);
                    for (k, v) in v.into_iter().enumerate() {
                        *out.add(t * job.rows + r + k) = v;
                    }
                }
                r += GROUP;
            }
            for r in r..r1 {
                let w = [job.row(r).as_ptr()];
                for t in 0..job.tokens {
                    *out.add(t * job.rows + r) = kernel::<1>(kind, w, act(t), 0)[0];
                }
            }
            SCRATCH.with(|c| {
                if let Ok(mut c) = c.try_borrow_mut() {
                    *c = s;
                }
            });
        }
    }
}

/// Dot product of one row with the fastest available kernel (scalar where none).
pub fn row_dot(t: GgmlType, w: &[u8], a: &[Q8Block]) -> Option<f32> {
    if !is_supported(t) || !check_row(t, w, a) {
        return None;
    }
    let job = RowsJob {
        dtype: t,
        data: w,
        row_bytes: w.len(),
        rows: 1,
        act: a,
        tokens: 1,
        nb: a.len(),
    };
    let mut out = 0f32;
    // SAFETY: one row, one token, shapes checked above, `out` is a valid f32.
    unsafe { dot_rows(Isa::detect(), &job, 0, 1, &mut out) };
    Some(out)
}

/// The same with a chosen instruction set (tests compare all of them); `None` when this CPU lacks it.
pub fn row_dot_with(isa: Isa, t: GgmlType, w: &[u8], a: &[Q8Block]) -> Option<f32> {
    let best = Isa::detect();
    let ok = match isa {
        Isa::Scalar => true,
        Isa::Avx2 => best != Isa::Scalar,
        Isa::Avx512Vnni => best == Isa::Avx512Vnni,
    };
    if !ok || !is_supported(t) || !check_row(t, w, a) {
        return None;
    }
    let job = RowsJob {
        dtype: t,
        data: w,
        row_bytes: w.len(),
        rows: 1,
        act: a,
        tokens: 1,
        nb: a.len(),
    };
    let mut out = 0f32;
    // SAFETY: the CPU supports `isa`; one row, one token, shapes checked above.
    unsafe { dot_rows(isa, &job, 0, 1, &mut out) };
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matmul::{matmul_q8, WeightMatrix};

    /// Random rows of `t` whose scale fields are finite and moderate (the codes are raw random
    /// bytes); MXFP4 exponents include the subnormal ones (0 and 1).
    fn random_rows(t: GgmlType, rows: usize, cols: usize, seed: &mut u64) -> Vec<u8> {
        let mut next = || {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed
        };
        let rb = t.byte_len(cols).unwrap();
        let mut w: Vec<u8> = (0..rows * rb).map(|_| next() as u8).collect();
        let (bytes, _) = block_shape(t);
        for b in w.chunks_exact_mut(bytes) {
            let mut f16 = |at: usize, r: u64| {
                let v = half::f16::from_f32((r % 2001) as f32 / 1000.0 - 1.0);
                b[at..at + 2].copy_from_slice(&v.to_le_bytes());
            };
            match t {
                GgmlType::Q4_0 | GgmlType::IQ4_NL => f16(0, next()),
                GgmlType::Q4_K => {
                    f16(0, next());
                    f16(2, next());
                }
                GgmlType::MXFP4 => {
                    let r = next();
                    b[0] = if r % 4 == 0 {
                        (r >> 8) as u8 % 3
                    } else {
                        110 + (r >> 8) as u8 % 30
                    };
                }
                GgmlType::LB_NVFP4 => {
                    let g = 448.0 * 6.0 / (0.5 + (next() % 1000) as f32 / 1000.0);
                    b[0..4].copy_from_slice(&g.to_le_bytes());
                    for e in &mut b[4..12] {
                        *e = 0x18 + (next() % (0x7F - 0x18)) as u8;
                    }
                }
                _ => unreachable!(),
            }
        }
        w
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// The dispatched kernels (on AVX-512 VNNI: the 512-bit ones, with whole groups of 8
        /// blocks and ragged tails) against the scalar integer reference: same integer sums, so
        /// only the float additions differ (≤ 1e-5 · Σ|x·w| per output).
        #[test]
        fn wide_rows_match_scalar(
            ti in 0usize..5,
            rows in 1usize..10,
            units in 1usize..12,
            tokens in 1usize..4,
            seed in 1u64..u64::MAX,
        ) {
            let t = [GgmlType::Q4_0, GgmlType::IQ4_NL, GgmlType::MXFP4, GgmlType::LB_NVFP4,
                     GgmlType::Q4_K][ti];
            // Blocks of 32 in units of 64 values (odd block counts keep the 256-bit kernels).
            let cols = units * t.block_size().max(64);
            let mut s = seed;
            let data = random_rows(t, rows, cols, &mut s);
            let w = WeightMatrix { dtype: t, rows, cols, data: &data };
            let x: Vec<f32> = (0..tokens * cols)
                .map(|i| ((i as f32 * 0.71 + s as f32 * 1e-19).sin()) * if i % 37 == 0 { 8.0 } else { 1.0 })
                .collect();
            let mut reference = vec![0f32; tokens * rows];
            proptest::prop_assert!(matmul_q8(&x, w, &mut reference, Isa::Scalar));
            let mut deq = vec![0f32; cols];
            for isa in [Isa::Avx512Vnni, Isa::Avx2] {
                let mut y = vec![0f32; tokens * rows];
                if !matmul_q8(&x, w, &mut y, isa) {
                    continue;
                }
                for r in 0..rows {
                    let rb = data.len() / rows;
                    lowbit_formats::dequantize_row(t, &data[r * rb..(r + 1) * rb], &mut deq).unwrap();
                    for tk in 0..tokens {
                        let abs: f64 = x[tk * cols..(tk + 1) * cols]
                            .iter()
                            .zip(&deq)
                            .map(|(a, b)| (a * b).abs() as f64)
                            .sum();
                        let (got, want) = (y[tk * rows + r], reference[tk * rows + r]);
                        proptest::prop_assert!(
                            ((got - want) as f64).abs() <= 1e-5 * abs + 1e-30,
                            "{t} {isa:?} row {r} token {tk} cols {cols}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
