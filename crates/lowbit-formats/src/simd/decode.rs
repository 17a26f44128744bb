//! Decoding of 4-bit codes (`pack.rs` layout, 8 codes per u32 word, lowest nibble first)
//! through a 16-entry value table: `out[k] = table[code(start + k)] * s`, the same single f32
//! multiply per value as the scalar reference in `qtensor.rs`, so results are bit-identical.
//! The table lookup is a register permute: AVX-512 holds all 16 entries in one register,
//! AVX2 permutes two halves of 8 and picks by bit 3 of the code.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

/// Scalar code of value `i`.
#[inline(always)]
fn code(words: &[u32], i: usize) -> usize {
    ((words[i >> 3] >> ((i & 7) * 4)) & 0xF) as usize
}

/// Values before the first word boundary and after the last whole chunk, one at a time.
#[inline(always)]
fn scalar_range(words: &[u32], start: usize, table: &[f32; 16], s: f32, out: &mut [f32]) {
    for (k, v) in out.iter_mut().enumerate() {
        *v = table[code(words, start + k)] * s;
    }
}

/// Split `out` into a head (until `start + k` is word-aligned) and the aligned rest.
#[inline(always)]
fn align_head(start: usize, len: usize) -> usize {
    ((8 - start % 8) % 8).min(len)
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
pub(crate) unsafe fn decode4_avx512(
    words: &[u32],
    start: usize,
    table: &[f32; 16],
    s: f32,
    out: &mut [f32],
) {
    let head = align_head(start, out.len());
    let (h, rest) = out.split_at_mut(head);
    scalar_range(words, start, table, s, h);
    let start = start + head;
    let tv = _mm512_loadu_ps(table.as_ptr());
    let sv = _mm512_set1_ps(s);
    // Lane k takes word k / 8 shifted right by 4 (k % 8).
    let shifts = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
    let nib = _mm512_set1_epi32(0xF);
    let mut chunks = rest.chunks_exact_mut(16);
    let mut w = start / 8;
    for c in &mut chunks {
        let (w0, w1) = (words[w] as i32, words[w + 1] as i32);
        let pair = _mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32(w0), _mm512_set1_epi32(w1));
        let idx = _mm512_and_si512(_mm512_srlv_epi32(pair, shifts), nib);
        let v = _mm512_mul_ps(_mm512_permutexvar_ps(idx, tv), sv);
        _mm512_storeu_ps(c.as_mut_ptr(), v);
        w += 2;
    }
    let tail = chunks.into_remainder();
    scalar_range(words, w * 8, table, s, tail);
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn decode4_avx2(
    words: &[u32],
    start: usize,
    table: &[f32; 16],
    s: f32,
    out: &mut [f32],
) {
    let head = align_head(start, out.len());
    let (h, rest) = out.split_at_mut(head);
    scalar_range(words, start, table, s, h);
    let start = start + head;
    let lo = _mm256_loadu_ps(table.as_ptr());
    let hi = _mm256_loadu_ps(table.as_ptr().add(8));
    let sv = _mm256_set1_ps(s);
    let shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    let nib = _mm256_set1_epi32(0xF);
    let mut chunks = rest.chunks_exact_mut(8);
    let mut w = start / 8;
    for c in &mut chunks {
        let idx = _mm256_and_si256(
            _mm256_srlv_epi32(_mm256_set1_epi32(words[w] as i32), shifts),
            nib,
        );
        // permutevar8x32 uses the low 3 bits; bit 3 (moved to the sign) picks the half.
        let pick_hi = _mm256_castsi256_ps(_mm256_slli_epi32::<28>(idx));
        let v = _mm256_blendv_ps(
            _mm256_permutevar8x32_ps(lo, idx),
            _mm256_permutevar8x32_ps(hi, idx),
            pick_hi,
        );
        _mm256_storeu_ps(c.as_mut_ptr(), _mm256_mul_ps(v, sv));
        w += 1;
    }
    let tail = chunks.into_remainder();
    scalar_range(words, w * 8, table, s, tail);
}
