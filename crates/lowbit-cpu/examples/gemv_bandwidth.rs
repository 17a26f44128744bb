//! Effective weight bandwidth of the decode GEMV (one token) per weight type, against a plain
//! memory read of the same number of bytes.
//!
//! `cargo run --release -p lowbit-cpu --example gemv_bandwidth [rows cols [copies]]` (default:
//! Gemma-3's 262144 × 640 output matrix and a 4096 × 4096 matrix). With `copies` > 1 each timed
//! pass cycles through that many copies of the matrix, so they stream from DRAM instead of the
//! last-level cache (and the plain read covers the same total). Other arguments are type names
//! (`q4_0 lb_nvfp4 ...`) to time only those. Each line gives the fused (decode) kernel's
//! effective weight bandwidth and its share of the plain read.

use std::time::Instant;

use lowbit_cpu::{matmul, matmul_f32, WeightMatrix};
use lowbit_formats::GgmlType;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let copies = args.get(2).copied().unwrap_or(1).max(1);
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a.parse::<usize>().is_err())
        .map(|a| a.to_ascii_lowercase())
        .collect();
    let shapes: Vec<(usize, usize)> = if args.len() >= 2 {
        vec![(args[0], args[1])]
    } else {
        vec![(262144, 640), (4096, 4096)]
    };
    for (rows, cols) in shapes {
        // Plain read of a buffer as large as the Q8_0 matrix: sum of u64 words.
        let bytes = GgmlType::Q8_0.byte_len(cols).unwrap() * rows * copies;
        let buf: Vec<u64> = (0..bytes / 8).map(|i| i as u64).collect();
        let t = time(5, || {
            use rayon::prelude::*;
            let s: u64 = buf
                .par_chunks(1 << 16)
                .map(|c| c.iter().fold(0u64, |a, b| a ^ b))
                .reduce(|| 0, |a, b| a ^ b);
            std::hint::black_box(s);
        });
        let plain = bytes as f64 / t / 1e9;
        println!(
            "{rows}x{cols}: plain read {:.1} MB: {plain:.1} GB/s",
            bytes as f64 / 1e6
        );
        drop(buf);
        for t in [
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q5_0,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
            GgmlType::IQ4_NL,
            GgmlType::MXFP4,
            GgmlType::LB_NVFP4,
        ] {
            if cols % t.block_size() != 0
                || !(only.is_empty() || only.iter().any(|o| o == t.name()))
            {
                continue;
            }
            let rb = t.byte_len(cols).unwrap();
            // Random-ish bytes with small f16 scales: speed does not depend on the values.
            let mut data: Vec<u8> = (0..rows * rb * copies)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 & 0x77)
                .collect();
            if t == GgmlType::MXFP4 {
                data.iter_mut().step_by(17).for_each(|b| *b = 120);
            }
            if t == GgmlType::LB_NVFP4 {
                // A global scale of 1 at the start of every block.
                for b in data.chunks_exact_mut(rb / (cols / t.block_size())) {
                    b[..4].copy_from_slice(&1f32.to_le_bytes());
                }
            }
            let mats: Vec<WeightMatrix> = data
                .chunks_exact(rows * rb)
                .map(|d| WeightMatrix {
                    dtype: t,
                    rows,
                    cols,
                    data: d,
                })
                .collect();
            let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut y = vec![0f32; rows];
            let tq = time(7, || mats.iter().for_each(|&w| matmul(&x, w, &mut y)));
            let tf = time(3, || mats.iter().for_each(|&w| matmul_f32(&x, w, &mut y)));
            let mb = (rows * rb * copies) as f64;
            println!(
                "  {:8} {:7.1} MB  fused {:6.2} ms {:5.1} GB/s ({:3.0}%)   f32 path {:6.2} ms {:5.1} GB/s",
                t.name(),
                mb / 1e6,
                tq * 1e3,
                mb / tq / 1e9,
                100.0 * mb / tq / 1e9 / plain,
                tf * 1e3,
                mb / tf / 1e9
            );
        }
    }
}
