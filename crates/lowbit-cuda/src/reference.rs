//! Scalar CPU references (f64 accumulation) for the GPU kernels, used by the tests.

use half::f16;
use lowbit_formats::GgmlType;

use crate::WeightFormat;

/// Small deterministic generator (xorshift64*) so tests need no extra dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e3779b97f4a7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545f4914f6cdd1d)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
}

/// A random matrix in `format` as (bytes, f16 scales, dequantized f32 values [rows][cols]).
pub fn random_matrix(
    format: WeightFormat,
    rows: usize,
    cols: usize,
    rng: &mut Rng,
) -> (Vec<u8>, Option<Vec<u16>>, Vec<f32>) {
    match format {
        // The tiled format is uploaded in the row-major layout and repacked by the backend.
        WeightFormat::Int4G128 | WeightFormat::Int4G128Tiled => {
            let codes: Vec<u8> = (0..rows * cols)
                .map(|_| (rng.next_u64() & 15) as u8)
                .collect();
            let words = lowbit_formats::pack::pack(&codes, 4).expect("4-bit codes pack");
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            let scales: Vec<u16> = (0..rows * cols / 128)
                .map(|_| f16::from_f32(0.01 + 0.01 * rng.uniform()).to_bits())
                .collect();
            let vals = codes
                .iter()
                .enumerate()
                .map(|(i, &c)| (c as f32 - 8.0) * f16::from_bits(scales[i / 128]).to_f32())
                .collect();
            (bytes, Some(scales), vals)
        }
        WeightFormat::Bf16 => {
            let v = rng.vec(rows * cols, 0.1);
            let bits: Vec<u16> = v
                .iter()
                .map(|&x| half::bf16::from_f32(x).to_bits())
                .collect();
            let vals = bits
                .iter()
                .map(|&b| half::bf16::from_bits(b).to_f32())
                .collect();
            (
                bits.iter().flat_map(|b| b.to_le_bytes()).collect(),
                None,
                vals,
            )
        }
        WeightFormat::Nvfp4 | WeightFormat::Mxfp4 => {
            // Random codes under sane scales, decoded by lowbit-formats (the CPU reference).
            let (ty, block, vals_per) = if format == WeightFormat::Nvfp4 {
                (GgmlType::LB_NVFP4, 76, 128)
            } else {
                (GgmlType::MXFP4, 17, 32)
            };
            let nblocks = rows * cols / vals_per;
            let mut bytes = vec![0u8; nblocks * block];
            for b in bytes.chunks_exact_mut(block) {
                for v in b.iter_mut() {
                    *v = rng.next_u64() as u8;
                }
                if format == WeightFormat::Nvfp4 {
                    let g = 0.5 + (rng.next_u64() % 4) as f32;
                    b[..4].copy_from_slice(&g.to_le_bytes());
                    for s in &mut b[4..12] {
                        *s = 0x18 + (rng.next_u64() % 40) as u8; // positive, finite
                    }
                } else {
                    b[0] = 118 + (rng.next_u64() % 6) as u8;
                }
            }
            let mut vals = vec![0f32; rows * cols];
            lowbit_formats::dequant::dequantize_rows(ty, &bytes, cols, &mut vals)
                .expect("dequantize");
            (bytes, None, vals)
        }
        WeightFormat::F32 => {
            let v = rng.vec(rows * cols, 0.1);
            (v.iter().flat_map(|x| x.to_le_bytes()).collect(), None, v)
        }
        WeightFormat::Q4K | WeightFormat::Q8_0 | WeightFormat::Q6K => {
            let ty = match format {
                WeightFormat::Q4K => GgmlType::Q4_K,
                WeightFormat::Q6K => GgmlType::Q6_K,
                _ => GgmlType::Q8_0,
            };
            let src = rng.vec(rows * cols, 0.1);
            let row_bytes = ty.byte_len(cols).expect("block-aligned cols");
            let mut bytes = vec![0u8; row_bytes * rows];
            lowbit_formats::quant::quantize_rows(ty, &src, cols, &mut bytes).expect("quantize");
            let mut vals = vec![0f32; rows * cols];
            lowbit_formats::dequant::dequantize_rows(ty, &bytes, cols, &mut vals)
                .expect("dequantize");
            (bytes, None, vals)
        }
    }
}

/// y[b][n] = sum_k w[n][k] x[b][k] in f64.
pub fn gemv(w: &[f32], rows: usize, cols: usize, x: &[f32], batch: usize) -> Vec<f64> {
    let mut y = vec![0f64; batch * rows];
    for b in 0..batch {
        for n in 0..rows {
            let wr = &w[n * cols..][..cols];
            let xb = &x[b * cols..][..cols];
            y[b * rows + n] = wr.iter().zip(xb).map(|(&a, &c)| a as f64 * c as f64).sum();
        }
    }
    y
}

pub fn rmsnorm(x: &[f32], w: &[f32], n: usize, eps: f32) -> Vec<f64> {
    x.chunks(n)
        .flat_map(|r| {
            let ss: f64 = r.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / n as f64;
            let inv = 1.0 / (ss + eps as f64).sqrt();
            r.iter()
                .zip(w)
                .map(move |(&v, &g)| v as f64 * inv * g as f64)
                .collect::<Vec<_>>()
        })
        .collect()
}

pub fn rope(v: &[f32], n_heads: usize, hd: usize, pos: usize, theta: f32, neox: bool) -> Vec<f64> {
    let mut out: Vec<f64> = v.iter().map(|&x| x as f64).collect();
    let half = hd / 2;
    for h in 0..n_heads {
        for i in 0..half {
            let ang = pos as f64 * (theta as f64).powf(-2.0 * i as f64 / hd as f64);
            let (a, b) = if neox {
                (i, i + half)
            } else {
                (2 * i, 2 * i + 1)
            };
            let (x0, x1) = (v[h * hd + a] as f64, v[h * hd + b] as f64);
            out[h * hd + a] = x0 * ang.cos() - x1 * ang.sin();
            out[h * hd + b] = x0 * ang.sin() + x1 * ang.cos();
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
/// Softmax attention of q [n_heads][hd] over positions 0..seq of caches [n_kv][max_seq][hd]
/// (values given as f32, i.e. already rounded to bf16).
pub fn attention(
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    max_seq: usize,
    seq: usize,
) -> Vec<f64> {
    let mut out = vec![0f64; n_heads * hd];
    let scale = 1.0 / (hd as f64).sqrt();
    for h in 0..n_heads {
        let kvh = h / (n_heads / n_kv);
        let qh = &q[h * hd..][..hd];
        let s: Vec<f64> = (0..seq)
            .map(|p| {
                let k = &kc[(kvh * max_seq + p) * hd..][..hd];
                qh.iter()
                    .zip(k)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>()
                    * scale
            })
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|&x| (x - m).exp()).collect();
        let z: f64 = e.iter().sum();
        for (p, &ep) in e.iter().enumerate() {
            let v = &vc[(kvh * max_seq + p) * hd..][..hd];
            for d in 0..hd {
                out[h * hd + d] += ep / z * v[d] as f64;
            }
        }
    }
    out
}

/// ||got - want|| / ||want||; NaN in `got` gives infinity.
pub fn rel_l2(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let mut num = 0f64;
    let mut den = 0f64;
    for (&g, &w) in got.iter().zip(want) {
        if !g.is_finite() {
            return f64::INFINITY;
        }
        num += (g as f64 - w).powi(2);
        den += w * w;
    }
    (num / den.max(1e-300)).sqrt()
}
