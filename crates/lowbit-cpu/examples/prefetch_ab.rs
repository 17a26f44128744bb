//! A/B of the GEMV software prefetch distance on Gemma-3's 262144 × 640 Q8_0 output matrix,
//! alternating settings so that load from other processes hits both alike.
//! `cargo run --release -p lowbit-cpu --example prefetch_ab`

use std::time::Instant;

use lowbit_cpu::{matmul, quant_dot, WeightMatrix};
use lowbit_formats::GgmlType;

fn main() {
    let (rows, cols) = (262144, 640);
    let t = GgmlType::Q8_0;
    let rb = t.byte_len(cols).unwrap();
    let data: Vec<u8> = (0..rows * rb)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 & 0x77)
        .collect();
    let w = WeightMatrix {
        dtype: t,
        rows,
        cols,
        data: &data,
    };
    let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut y = vec![0f32; rows];
    let dists = [0usize, 1024, 2048, 4096, 8192];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); dists.len()];
    for _ in 0..15 {
        for (i, &d) in dists.iter().enumerate() {
            quant_dot::set_prefetch_bytes(d);
            let s = Instant::now();
            matmul(&x, w, &mut y);
            times[i].push(s.elapsed().as_secs_f64());
        }
    }
    for (i, d) in dists.iter().enumerate() {
        let v = &mut times[i];
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let med = v[v.len() / 2];
        println!(
            "prefetch {d:5} B: median {:.2} ms  {:.1} GB/s  (best {:.1} GB/s)",
            med * 1e3,
            data.len() as f64 / med / 1e9,
            data.len() as f64 / v[0] / 1e9
        );
    }
}
