//! Causal multi-head attention with grouped KV heads over a KV cache stored as f32, f16, q8, q4
//! or fp8 (`kv.rs`), optionally Hadamard-rotated.

use rayon::prelude::*;

mod kv;

pub use kv::{KvCacheSpec, KvDtype, KvError, Q4_GROUP};
use kv::{Rotation, RowKernel, Store};

/// Rows a rotated cache rotates at a time on write.
const ROTATE_BLOCK_ROWS: usize = 64;

/// Per-layer KV cache: `capacity` positions of `n_kv_heads × head_dim` keys and values, in the
/// storage type of its [`KvCacheSpec`]. All memory is allocated up front; writes quantize in place.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub capacity: usize,
    spec: KvCacheSpec,
    k: Store,
    v: Store,
    rotation: Option<Rotation>,
    /// Rotated keys/values before quantization, and the FP8 encoder's input (reused).
    scratch: Vec<f32>,
    tmp: Vec<f32>,
}

impl KvCache {
    /// An f32 cache.
    pub fn new(n_kv_heads: usize, head_dim: usize, capacity: usize) -> Self {
        Self::with_spec(n_kv_heads, head_dim, capacity, KvCacheSpec::default())
            .expect("an unrotated f32 cache has no preconditions beyond head_dim > 0")
    }

    /// A cache of this storage type (and rotation). Fails when the spec does not fit `head_dim`
    /// (see [`KvCacheSpec::check`]).
    pub fn with_spec(
        n_kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        spec: KvCacheSpec,
    ) -> Result<Self, KvError> {
        spec.check(head_dim)?;
        let rows = n_kv_heads * capacity;
        let rotation = match spec.rotation_seed {
            Some(seed) => Some(Rotation::new(head_dim, seed)?),
            None => None,
        };
        Ok(KvCache {
            n_kv_heads,
            head_dim,
            capacity,
            spec,
            k: Store::new(spec.dtype, rows, head_dim),
            v: Store::new(spec.dtype, rows, head_dim),
            rotation,
            scratch: Vec::new(),
            tmp: Vec::new(),
        })
    }

    pub fn spec(&self) -> KvCacheSpec {
        self.spec
    }

    /// Bytes held by keys and values (codes and scales).
    pub fn bytes(&self) -> usize {
        self.k.bytes() + self.v.bytes()
    }

    /// Store keys and values (`tokens × n_kv_heads × head_dim`) for positions `pos0..`, rotated
    /// and quantized to the cache's type.
    pub fn write(&mut self, pos0: usize, k: &[f32], v: &[f32]) {
        let hd = self.head_dim;
        let w = self.n_kv_heads * hd;
        let tokens = k.len() / w;
        assert!(
            pos0 + tokens <= self.capacity,
            "KV cache overflow: {} > {}",
            pos0 + tokens,
            self.capacity
        );
        let r0 = pos0 * self.n_kv_heads;
        for (src, store) in [(k, &mut self.k), (v, &mut self.v)] {
            let src = &src[..tokens * w];
            let Some(rot) = &self.rotation else {
                for (i, x) in src.chunks_exact(hd).enumerate() {
                    store.write_row(r0 + i, hd, x, &mut self.tmp);
                }
                continue;
            };
            // Rotated in blocks of rows, so the scratch stays small after a long prefill.
            for (b, block) in src.chunks(ROTATE_BLOCK_ROWS * hd).enumerate() {
                self.scratch.clear();
                self.scratch.extend_from_slice(block);
                rot.forward(&mut self.scratch);
                for (i, x) in self.scratch.chunks_exact(hd).enumerate() {
                    store.write_row(r0 + b * ROTATE_BLOCK_ROWS + i, hd, x, &mut self.tmp);
                }
            }
        }
    }

    /// The stored key of (position, KV head), dequantized (in the rotated basis if the cache is
    /// rotated).
    pub fn key_row(&self, pos: usize, head: usize, out: &mut [f32]) {
        let r = pos * self.n_kv_heads + head;
        kv::dequantize_row(self.k.row(r, self.head_dim), out);
    }

