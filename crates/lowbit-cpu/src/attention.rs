//! Causal multi-head attention with grouped KV heads over an f32 KV cache.

use rayon::prelude::*;

use crate::matmul::dot;

/// Per-layer KV cache: `capacity` positions of `n_kv_heads × head_dim` keys and values.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub capacity: usize,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

impl KvCache {
    pub fn new(n_kv_heads: usize, head_dim: usize, capacity: usize) -> Self {
        let n = n_kv_heads * head_dim * capacity;
        KvCache {
            n_kv_heads,
            head_dim,
            capacity,
            k: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    /// Store keys and values (`tokens × n_kv_heads × head_dim`) for positions `pos0..`.
    pub fn write(&mut self, pos0: usize, k: &[f32], v: &[f32]) {
        let w = self.n_kv_heads * self.head_dim;
        let tokens = k.len() / w;
        assert!(
            pos0 + tokens <= self.capacity,
            "KV cache overflow: {} > {}",
            pos0 + tokens,
            self.capacity
        );
        self.k[pos0 * w..(pos0 + tokens) * w].copy_from_slice(k);
        self.v[pos0 * w..(pos0 + tokens) * w].copy_from_slice(v);
    }
}

/// Attention of `q` (`tokens × n_heads × head_dim`, positions `pos0..pos0+tokens`) over the cache
/// positions `0..pos0+tokens` (already written). Query head h uses KV head `h / (n_heads/n_kv)`.
/// `window`: if set, position p sees only keys j with `p - j < window` (sliding-window layers).
/// Writes `tokens × n_heads × head_dim` into `out`.
///
/// Work is split by (token, KV head): the query heads sharing a KV head are processed together,
/// so each key and value row is read once per group.
pub fn attention(
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
    let tokens = q.len() / (n_heads * hd);
    if tokens >= PREFILL_TILE / 2 {
        prefill(q, cache, n_heads, pos0, scale, window, out);
        return;
    }
    let avx2 = crate::simd::has_avx2_fma();
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
            if avx2 {
                // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
                unsafe { attend_avx2(&job, scores, o) };
                return;
            }
            let _ = avx2;
            attend(&job, scores, o)
        },
    );
}

/// Query tokens per item of the prefill path.
const PREFILL_TILE: usize = 16;

/// Prefill: per (tile of 16 query tokens, KV head), the scores of all the tile's query heads
/// against the keys any of them sees are one matrix product (`gemm`), masked (causal and
/// window), soft-maxed, and multiplied by the values in a second product. Each key and value row
/// is then read once per tile instead of once per token.
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
            let mut sc = vec![0f32; m * len];
            let k0 = cache.k[lo * kw + kvh * hd..].as_ptr();
            let v0 = cache.v[lo * kw + kvh * hd..].as_ptr();
            // SAFETY: dst is m × len (row stride len); lhs m × hd (row stride hd); rhs hd × len
            // read from key rows lo..hi of the cache (column stride kw): all in bounds since
            // hi ≤ capacity (the cache was written up to pos0 + tokens).
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
                    kw as isize,
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
            // stride kw), in bounds as above.
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
                    kw as isize,
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
    attend(job, scores, o)
}

/// Attention of the query heads of KV head `kvh` at token `t`; `o` is `group × head_dim`.
#[inline(always)]
fn attend(job: &Job<'_>, scores: &mut Vec<f32>, o: &mut [f32]) {
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
    let kw = nkv * hd;
    let p = pos0 + t;
    let lo = match window {
        Some(w) if p + 1 > w => p + 1 - w,
        _ => 0,
    };
    let len = p + 1 - lo;
    // scores[g * len + j]: query head (kvh*group + g) against key lo + j.
    scores.clear();
    scores.resize(group * len, 0.0);
    let qbase = (t * n_heads + kvh * group) * hd;
    for j in 0..len {
        let kv = &cache.k[(lo + j) * kw + kvh * hd..(lo + j) * kw + (kvh + 1) * hd];
        for g in 0..group {
            scores[g * len + j] = dot(&q[qbase + g * hd..qbase + (g + 1) * hd], kv) * scale;
        }
    }
    for g in 0..group {
        softmax_inline(&mut scores[g * len..(g + 1) * len]);
    }
    o.iter_mut().for_each(|x| *x = 0.0);
    for j in 0..len {
        let vv = &cache.v[(lo + j) * kw + kvh * hd..(lo + j) * kw + (kvh + 1) * hd];
        for g in 0..group {
            let s = scores[g * len + j];
            for (x, y) in o[g * hd..(g + 1) * hd].iter_mut().zip(vv) {
                *x += s * y;
            }
        }
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

/// Plain reference: per query head, f64 scores and softmax.
pub fn attention_reference(
    q: &[f32],
    cache: &KvCache,
    n_heads: usize,
    pos0: usize,
    scale: f32,
    window: Option<usize>,
) -> Vec<f32> {
    let hd = cache.head_dim;
    let kw = cache.n_kv_heads * hd;
    let group = n_heads / cache.n_kv_heads;
    let tokens = q.len() / (n_heads * hd);
    let mut out = vec![0f32; q.len()];
    for t in 0..tokens {
        let p = pos0 + t;
        let lo = window.map_or(0, |w| (p + 1).saturating_sub(w));
        for h in 0..n_heads {
            let kvh = h / group;
            let qv = &q[(t * n_heads + h) * hd..(t * n_heads + h + 1) * hd];
            let s: Vec<f64> = (lo..=p)
                .map(|j| {
                    (0..hd)
                        .map(|d| qv[d] as f64 * cache.k[j * kw + kvh * hd + d] as f64)
                        .sum::<f64>()
                        * scale as f64
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..hd {
                let acc: f64 = (lo..=p)
                    .zip(&e)
                    .map(|(j, w)| w / z * cache.v[j * kw + kvh * hd + d] as f64)
                    .sum();
                out[(t * n_heads + h) * hd + d] = acc as f32;
            }
        }
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
