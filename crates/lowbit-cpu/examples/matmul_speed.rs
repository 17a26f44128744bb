//! Quick timing of `matmul` on Gemma-3-270M-like shapes: `cargo run --release -p lowbit-cpu --example matmul_speed`.
use std::time::Instant;

use lowbit_cpu::{matmul, WeightMatrix};
use lowbit_formats::GgmlType;

fn main() {
    let tokens: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(512);
    for (ty, rows, cols) in [
        (GgmlType::Q8_0, 262144usize, 640usize),
        (GgmlType::Q4_K, 640, 2048),
        (GgmlType::Q6_K, 640, 2048),
        (GgmlType::Q5_0, 2048, 640),
        (GgmlType::F32, 2048, 640),
    ] {
        let rows = if tokens > 4 && rows == 262144 {
            32768
        } else {
            rows
        };
        let nbytes = ty.byte_len(rows * cols).unwrap();
        // Random bytes with every 2-byte word's exponent tamed so f16 scales are finite.
        let mut s = 0x1234_5678u64;
        let data: Vec<u8> = (0..nbytes)
            .map(|i| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                let b = (s >> 33) as u8;
                if i % 2 == 1 {
                    b & 0x3b
                } else {
                    b
                }
            })
            .collect();
        let x: Vec<f32> = (0..tokens * cols)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let w = WeightMatrix {
            dtype: ty,
            rows,
            cols,
            data: &data,
        };
        let mut y = vec![0f32; tokens * rows];
        matmul(&x, w, &mut y);
        let reps = 3;
        let t = Instant::now();
        for _ in 0..reps {
            matmul(&x, w, &mut y);
        }
        let dt = t.elapsed().as_secs_f64() / reps as f64;
        let gflops = 2.0 * (tokens * rows * cols) as f64 / dt / 1e9;
        println!("{:>5} {rows:>6}x{cols:<5} tokens {tokens:>4}: {:8.2} ms  {gflops:7.1} GFLOP/s  {:6.2} GB/s weights", ty.name(), dt * 1e3, nbytes as f64 / dt / 1e9);
    }
}
