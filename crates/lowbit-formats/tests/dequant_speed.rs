//! Dequantization throughput, in GB/s of f32 output on one core.
//!
//! Run with: cargo test --release -p lowbit-formats --test dequant_speed -- --ignored --nocapture

use lowbit_formats::{dequantize_row, row_bytes, GgmlType};
use std::time::{Duration, Instant};

/// Byte offsets of f16 scales per block, set to a normal value so timing never hits
/// subnormal or NaN arithmetic.
fn f16_scale_offsets(ty: GgmlType) -> &'static [usize] {
    use GgmlType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 | IQ4_NL => &[0],
        Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
        Q2_K => &[80, 82],
        Q3_K => &[108],
        Q6_K => &[208],
        TQ1_0 => &[52],
        TQ2_0 => &[64],
        _ => &[],
    }
}

fn test_data(ty: GgmlType, elements: usize) -> Vec<u8> {
    let n = row_bytes(ty, elements).unwrap();
    // xorshift: deterministic pseudo-random bytes.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut bytes: Vec<u8> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect();
    let scale = half::f16::from_f32(0.01).to_le_bytes();
    if ty.block_size() > 1 {
        for block in bytes.chunks_exact_mut(ty.type_size()) {
            for &off in f16_scale_offsets(ty) {
                block[off..off + 2].copy_from_slice(&scale);
            }
            if ty == GgmlType::Q8_K {
                block[..4].copy_from_slice(&0.01f32.to_le_bytes());
            }
        }
    } else if ty == GgmlType::F32 {
        for v in bytes.chunks_exact_mut(4) {
            v.copy_from_slice(&1.5f32.to_le_bytes());
        }
    } else {
        for v in bytes.chunks_exact_mut(2) {
            v.copy_from_slice(&[0x00, 0x3C]);
        }
    }
    bytes
}

#[test]
#[ignore]
fn dequant_throughput() {
    use GgmlType::*;
    let cols = 4096;
    let rows = 256; // 1M values: the quantized source fits in L2/L3 like a weight row block
    for ty in [
        F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ4_NL,
        MXFP4, TQ1_0, TQ2_0,
    ] {
        let src = test_data(ty, cols * rows);
        let rb = row_bytes(ty, cols).unwrap();
        let mut row = vec![0f32; cols];
        let mut best = Duration::MAX;
        let mut checksum = 0f32;
        for _ in 0..15 {
            let t = Instant::now();
            for r in 0..rows {
                dequantize_row(ty, &src[r * rb..(r + 1) * rb], &mut row).unwrap();
                checksum += row[r % cols];
            }
            best = best.min(t.elapsed());
        }
        let gbs = (cols * rows * 4) as f64 / best.as_secs_f64() / 1e9;
        println!(
            "{:>7}: {gbs:6.2} GB/s f32 out ({:.2} ns/value) [{checksum:e}]",
            ty.name(),
            best.as_secs_f64() * 1e9 / (cols * rows) as f64
        );
    }
}