    /// The stored value of (position, KV head), dequantized (rotated basis, as [`Self::key_row`]).
    pub fn value_row(&self, pos: usize, head: usize, out: &mut [f32]) {
        let r = pos * self.n_kv_heads + head;
        kv::dequantize_row(self.v.row(r, self.head_dim), out);
    }

    /// An f32 cache holding exactly this cache's stored values (dequantized) and the same rotation:
    /// attention over it is the exact-arithmetic meaning of attention over this one.
    pub fn dequantized(&self) -> KvCache {
        let hd = self.head_dim;
        let rows = self.n_kv_heads * self.capacity;
        let deq = |s: &Store| {
            let mut out = vec![0f32; rows * hd];
            for (r, o) in out.chunks_exact_mut(hd).enumerate() {
                kv::dequantize_row(s.row(r, hd), o);
            }
            Store::F32(out)
        };
        KvCache {
            spec: KvCacheSpec {
                dtype: KvDtype::F32,
                ..self.spec
            },
            k: deq(&self.k),
            v: deq(&self.v),
            rotation: self.rotation.clone(),
            scratch: Vec::new(),
            tmp: Vec::new(),
            ..*self
        }
    }
}

/// Attention of `q` (`tokens × n_heads × head_dim`, positions `pos0..pos0+tokens`) over the cache
/// positions `0..pos0+tokens` (already written). Query head h uses KV head `h / (n_heads/n_kv)`.
/// `window`: if set, position p sees only keys j with `p - j < window` (sliding-window layers).
/// Writes `tokens × n_heads × head_dim` into `out`.
///
/// Work is split by (token, KV head): the query heads sharing a KV head are processed together,
/// so each key and value row is read once per group. A rotated cache rotates the queries first
/// and un-rotates the output.
pub fn attention(
    q: &[f32],
    cache: &KvCache,
    n_heads: usize,
    pos0: usize,
    scale: f32,
    window: Option<usize>,
    out: &mut [f32],
) {
    attention_impl(q, cache, n_heads, pos0, scale, window, out, true)
}

/// [`attention`] with the SIMD row kernels on (`simd`, when the CPU has them) or off.
#[allow(clippy::too_many_arguments)]
fn attention_impl(
    q: &[f32],
    cache: &KvCache,
    n_heads: usize,
    pos0: usize,
    scale: f32,
    window: Option<usize>,
    out: &mut [f32],
    simd: bool,
) {
    // Scores are taken against rotated keys, so the queries are rotated the same way.
    let mut rotated = Vec::new();
    let q = match &cache.rotation {
        Some(r) => {
            rotated.extend_from_slice(q);
            r.forward(&mut rotated);
            &rotated[..]
        }
        None => q,
    };
    attend_all(q, cache, n_heads, pos0, scale, window, out, simd);
    if let Some(r) = &cache.rotation {
        // Σ p_j (v_j Q) = (Σ p_j v_j) Q: one inverse rotation per output row.
        r.inverse(out);
    }
}

/// Attention in the cache's basis: prefill (gemm over f32 blocks) or per (token, KV head) items.
#[allow(clippy::too_many_arguments)]
fn attend_all(
    q: &[f32],
    cache: &KvCache,
    n_heads: usize,
    pos0: usize,
    scale: f32,
    window: Option<usize>,
    out: &mut [f32],
    simd: bool,
) {
    let hd = cache.head_dim;
    let nkv = cache.n_kv_heads;
    let group = n_heads / nkv;
    let tokens = q.len() / (n_heads * hd);
    if tokens >= PREFILL_TILE / 2 {
        prefill(q, cache, n_heads, pos0, scale, window, out);
        return;
    }
    let avx512 = simd && kv::has_avx512();
    let avx2 = simd && crate::simd::has_avx2_fma();
    out.par_chunks_mut(group * hd).enumerate().for_each_init(
        Vec::new,
        |scores: &mut Vec<f32>, (idx, o)| {
            let job = Job {
                q,
                cache,
                n_heads,
                pos0,
                scale,
                window,
                t: idx / nkv,
                kvh: idx % nkv,
            };
            // The per-item work is its own function: a target feature does not reach into closures.
            #[cfg(target_arch = "x86_64")]
            {
                if avx512 {
                    // SAFETY: AVX-512F, F16C, AVX2 and FMA are present (checked at run time).
                    unsafe { attend_avx512(&job, scores, o) };
                    return;
                }
                if avx2 {
                    // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
                    unsafe { attend_avx2(&job, scores, o) };
                    return;
                }
            }
            let _ = (avx512, avx2);
            // SAFETY: the scalar kernels need no CPU feature.
            unsafe { attend::<kv::Scalar>(&job, scores, o) }
        },
    );
}

