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
        KvCache { n_kv_heads, head_dim, capacity, k: vec![0.0; n], v: vec![0.0; n] }
    }

    /// Store keys and values (`tokens × n_kv_heads × head_dim`) for positions `pos0..`.
    pub fn write(&mut self, pos0: usize, k: &[f32], v: &[f32]) {
        let w = self.n_kv_heads * self.head_dim;
        let tokens = k.len() / w;
        assert!(pos0 + tokens <= self.capacity, "KV cache overflow: {} > {}", pos0 + tokens, self.capacity);
        self.k[pos0 * w..(pos0 + tokens) * w].copy_from_slice(k);
        self.v[pos0 * w..(pos0 + tokens) * w].copy_from_slice(v);
    }
}

/// Attention of `q` (`tokens × n_heads × head_dim`, positions `pos0..pos0+tokens`) over the cache
/// positions `0..pos0+tokens` (already written). Query head h uses KV head `h / (n_heads/n_kv)`.
/// `window`: if set, position p sees only keys j with `p - j < window` (sliding-window layers).
/// Returns `tokens × n_heads × head_dim`.
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
    let kw = nkv * hd;
    out.par_chunks_mut(hd).enumerate().for_each_init(
        || Vec::with_capacity(pos0 + tokens),
        |scores, (idx, o)| {
            let t = idx / n_heads;
            let h = idx % n_heads;
            let kvh = h / group;
            let p = pos0 + t;
            let lo = match window {
                Some(w) if p + 1 > w => p + 1 - w,
                _ => 0,
            };
            let qv = &q[idx * hd..(idx + 1) * hd];
            scores.clear();
            for j in lo..=p {
                let kv = &cache.k[j * kw + kvh * hd..j * kw + (kvh + 1) * hd];
                scores.push(dot(qv, kv) * scale);
            }
            crate::ops::softmax(scores);
            o.iter_mut().for_each(|x| *x = 0.0);
            for (j, &s) in (lo..=p).zip(scores.iter()) {
                let vv = &cache.v[j * kw + kvh * hd..j * kw + (kvh + 1) * hd];
                for (x, y) in o.iter_mut().zip(vv) {
                    *x += s * y;
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

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
