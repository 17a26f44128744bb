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
/// not keep enough lines in flight for the interleaved rows of a group.
static PREFETCH_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(4096);

/// Set the GEMV software prefetch distance (bytes ahead of the rows being read; 0 turns it
/// off). For bandwidth experiments (`examples/gemv_bandwidth`).
#[doc(hidden)]
pub fn set_prefetch_bytes(bytes: usize) {
    PREFETCH_BYTES.store(bytes, std::sync::atomic::Ordering::Relaxed);
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
        let end = job.data.as_ptr().add(r1 * job.row_bytes);
        while r + GROUP <= r1 {
            let w: [*const u8; GROUP] = std::array::from_fn(|k| job.row(r + k).as_ptr());
            if pf > 0 {
                // Ask for the weights `pf` bytes ahead of this group, one cache line at a time.
                let from = w[0].add(pf);
                let mut p = from;
                while p < from.add(GROUP * job.row_bytes) && p < end {
                    _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
                    p = p.add(64);
                }
            }
            // Tokens inside the row group: the group's weights are read from DRAM once.
            for t in 0..job.tokens {
                let v = kernel::<O, GROUP>(job.dtype, w, job.act(t));
                for (k, v) in v.into_iter().enumerate() {
                    *out.add(t * job.rows + r + k) = v;
                }
            }
            r += GROUP;
        }
        for r in r..r1 {
            let w = [job.row(r).as_ptr()];
            for t in 0..job.tokens {
                *out.add(t * job.rows + r) = kernel::<O, 1>(job.dtype, w, job.act(t))[0];
            }
        }
    }

    /// Dot products of `N` rows with one token's activation blocks.
    #[inline(always)]
    unsafe fn kernel<O: Ops, const N: usize>(
        dtype: GgmlType,
        w: [*const u8; N],
        a: &[Q8Block],
    ) -> [f32; N] {
        match dtype {
            GgmlType::Q8_0 => q8_0::<O, N>(w, a),
            GgmlType::Q4_0 => q4_0::<O, N, false>(w, a),
            GgmlType::Q5_0 => q4_0::<O, N, true>(w, a),
            GgmlType::IQ4_NL => table4::<O, N>(w, a, 18, &KVALUES_IQ4NL),
            GgmlType::MXFP4 => table4::<O, N>(w, a, 17, &KVALUES_MXFP4),
            GgmlType::LB_NVFP4 => lb_nvfp4::<O, N>(w, a),
            GgmlType::Q4_K => q4_k::<O, N, false>(w, a),
            GgmlType::Q5_K => q4_k::<O, N, true>(w, a),
            GgmlType::Q6_K => q6_k::<O, N>(w, a),
            _ => [f32::NAN; N],
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
    unsafe fn q8_0<O: Ops, const N: usize>(w: [*const u8; N], a: &[Q8Block]) -> [f32; N] {
        let mut acc = [_mm256_setzero_ps(); N];
        for (i, ab) in a.iter().enumerate() {
            let av = load_a(ab);
            let da = _mm256_set1_ps(ab.d);
            for k in 0..N {
                let b = w[k].add(34 * i);
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
    ) -> [f32; N] {
        let bytes = if FIVE { 22 } else { 18 };
        let mut acc = [_mm256_setzero_ps(); N];
        for (i, ab) in a.iter().enumerate() {
            let av = load_a(ab);
            let init = neg_zero_sums::<O>(if FIVE { 16 } else { 8 }, av);
            let da = _mm256_set1_ps(ab.d);
            for k in 0..N {
                let b = w[k].add(bytes * i);
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
    ) -> [f32; N] {
        let t = _mm256_broadcastsi128_si256(_mm_loadu_si128(table.as_ptr() as *const __m128i));
        let mut acc = [_mm256_setzero_ps(); N];
        for (i, ab) in a.iter().enumerate() {
            let av = load_a(ab);
            let da = _mm256_set1_ps(ab.d);
            for k in 0..N {
                let b = w[k].add(bytes * i);
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
    unsafe fn lb_nvfp4<O: Ops, const N: usize>(w: [*const u8; N], a: &[Q8Block]) -> [f32; N] {
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
    ) -> [f32; N] {
        let bytes = if FIVE { 176 } else { 144 };
        let mut acc = [_mm256_setzero_ps(); N];
        let one = _mm256_set1_epi8(1);
        for (sb, ab) in a.chunks_exact(8).enumerate() {
            let da = lanes8(ab, |b| b.d);
            let dsum = lanes8(ab, |b| b.d * b.sum as f32);
            for k in 0..N {
                let b = w[k].add(bytes * sb);
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
    unsafe fn q6_k<O: Ops, const N: usize>(w: [*const u8; N], a: &[Q8Block]) -> [f32; N] {
        let mut acc = [_mm256_setzero_ps(); N];
        let three = _mm256_set1_epi8(3);
        for (sb, ab) in a.chunks_exact(8).enumerate() {
            for k in 0..N {
                let b = w[k].add(210 * sb);
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
