//! GEMV on a 4096 × 4096 INT4 g128 matrix (lowbit's `int4_g128_sym`, [`lowbit_cpu::int4`])
//! streamed from DRAM: `COPIES` copies of the matrix (1 GiB in all by default, more than the
//! last-level cache) are multiplied in turn, so every product reads its weights from memory.
//! Compared with a plain read of a buffer of the same size.
//!
//! `cargo run --release -p lowbit-cpu --example int4_bandwidth [COPIES]`

use std::time::Instant;

use lowbit_cpu::int4::{matmul_int4, Int4Matrix};
use rayon::prelude::*;

fn main() {
    let (rows, cols, group) = (4096usize, 4096usize, 128usize);
    let words = rows * cols / 8;
    let nscales = rows * cols / group;
    let bytes_one = words * 4 + nscales * 2;
    let copies: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or((1usize << 30).div_ceil(bytes_one));
    let mut s = 0x1234_5678u64;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 32) as u32
    };
    let mats: Vec<(Vec<u32>, Vec<half::f16>)> = (0..copies)
        .map(|_| {
            let codes: Vec<u32> = (0..words).map(|_| next()).collect();
            let scales: Vec<half::f16> = (0..nscales)
                .map(|i| half::f16::from_f32(0.01 + (i % 7) as f32 * 1e-3))
                .collect();
            (codes, scales)
        })
        .collect();
    let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut y = vec![0f32; rows];
    let total = (bytes_one * copies) as f64;
    let mut gemv = Vec::new();
    let mut plain = Vec::new();
    // Plain read: the same bytes, 512-bit loads where the compiler vectorizes the xor fold.
    let flat: Vec<u64> = (0..(bytes_one * copies) / 8).map(|i| i as u64).collect();
    for _ in 0..5 {
        let t = Instant::now();
        for (codes, scales) in &mats {
            let w = Int4Matrix {
                rows,
                cols,
                group,
                codes,
                scales,
            };
            matmul_int4(&x, w, &mut y);
        }
        gemv.push(total / t.elapsed().as_secs_f64() / 1e9);
        let t = Instant::now();
        let r: u64 = flat
            .par_chunks(1 << 16)
            .map(|c| c.iter().fold(0u64, |a, b| a ^ b))
            .reduce(|| 0, |a, b| a ^ b);
        std::hint::black_box(r);
        plain.push(total / t.elapsed().as_secs_f64() / 1e9);
    }
    gemv.sort_by(|a, b| a.partial_cmp(b).unwrap());
    plain.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (g, p) = (gemv[2], plain[2]);
    println!(
        "{copies} copies of {rows}x{cols} INT4 g{group} ({:.1} MB each, {:.0} MB in all), {} threads",
        bytes_one as f64 / 1e6,
        total / 1e6,
        rayon::current_num_threads()
    );
    println!("  GEMV (1 token): {g:.1} GB/s of weights (median of 5)");
    println!("  plain read:     {p:.1} GB/s (median of 5)");
    println!("  ratio:          {:.0}%", 100.0 * g / p);
}
