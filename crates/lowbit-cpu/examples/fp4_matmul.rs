//! Prefill and decode time of `matmul` for Gemma-3-270M-sized matrices in the 4-bit weight types
//! (Q4_0, MXFP4, lowbit's LB_NVFP4, and Q4_K / Q5_0 as llama.cpp's Q4_K_M has them): `cargo run --release -p lowbit-cpu --example fp4_matmul
//! [TOKENS [ROWS COLS]]` (default 512 tokens, Gemma's 2048×640 and 640×2048; decode is always 1
//! token: give a matrix larger than the caches to see memory bandwidth). Use with
//! `RAYON_NUM_THREADS=2`.

use std::time::Instant;

use lowbit_cpu::{matmul, WeightMatrix};
use lowbit_formats::GgmlType;

fn main() {
    let tokens: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    let args: Vec<usize> = std::env::args()
        .skip(2)
        .filter_map(|s| s.parse().ok())
        .collect();
    let shapes = match args[..] {
        [r, c] => vec![(r, c)],
        _ => vec![(2048, 640), (640, 2048)],
    };
    let mut seed = 1u64;
    let mut rnd = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    for (rows, cols) in shapes {
        let vals: Vec<f32> = (0..rows * cols).map(|_| rnd() * 0.05).collect();
        let x: Vec<f32> = (0..tokens * cols).map(|_| rnd()).collect();
        for t in [
            GgmlType::Q4_0,
            GgmlType::MXFP4,
            GgmlType::LB_NVFP4,
            GgmlType::Q4_K,
            GgmlType::Q5_0,
        ] {
            if cols % t.block_size() != 0 {
                continue;
            }
            let data = if t == GgmlType::LB_NVFP4 {
                // Random codes and E4M3 scales around 1, global scale 1000.
                let codes: Vec<u8> = (0..rows * cols / 2)
                    .map(|_| (rnd() * 127.0) as i8 as u8)
                    .collect();
                let scales: Vec<u8> = (0..rows * cols / 16)
                    .map(|_| 0x30 + ((rnd() + 1.0) * 8.0) as u8)
                    .collect();
                lowbit_formats::lb_nvfp4::pack(&codes, &scales, 1000.0, rows, cols).unwrap()
            } else {
                let mut d = vec![0u8; t.byte_len(rows * cols).unwrap()];
                lowbit_formats::quantize_rows(t, &vals, cols, &mut d).unwrap();
                d
            };
            let w = WeightMatrix {
                dtype: t,
                rows,
                cols,
                data: &data,
            };
            let mut y = vec![0f32; tokens * rows];
            matmul(&x, w, &mut y);
            let reps = if rows * cols > 1 << 24 { 1 } else { 5 };
            let s = Instant::now();
            for _ in 0..reps {
                matmul(&x, w, &mut y);
            }
            let pp = s.elapsed().as_secs_f64() / reps as f64;
            let mut y1 = vec![0f32; rows];
            let reps1 = 200;
            let s = Instant::now();
            for _ in 0..reps1 {
                matmul(&x[..cols], w, &mut y1);
            }
            let tg = s.elapsed().as_secs_f64() / reps1 as f64;
            println!(
                "{rows:5}x{cols:<5} {:9} prefill {tokens} tok {:8.2} ms ({:6.1} GMAC/s)  decode {:7.1} us ({:5.1} GB/s)",
                t.name(),
                pp * 1e3,
                (rows * cols * tokens) as f64 / pp / 1e9,
                tg * 1e6,
                data.len() as f64 / tg / 1e9
            );
        }
    }
}