/// Query tokens per item of the prefill path.
const PREFILL_TILE: usize = 16;

/// Prefill: per (tile of 16 query tokens, KV head), the scores of all the tile's query heads
/// against the keys any of them sees are one matrix product (`gemm`), masked (causal and
/// window), soft-maxed, and multiplied by the values in a second product. Each key and value row
/// is then read once per tile instead of once per token. A quantized cache has the tile's key and
/// value rows dequantized into a local f32 block first (cost: one pass over them per tile).
fn prefill(
    q: &[f32],
    cache: &KvCache,
    n_heads: usize,
    pos0: usize,
    scale: f32,
    window: Option<usize>,
    out: &mut [f32],
) {
    let hd = cache.head_dim;
    let nkv = cache.n_kv_heads;
    let group = n_heads / nkv;
    let kw = nkv * hd;
    let tokens = q.len() / (n_heads * hd);
    let tiles = tokens.div_ceil(PREFILL_TILE);
    let lo_of = |p: usize| match window {
        Some(w) if p + 1 > w => p + 1 - w,
        _ => 0,
    };
    // Each item computes its rows into a local buffer; the scatter into `out` happens after.
    let results: Vec<(usize, usize, Vec<f32>)> = (0..tiles * nkv)
        .into_par_iter()
        .map(|item| {
            let (tile, kvh) = (item / nkv, item % nkv);
            let t0 = tile * PREFILL_TILE;
            let nt = PREFILL_TILE.min(tokens - t0);
            let m = nt * group;
            // Query rows (token, head in group), contiguous.
            let mut qt = vec![0f32; m * hd];
            for t in 0..nt {
                for g in 0..group {
                    let src = ((t0 + t) * n_heads + kvh * group + g) * hd;
                    qt[(t * group + g) * hd..(t * group + g + 1) * hd]
                        .copy_from_slice(&q[src..src + hd]);
                }
            }
            let lo = lo_of(pos0 + t0);
            let hi = pos0 + t0 + nt; // exclusive
            let len = hi - lo;
            // Key / value rows lo..hi of this KV head: in place (f32, row stride kw) or
            // dequantized into local blocks (row stride hd).
            let (kbuf, vbuf);
            let (k0, v0, stride) = match (&cache.k, &cache.v) {
                (Store::F32(k), Store::F32(v)) => (
                    k[lo * kw + kvh * hd..].as_ptr(),
                    v[lo * kw + kvh * hd..].as_ptr(),
                    kw,
                ),
                _ => {
                    let deq = |s: &Store| {
                        let mut b = vec![0f32; len * hd];
                        for (j, row) in b.chunks_exact_mut(hd).enumerate() {
                            kv::dequantize_row(s.row((lo + j) * nkv + kvh, hd), row);
                        }
                        b
                    };
                    kbuf = deq(&cache.k);
                    vbuf = deq(&cache.v);
                    (kbuf.as_ptr(), vbuf.as_ptr(), hd)
                }
            };
            let mut sc = vec![0f32; m * len];
            // SAFETY: dst is m × len (row stride len); lhs m × hd (row stride hd); rhs hd × len
            // read from key rows lo..hi (column stride `stride`): in bounds since hi ≤ capacity
            // (the cache was written up to pos0 + tokens) or the local block holds len rows.
            unsafe {
                gemm::gemm(
                    m,
                    len,
                    hd,
                    sc.as_mut_ptr(),
                    1,
                    len as isize,
                    false,
                    qt.as_ptr(),
                    1,
                    hd as isize,
                    k0,
                    stride as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            for t in 0..nt {
                let p = pos0 + t0 + t;
                let (plo, phi) = (lo_of(p) - lo, p + 1 - lo);
                for g in 0..group {
                    let row = &mut sc[(t * group + g) * len..(t * group + g + 1) * len];
                    row[..plo].iter_mut().for_each(|v| *v = 0.0);
                    row[phi..].iter_mut().for_each(|v| *v = 0.0);
                    softmax_inline(&mut row[plo..phi]);
                }
            }
            let mut o = vec![0f32; m * hd];
            // SAFETY: dst m × hd; lhs m × len; rhs len × hd read from value rows lo..hi (row
            // stride `stride`), in bounds as above.
            unsafe {
                gemm::gemm(
                    m,
                    hd,
                    len,
                    o.as_mut_ptr(),
                    1,
                    hd as isize,
                    false,
                    sc.as_ptr(),
                    1,
                    len as isize,
                    v0,
                    1,
                    stride as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            (t0, kvh, o)
        })
        .collect();
    for (t0, kvh, o) in results {
        let nt = o.len() / (group * hd);
        for t in 0..nt {
            let dst = ((t0 + t) * n_heads + kvh * group) * hd;
            out[dst..dst + group * hd].copy_from_slice(&o[t * group * hd..(t + 1) * group * hd]);
        }
    }
}

/// One (token, KV head) item of [`attention`].
struct Job<'a> {
    q: &'a [f32],
    cache: &'a KvCache,
    n_heads: usize,
    pos0: usize,
    scale: f32,
    window: Option<usize>,
    t: usize,
    kvh: usize,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(job: &Job<'_>, scores: &mut Vec<f32>, o: &mut [f32]) {
    attend::<kv::Scalar>(job, scores, o)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,f16c,avx2,fma")]
unsafe fn attend_avx512(job: &Job<'_>, scores: &mut Vec<f32>, o: &mut [f32]) {
    attend::<kv::Avx512>(job, scores, o)
}

/// Attention of the query heads of KV head `kvh` at token `t`; `o` is `group × head_dim`.
///
/// # Safety
/// The CPU supports `K`'s instructions.
#[inline(always)]
unsafe fn attend<K: RowKernel>(job: &Job<'_>, scores: &mut Vec<f32>, o: &mut [f32]) {
    let Job {
        q,
        cache,
        n_heads,
        pos0,
        scale,
        window,
        t,
        kvh,
    } = *job;
    let hd = cache.head_dim;
    let nkv = cache.n_kv_heads;
    let group = n_heads / nkv;
    let p = pos0 + t;
    let lo = match window {
        Some(w) if p + 1 > w => p + 1 - w,
        _ => 0,
    };
    let len = p + 1 - lo;
    // scores[g * len + j]: query head (kvh*group + g) against key lo + j; the last `group`
    // entries are a per-key scratch row.
    scores.clear();
    scores.resize(group * len + group, 0.0);
    let (sc, tmp) = scores.split_at_mut(group * len);
    let qg = &q[(t * n_heads + kvh * group) * hd..(t * n_heads + (kvh + 1) * group) * hd];
    for j in 0..len {
        K::dots(cache.k.row((lo + j) * nkv + kvh, hd), qg, tmp);
        for (g, s) in tmp.iter().enumerate() {
            sc[g * len + j] = s * scale;
        }
    }
    for g in 0..group {
        softmax_inline(&mut sc[g * len..(g + 1) * len]);
    }
    o.iter_mut().for_each(|x| *x = 0.0);
    for j in 0..len {
        for (g, w) in tmp.iter_mut().enumerate() {
            *w = sc[g * len + j];
        }
        K::axpys(cache.v.row((lo + j) * nkv + kvh, hd), tmp, o);
    }
}

#[inline(always)]
fn softmax_inline(x: &mut [f32]) {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in x.iter_mut() {
        *v = crate::ops::fast_exp(*v - m);
    }
    let inv = 1.0 / crate::simd::sum(x);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Plain reference: per query head, f64 scores and softmax over the cache's stored values
/// (dequantized); a rotated cache rotates the queries and un-rotates the output, as [`attention`].
pub fn attention_reference(
    q: &[f32],
    cache: &KvCache,
    n_heads: usize,
    pos0: usize,
    scale: f32,
    window: Option<usize>,
) -> Vec<f32> {
    let hd = cache.head_dim;
    let group = n_heads / cache.n_kv_heads;
    let tokens = q.len() / (n_heads * hd);
    let mut q = q.to_vec();
    if let Some(r) = &cache.rotation {
        r.forward(&mut q);
    }
    let (mut kr, mut vr) = (vec![0f32; hd], vec![0f32; hd]);
    let mut out = vec![0f32; q.len()];
    for t in 0..tokens {
        let p = pos0 + t;
        let lo = window.map_or(0, |w| (p + 1).saturating_sub(w));
        for h in 0..n_heads {
            let kvh = h / group;
            let qv = &q[(t * n_heads + h) * hd..(t * n_heads + h + 1) * hd];
            let s: Vec<f64> = (lo..=p)
                .map(|j| {
                    cache.key_row(j, kvh, &mut kr);
                    (0..hd).map(|d| qv[d] as f64 * kr[d] as f64).sum::<f64>() * scale as f64
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
            let z: f64 = e.iter().sum();
            let mut acc = vec![0f64; hd];
            for (j, w) in (lo..=p).zip(&e) {
                cache.value_row(j, kvh, &mut vr);
                for d in 0..hd {
                    acc[d] += w / z * vr[d] as f64;
                }
            }
            for d in 0..hd {
                out[(t * n_heads + h) * hd + d] = acc[d] as f32;
            }
        }
    }
    if let Some(r) = &cache.rotation {
        r.inverse(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Grouped kernel vs the per-head f64 reference: GQA groups, windows, prefill after a
        /// cached prefix; within 1e-5 relative L2.
        #[test]
        fn attention_matches_reference(nkv in 1usize..3, group in 1usize..4, hd in 1usize..9, past in 0usize..6,
                                       tokens in 1usize..40, window in proptest::option::of(1usize..20), seed in any::<u64>()) {
            let hd = hd * 2;
            let n_heads = nkv * group;
            let mut s = seed;
            let mut rnd = || { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0 };
            let total = past + tokens;
            let mut c = KvCache::new(nkv, hd, total);
            let k: Vec<f32> = (0..total * nkv * hd).map(|_| rnd()).collect();
            let v: Vec<f32> = (0..total * nkv * hd).map(|_| rnd()).collect();
            c.write(0, &k, &v);
            let q: Vec<f32> = (0..tokens * n_heads * hd).map(|_| rnd()).collect();
            let mut out = vec![0f32; q.len()];
            attention(&q, &c, n_heads, past, 0.7, window, &mut out);
            let r = attention_reference(&q, &c, n_heads, past, 0.7, window);
            let num: f64 = out.iter().zip(&r).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
            let den: f64 = r.iter().map(|b| (*b as f64).powi(2)).sum();
            prop_assert!((num / den.max(1e-30)).sqrt() < 1e-5);
        }
    }

    fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
        let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        (num / den.max(1e-30)).sqrt()
    }

    /// Relative L2 bound of attention over a cache of this type against the f32 cache of the
    /// same (random, uniform in ±1) keys and values: 2-3 times the worst error measured over
    /// 200 random shapes (head_dim 8-64, rotated or not): f16 6.9e-4, q8 1.5e-2, fp8 7.6e-2,
    /// q4 2.6e-1 (uniform data is q4's worst case, and rotation does not help it).
    fn bound_vs_f32(d: KvDtype) -> f64 {
        match d {
            KvDtype::F32 => 1e-5,
            KvDtype::F16 => 2e-3,
            KvDtype::Q8 => 4e-2,
            KvDtype::Fp8 => 1.5e-1,
            KvDtype::Q4 => 5e-1,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Every storage type, rotated or not, decode (few tokens, SIMD and scalar kernels) and
        /// prefill (gemm) paths: (1) within 1e-5 relative L2 of the f64 reference over the
        /// cache's own dequantized values and of attention over `dequantized()` (the same
        /// function in f32); (2) within `bound_vs_f32` of attention over the unquantized f32
        /// cache.
        #[test]
        fn quantized_caches_match_their_dequantized_values(nkv in 1usize..3, group in 1usize..4,
                hd in prop::sample::select(vec![2usize, 8, 16, 20, 32, 48, 64]), past in 0usize..40,
                tokens in prop::sample::select(vec![1usize, 2, 3, 9, 20]),
                window in proptest::option::of(1usize..30), rotate in any::<bool>(), seed in any::<u64>()) {
            let n_heads = nkv * group;
            let mut s = seed;
            let mut rnd = || crate::test_util::lcg(&mut s);
            let total = past + tokens;
            let k: Vec<f32> = (0..total * nkv * hd).map(|_| rnd()).collect();
            let v: Vec<f32> = (0..total * nkv * hd).map(|_| rnd()).collect();
            let q: Vec<f32> = (0..tokens * n_heads * hd).map(|_| rnd()).collect();
            let mut plain = KvCache::new(nkv, hd, total);
            plain.write(0, &k, &v);
            let want = attention_reference(&q, &plain, n_heads, past, 0.7, window);
            for dtype in KvDtype::ALL {
                // 20 is a Paley size (dense inverse); 2 and 48 have no Hadamard rotation here.
                let rot = rotate && ![2usize, 48].contains(&hd);
                let spec = KvCacheSpec { dtype, rotation_seed: rot.then_some(seed) };
                let mut c = KvCache::with_spec(nkv, hd, total, spec).unwrap();
                // Written in two calls, as a prompt then decode steps.
                let w = nkv * hd;
                c.write(0, &k[..past * w], &v[..past * w]);
                c.write(past, &k[past * w..], &v[past * w..]);
                let r = attention_reference(&q, &c, n_heads, past, 0.7, window);
                let deq = c.dequantized();
                let r_deq = attention_reference(&q, &deq, n_heads, past, 0.7, window);
                prop_assert!(rel_l2(&r_deq, &r) < 1e-6);
                for simd in [true, false] {
                    let mut out = vec![0f32; q.len()];
                    attention_impl(&q, &c, n_heads, past, 0.7, window, &mut out, simd);
                    let e = rel_l2(&out, &r);
                    prop_assert!(e < 1e-5, "{} simd {}: {:.2e} vs its dequantized values", spec.name(), simd, e);
                    let mut out_deq = vec![0f32; q.len()];
                    attention_impl(&q, &deq, n_heads, past, 0.7, window, &mut out_deq, simd);
                    prop_assert!(rel_l2(&out, &out_deq) < 1e-5);
                    let e = rel_l2(&out, &want);
                    prop_assert!(e < bound_vs_f32(dtype), "{} simd {}: {:.2e} vs the f32 cache", spec.name(), simd, e);
                }
            }
        }
    }

    /// With an f32 cache, the rotation changes nothing but rounding (1e-5 relative), in decode
    /// and prefill; and it does change what is stored.
    #[test]
    fn rotation_keeps_f32_attention() {
        let (nkv, group, hd, total) = (2, 2, 64, 40);
        let mut s = 3u64;
        let mut rnd = || crate::test_util::lcg(&mut s);
        let k: Vec<f32> = (0..total * nkv * hd).map(|_| rnd()).collect();
        let v: Vec<f32> = (0..total * nkv * hd).map(|_| rnd()).collect();
        let mut plain = KvCache::new(nkv, hd, total);
        plain.write(0, &k, &v);
        let spec = KvCacheSpec {
            dtype: KvDtype::F32,
            rotation_seed: Some(11),
        };
        let mut rot = KvCache::with_spec(nkv, hd, total, spec).unwrap();
        rot.write(0, &k, &v);
        let mut row = vec![0f32; hd];
        rot.key_row(0, 0, &mut row);
        assert!(rel_l2(&row, &k[..hd]) > 0.1, "keys were not rotated");
        for tokens in [1usize, 24] {
            let q: Vec<f32> = (0..tokens * nkv * group * hd).map(|_| rnd()).collect();
            let past = total - tokens;
            let (mut a, mut b) = (vec![0f32; q.len()], vec![0f32; q.len()]);
            attention(&q, &plain, nkv * group, past, 0.125, None, &mut a);
            attention(&q, &rot, nkv * group, past, 0.125, None, &mut b);
            let e = rel_l2(&b, &a);
            assert!(
                e < 1e-5,
                "{tokens} tokens: rotation changed the output by {e:.2e}"
            );
        }
    }

    /// Memory: bytes per token per layer as documented in kv.rs, and what a cache holds.
    #[test]
    fn bytes_per_token() {
        let per = |d| KvCacheSpec::new(d).bytes_per_token(1, 256);
        assert_eq!(
            KvDtype::ALL.map(per),
            [2048, 1024, 520, 288, 520],
            "f32, f16, q8, q4, fp8 at head_dim 256"
        );
        let c = KvCache::with_spec(2, 16, 10, KvCacheSpec::new(KvDtype::Q4)).unwrap();
        assert_eq!(
            c.bytes(),
            10 * KvCacheSpec::new(KvDtype::Q4).bytes_per_token(2, 16)
        );
    }

    /// Decode attention speed per cache type at Gemma-3-270M's shape (1 KV head, 4 query heads,
    /// head_dim 256) over 4096 cached positions: one token, one thread. Timing only:
    /// `cargo test --release -p lowbit-cpu --lib decode_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn decode_speed() {
        let (nkv, group, hd, ctx) = (1, 4, 256, 4096);
        let mut s = 1u64;
        let k: Vec<f32> = (0..ctx * nkv * hd)
            .map(|_| crate::test_util::lcg(&mut s))
            .collect();
        let q: Vec<f32> = (0..nkv * group * hd)
            .map(|_| crate::test_util::lcg(&mut s))
            .collect();
        for rot in [None, Some(0)] {
            for dtype in KvDtype::ALL {
                let spec = KvCacheSpec {
                    dtype,
                    rotation_seed: rot,
                };
                let mut c = KvCache::with_spec(nkv, hd, ctx, spec).unwrap();
                c.write(0, &k, &k);
                let mut out = vec![0f32; q.len()];
                for simd in [true, false] {
                    // The best of 7 batches of 8: the least disturbed by other processes.
                    let us = (0..7)
                        .map(|_| {
                            let t = std::time::Instant::now();
                            for _ in 0..8 {
                                attention_impl(
                                    &q,
                                    &c,
                                    nkv * group,
                                    ctx - 1,
                                    0.06,
                                    None,
                                    &mut out,
                                    simd,
                                );
                            }
                            t.elapsed().as_secs_f64() / 8.0 * 1e6
                        })
                        .fold(f64::INFINITY, f64::min);
                    println!(
                        "{:8} simd {simd:5}: {us:8.1} µs per token ({:.1} GB/s of cache)",
                        spec.name(),
                        c.bytes() as f64 / us / 1e3
                    );
                }
            }
        }
    }

    /// Single query attending to two keys: compare with a hand computation.
    #[test]
    fn two_keys_by_hand() {
        let mut c = KvCache::new(1, 2, 4);
        c.write(0, &[1.0, 0.0, 0.0, 1.0], &[1.0, 2.0, 3.0, 4.0]);
        let q = [2.0f32, 0.0];
        let mut out = [0f32; 2];
        attention(&q, &c, 1, 1, 1.0, None, &mut out);
        let (a, b) = (2f32.exp(), 1.0f32);
        let p = a / (a + b);
        assert!((out[0] - (p * 1.0 + (1.0 - p) * 3.0)).abs() < 1e-6);
        // With a window of 1 only the key at its own position is seen.
        attention(&q, &c, 1, 1, 1.0, Some(1), &mut out);
        assert!((out[0] - 3.0).abs() < 1e-6 && (out[1] - 4.0).abs() < 1e-6);
    }
}
