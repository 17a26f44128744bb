//! A/B of the GEMV software prefetch distance while streaming a matrix from DRAM (many copies
//! cycled), alternating the settings so that load from other processes hits all alike.
//! `cargo run --release -p lowbit-cpu --example gemv_prefetch_ab [rows cols copies [types...]]`
//! (default 4096 × 4096, 64 copies, q8_0 and q4_0).

use std::time::Instant;

use lowbit_cpu::{matmul, quant_dot, WeightMatrix};
use lowbit_formats::GgmlType;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let nums: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let (rows, cols, copies) = match nums[..] {
        [r, c, k, ..] => (r, c, k),
        _ => (4096, 4096, 64),
    };
    let names: Vec<&str> = args
        .iter()
        .filter(|a| a.parse::<usize>().is_err())
        .map(|a| a.as_str())
        .collect();
    let types: Vec<GgmlType> = [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ]
    .into_iter()
    .filter(|t| {
        if names.is_empty() {
            matches!(t, GgmlType::Q8_0 | GgmlType::Q4_0)
        } else {
            names.contains(&t.name())
        }
    })
    .collect();
    // (distance, whole group at once)
    let dists = [
        (0usize, false),
        (4096, false),
        (16384, false),
        (4096, true),
        (16384, true),
    ];
    for t in types {
        let rb = t.byte_len(cols).unwrap();
        let data: Vec<u8> = (0..rows * rb * copies)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 & 0x77)
            .collect();
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
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); dists.len()];
        for _ in 0..7 {
            for (i, &(d, g)) in dists.iter().enumerate() {
                quant_dot::set_prefetch_bytes(d);
                quant_dot::set_prefetch_group(Some(g));
                let s = Instant::now();
                mats.iter().for_each(|&w| matmul(&x, w, &mut y));
                times[i].push(s.elapsed().as_secs_f64());
            }
        }
        quant_dot::set_prefetch_bytes(4096);
        quant_dot::set_prefetch_group(None);
        for (i, (d, g)) in dists.iter().enumerate() {
            let v = &mut times[i];
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            println!(
                "{:6} prefetch {d:6} B {}: median {:5.1} GB/s (best {:5.1})",
                t.name(),
                if *g { "group " } else { "inline" },
                data.len() as f64 / v[v.len() / 2] / 1e9,
                data.len() as f64 / v[0] / 1e9
            );
        }
    }
}
