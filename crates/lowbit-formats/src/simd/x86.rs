//! x86-64 instantiations of the kernels in `kernels.rs`: each is compiled once for AVX2 and
//! once for AVX-512, so the loops (which are written for the auto-vectorizer) use 256- or
//! 512-bit registers. A `#[target_feature]` function must contain the loop itself, which is
//! why the kernel bodies are `#[inline(always)]` (a closure called from here would not
//! inherit the features).
//!
//! Safety: callers must only call a module's functions when the CPU has its features;
//! `simd::current()` never returns a level above `simd::hardware()`.

use super::kernels::{self, FastMinifloat};
use super::kq;
use crate::minifloat::Minifloat;

macro_rules! instantiate {
    ($features:literal, $kq_lanes:literal) => {
        use super::*;

        #[target_feature(enable = $features)]
        pub(crate) unsafe fn absmax(x: &[f32]) -> f32 {
            kernels::absmax(x)
        }

        #[target_feature(enable = $features)]
        pub(crate) unsafe fn scale_round_clamp(g: &mut [f32], inv: f32, s: f32, lo: f32, hi: f32) {
            kernels::scale_round_clamp(g, inv, s, lo, hi)
        }

        #[target_feature(enable = $features)]
        pub(crate) unsafe fn minifloat_fake(g: &mut [f32], f: &FastMinifloat, inv: f32, s: f32) {
            kernels::minifloat_fake(g, f, inv, s)
        }

        #[target_feature(enable = $features)]
        pub(crate) unsafe fn minifloat_groups(
            row: &mut [f32],
            n: usize,
            f: &FastMinifloat,
            m: &Minifloat,
            scale: &dyn Fn(f32) -> f32,
        ) -> bool {
            kernels::minifloat_groups(row, n, f, m, scale)
        }

        #[target_feature(enable = $features)]
        pub(crate) unsafe fn minifloat_encode(f: &FastMinifloat, src: &[f32], dst: &mut [u8]) {
            kernels::minifloat_encode(f, src, dst)
        }

        #[target_feature(enable = $features)]
        pub(crate) unsafe fn q4_k(src: &[f32], dst: &mut [u8]) {
            kq::q4_k::<$kq_lanes>(src, dst)
        }
    };
}

pub(crate) mod avx2 {
    instantiate!("avx2,fma,f16c", 8);

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn q4_k_fast(src: &[f32], dst: &mut [u8]) {
        crate::quant::kquants::q4_k_fast(src, dst)
    }
    pub(crate) use crate::simd::decode::decode4_avx2 as decode4;
    pub(crate) use crate::simd::q8::{mxfp4_avx2 as mxfp4, q4_0_avx2 as q4_0, q8_0_avx2 as q8_0};
}

pub(crate) mod avx512 {
    instantiate!("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c", 16);
    pub(crate) use crate::simd::decode::decode4_avx512 as decode4;
    pub(crate) use crate::simd::q8::q4_k_fast_avx512 as q4_k_fast;
    pub(crate) use crate::simd::q8::{
        mxfp4_avx512 as mxfp4, q4_0_avx512 as q4_0, q8_0_avx512 as q8_0,
    };
}
