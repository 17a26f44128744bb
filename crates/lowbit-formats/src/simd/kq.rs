//! Q4_K encoding with the eight 32-value sub-blocks of a super-block in eight lanes.
//!
//! llama.cpp's `make_qkx2_quants` sums over the 32 values of a sub-block in order, so the sums
//! cannot be split without changing their rounding. Instead each lane runs one sub-block's whole
//! search, element by element in the reference order; lanes are independent, every branch of
//! the reference becomes a per-lane select, and the arithmetic is the reference's, operation by
//! operation. The result is bit-identical to `quant::kquants::q4_k`.

use crate::quant::kquants::{get_scale_min_k4, nearest_int, pack_scales_k4};
use crate::quant::{f16_round, put_f16};

const SUB: usize = 8; // sub-blocks per super-block
const N: usize = 32; // values per sub-block

/// `nearest_int(v).clamp(0, nmax)` as f32 (codes are kept as f32 so that every lane array has
/// one element type, which the vectorizer handles well).
#[inline(always)]
fn code(v: f32, nmax: i32) -> f32 {
    nearest_int(v).clamp(0, nmax) as f32
}

/// `make_qkx2_quants(x, w, nmax, L, rmin, rdelta, nstep, use_mad = false)` for L sub-blocks
/// at once. `xt[i][j]` is value i of sub-block j. Returns per-lane (scale, -min); `lt` gets
/// the codes (as f32).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn make_qkx2_lanes<const L: usize>(
    xt: &[[f32; L]; N],
    wt: &[[f32; L]; N],
    nmax: i32,
    lt: &mut [[f32; L]; N],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> ([f32; L], [f32; L]) {
    let mut min = xt[0];
    let mut max = xt[0];
    let mut sum_w = wt[0];
    let mut sum_x = [0f32; L];
    for j in 0..L {
        sum_x[j] = sum_w[j] * xt[0][j];
    }
    for i in 1..N {
        for j in 0..L {
            let v = xt[i][j];
            min[j] = if v < min[j] { v } else { min[j] };
            max[j] = if v > max[j] { v } else { max[j] };
            let w = wt[i][j];
            sum_w[j] += w;
            sum_x[j] += w * v;
        }
    }
    // 1.0 where the sub-block is flat (the reference returns early there with zero codes).
    let mut flat = [0f32; L];
    for j in 0..L {
        min[j] = if min[j] > 0.0 { 0.0 } else { min[j] };
        flat[j] = if max[j] == min[j] { 1.0 } else { 0.0 };
    }
    let nmaxf = nmax as f32;
    let mut iscale = [0f32; L];
    let mut scale = [0f32; L];
    for j in 0..L {
        iscale[j] = nmaxf / (max[j] - min[j]);
        scale[j] = 1.0 / iscale[j];
    }
    let mut best_error = [0f32; L];
    for i in 0..N {
        for j in 0..L {
            let l = code(iscale[j] * (xt[i][j] - min[j]), nmax);
            lt[i][j] = l;
            let diff = scale[j] * l + min[j] - xt[i][j];
            best_error[j] += wt[i][j] * (diff * diff);
        }
    }
    let mut laux = [[0f32; L]; N];
    for is in 0..=nstep {
        let mut sum_l = [0f32; L];
        let mut sum_l2 = [0f32; L];
        let mut sum_xl = [0f32; L];
        let step = rmin + rdelta * is as f32 + nmaxf;
        // The reference divides by (max - min) with the current min, which a better step
        // before this one may have changed.
        for j in 0..L {
            iscale[j] = step / (max[j] - min[j]);
        }
        for i in 0..N {
            for j in 0..L {
                let lf = code(iscale[j] * (xt[i][j] - min[j]), nmax);
                laux[i][j] = lf;
                let w = wt[i][j];
                sum_l[j] += w * lf;
                sum_l2[j] += w * lf * lf;
                sum_xl[j] += w * lf * xt[i][j];
            }
        }
        let mut this_scale = [0f32; L];
        let mut this_min = [0f32; L];
        let mut ok = [0f32; L];
        for j in 0..L {
            let det = sum_w[j] * sum_l2[j] - sum_l[j] * sum_l[j];
            ok[j] = if det > 0.0 && flat[j] == 0.0 {
                1.0
            } else {
                0.0
            };
            let ts = (sum_w[j] * sum_xl[j] - sum_x[j] * sum_l[j]) / det;
            let tm = (sum_l2[j] * sum_x[j] - sum_l[j] * sum_xl[j]) / det;
            this_min[j] = if tm > 0.0 { 0.0 } else { tm };
            this_scale[j] = if tm > 0.0 { sum_xl[j] / sum_l2[j] } else { ts };
        }
        let mut cur_error = [0f32; L];
        for i in 0..N {
            for j in 0..L {
                let diff = this_scale[j] * laux[i][j] + this_min[j] - xt[i][j];
                cur_error[j] += wt[i][j] * (diff * diff);
            }
        }
        let mut better = [0f32; L];
        let mut any = false;
        for j in 0..L {
            let b = ok[j] != 0.0 && cur_error[j] < best_error[j];
            any |= b;
            better[j] = if b { 1.0 } else { 0.0 };
            best_error[j] = if b { cur_error[j] } else { best_error[j] };
            scale[j] = if b { this_scale[j] } else { scale[j] };
            min[j] = if b { this_min[j] } else { min[j] };
        }
        if any {
            for i in 0..N {
                for j in 0..L {
                    lt[i][j] = if better[j] != 0.0 {
                        laux[i][j]
                    } else {
                        lt[i][j]
                    };
                }
            }
        }
    }
    let mut the_min = [0f32; L];
    for j in 0..L {
        scale[j] = if flat[j] != 0.0 { 0.0 } else { scale[j] };
        the_min[j] = -min[j];
    }
    for row in lt.iter_mut() {
        for j in 0..L {
            row[j] = if flat[j] != 0.0 { 0.0 } else { row[j] };
        }
    }
    (scale, the_min)
}

/// The sub-block search: the intrinsics version for 8 or 16 lanes on x86-64 (the caller runs
/// at AVX2 or AVX-512, so the features are there), else the portable lane code.
#[inline(always)]
fn solve<const L: usize>(
    xt: &[[f32; L]; N],
    wt: &[[f32; L]; N],
    nmax: i32,
    lt: &mut [[f32; L]; N],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> ([f32; L], [f32; L]) {
    #[cfg(target_arch = "x86_64")]
    {
        let level = crate::simd::current();
        let (mut scale, mut min) = ([0f32; L], [0f32; L]);
        let (xf, wf, lf) = (xt.as_flattened(), wt.as_flattened(), lt.as_flattened_mut());
        // SAFETY: q4_k::<8> / ::<16> only run at (at least) AVX2 / AVX-512.
        if L == 16 && level >= crate::simd::Level::Avx512 {
            unsafe {
                x86::qkx2_avx512(xf, wf, lf, &mut scale, &mut min, nmax, rmin, rdelta, nstep)
            };
            return (scale, min);
        }
        if L == 8 && level >= crate::simd::Level::Avx2 {
            unsafe { x86::qkx2_avx2(xf, wf, lf, &mut scale, &mut min, nmax, rmin, rdelta, nstep) };
            return (scale, min);
        }
    }
    make_qkx2_lanes::<L>(xt, wt, nmax, lt, rmin, rdelta, nstep)
}

/// Q4_K super-blocks (scalar reference: `quant::kquants::q4_k` / `qkx_superblock`), `L / 8`
/// super-blocks per pass (8 lanes for AVX2, 16 for AVX-512); a short tail runs 8 lanes.
#[inline(always)]
pub(crate) fn q4_k<const L: usize>(src: &[f32], dst: &mut [u8]) {
    let per = L / SUB;
    let mut xs = src.chunks_exact(256 * per);
    let mut bs = dst.chunks_exact_mut(144 * per);
    for (x, b) in (&mut xs).zip(&mut bs) {
        q4_k_pass::<L>(x, b);
    }
    for (x, b) in xs
        .remainder()
        .chunks_exact(256)
        .zip(bs.into_remainder().chunks_exact_mut(144))
    {
        q4_k_pass::<SUB>(x, b);
    }
}

/// L / 8 whole super-blocks: `x` holds 32 L values, `out` 18 L bytes.
#[inline(always)]
fn q4_k_pass<const L: usize>(x: &[f32], out: &mut [u8]) {
    const NMAX: i32 = 15;
    let mut xt = [[0f32; L]; N];
    for i in 0..N {
        for j in 0..L {
            xt[i][j] = x[N * j + i];
        }
    }
    let mut sum_x2 = [0f32; L];
    for row in &xt {
        for j in 0..L {
            sum_x2[j] += row[j] * row[j];
        }
    }
    let mut wt = [[0f32; L]; N];
    for i in 0..N {
        for j in 0..L {
            let av_x = (sum_x2[j] / 32.0).sqrt();
            wt[i][j] = av_x + xt[i][j].abs();
        }
    }
    let mut lt = [[0f32; L]; N];
    let (scales, mins) = solve::<L>(&xt, &wt, NMAX, &mut lt, -1.0, 0.1, 20);

    for (sb, b) in out.chunks_exact_mut(144).enumerate() {
        let x: &[f32; 256] = x[256 * sb..256 * sb + 256].try_into().unwrap();
        let lane0 = SUB * sb;
        // From here on: the reference's per-super-block code, unchanged.
        let mut max_scale = 0.0f32;
        let mut max_min = 0.0f32;
        for j in 0..SUB {
            if scales[lane0 + j] > max_scale {
                max_scale = scales[lane0 + j];
            }
            if mins[lane0 + j] > max_min {
                max_min = mins[lane0 + j];
            }
        }
        let inv_scale = if max_scale > 0.0 {
            63.0 / max_scale
        } else {
            0.0
        };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        let mut ls = [0u8; 8];
        let mut lm = [0u8; 8];
        for j in 0..SUB {
            ls[j] = (nearest_int(inv_scale * scales[lane0 + j]) as u8).min(63);
            lm[j] = (nearest_int(inv_min * mins[lane0 + j]) as u8).min(63);
        }
        let (head, q) = b.split_at_mut(16);
        put_f16(&mut head[0..2], max_scale / 63.0);
        put_f16(&mut head[2..4], max_min / 63.0);
        pack_scales_k4(&ls, &lm, &mut head[4..16]);
        let d_all = f16_round(max_scale / 63.0);
        let dmin_all = f16_round(max_min / 63.0);
        let mut l = [0u8; 256];
        for i in 0..N {
            for j in 0..SUB {
                l[N * j + i] = lt[i][lane0 + j] as u8;
            }
        }
        for j in 0..SUB {
            let (sc, m) = get_scale_min_k4(j, &head[4..16]);
            let d = d_all * sc as f32;
            if d == 0.0 {
                continue;
            }
            let dm = dmin_all * m as f32;
            let lj: &mut [u8; N] = (&mut l[N * j..N * j + N]).try_into().unwrap();
            let xj: &[f32; N] = x[N * j..N * j + N].try_into().unwrap();
            for ii in 0..N {
                lj[ii] = nearest_int((xj[ii] + dm) / d).clamp(0, NMAX) as u8;
            }
        }
        for c in 0..4 {
            for i in 0..32 {
                q[32 * c + i] = l[64 * c + i] | (l[64 * c + i + 32] << 4);
            }
        }
    }
}

/// The search of `make_qkx2_lanes` in explicit AVX2 (8 lanes) and AVX-512 (16 lanes)
/// intrinsics, the arithmetic operation for operation the same (compares are ordered, so NaN
/// compares false as in Rust; `min_ps(v, m)` is exactly `if v < m { v } else { m }`).
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::N;
    use std::arch::x86_64::*;

    /// Lane vectors: one lane per sub-block.
    #[derive(Clone, Copy)]
    pub(crate) struct V8(__m256);
    #[derive(Clone, Copy)]
    pub(crate) struct V16(__m512);

    macro_rules! lane_ops {
        ($V:ident, $M:ty, $f:literal, $reg:ty, $si:ty,
         splat: $splat:ident, load: $load:ident, store: $store:ident,
         add: $add:ident, sub: $sub:ident, mul: $mul:ident, div: $div:ident,
         min: $min:ident, max: $max:ident, xor: $xor:ident,
         cast_si: $cast_si:ident, set1_i: $set1_i:ident, and_i: $and_i:ident, sub_i: $sub_i:ident,
         max_i: $max_i:ident, min_i: $min_i:ident, cvt: $cvt:ident) => {
            impl $V {
                #[target_feature(enable = $f)]
                #[inline]
                pub(crate) unsafe fn splat(v: f32) -> $V {
                    $V($splat(v))
                }
                #[target_feature(enable = $f)]
                #[inline]
                pub(crate) unsafe fn load(p: *const f32) -> $V {
                    $V($load(p))
                }
                #[target_feature(enable = $f)]
                #[inline]
                pub(crate) unsafe fn store(self, p: *mut f32) {
                    $store(p, self.0)
                }
                #[target_feature(enable = $f)]
                #[inline]
                pub(crate) unsafe fn add(self, o: $V) -> $V {
                    $V($add(self.0, o.0))
                }
                #[target_feature(enable = $f)]
                #[inline]
                pub(crate) unsafe fn sub(self, o: $V) -> $V {
                    $V($sub(self.0, o.0))
                }
                #[target_feature(enable = $f)]
                #[inline]
                pub(crate) unsafe fn mul(self, o: $V) -> $V {
                    $V($mul(self.0, o.0))
                }
                #[target_feature(enable = $f)]
                #[inline]
                pub(crate) unsafe fn div(self, o: $V) -> $V {
                    $V($div(self.0, o.0))
                }
                /// `if self < o { self } else { o }`
                #[target_feature(enable = $f)]
                #[inline]
                pub(crate) unsafe fn min_sel(self, o: $V) -> $V {
                    $V($min(self.0, o.0))
                }
                /// `if self > o { self } else { o }`
                #[target_feature(enable = $f)]
                #[inline]
                pub(crate) unsafe fn max_sel(self, o: $V) -> $V {
                    $V($max(self.0, o.0))
                }
                /// `-self` (sign flip, so -0.0 for 0.0 as in the reference).
                #[target_feature(enable = $f)]
                #[inline]
                pub(crate) unsafe fn neg(self) -> $V {
                    $V($xor(self.0, $splat(-0.0)))
                }
                /// llama.cpp `nearest_int(self).clamp(0, nmax)` as f32.
                #[target_feature(enable = $f)]
                #[inline]
                pub(crate) unsafe fn code(self, nmax: i32) -> $V {
                    let t: $si = $cast_si($add(self.0, $splat(12_582_912.0)));
                    let i = $sub_i($and_i(t, $set1_i(0x007f_ffff)), $set1_i(0x0040_0000));
                    let i = $min_i($max_i(i, $set1_i(0)), $set1_i(nmax));
                    $V($cvt(i))
                }
            }
        };
    }

    lane_ops!(V8, __m256, "avx2,fma", __m256, __m256i,
        splat: _mm256_set1_ps, load: _mm256_loadu_ps, store: _mm256_storeu_ps,
        add: _mm256_add_ps, sub: _mm256_sub_ps, mul: _mm256_mul_ps, div: _mm256_div_ps,
        min: _mm256_min_ps, max: _mm256_max_ps, xor: _mm256_xor_ps,
        cast_si: _mm256_castps_si256, set1_i: _mm256_set1_epi32, and_i: _mm256_and_si256,
        sub_i: _mm256_sub_epi32, max_i: _mm256_max_epi32, min_i: _mm256_min_epi32,
        cvt: _mm256_cvtepi32_ps);
    lane_ops!(V16, __mmask16, "avx512f", __m512, __m512i,
        splat: _mm512_set1_ps, load: _mm512_loadu_ps, store: _mm512_storeu_ps,
        add: _mm512_add_ps, sub: _mm512_sub_ps, mul: _mm512_mul_ps, div: _mm512_div_ps,
        min: _mm512_min_ps, max: _mm512_max_ps, xor: _mm512_xor_ps_compat,
        cast_si: _mm512_castps_si512, set1_i: _mm512_set1_epi32, and_i: _mm512_and_si512,
        sub_i: _mm512_sub_epi32, max_i: _mm512_max_epi32, min_i: _mm512_min_epi32,
        cvt: _mm512_cvtepi32_ps);

    /// `_mm512_xor_ps` needs AVX-512DQ; the integer xor gives the same bits with AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn _mm512_xor_ps_compat(a: __m512, b: __m512) -> __m512 {
        _mm512_castsi512_ps(_mm512_xor_si512(
            _mm512_castps_si512(a),
            _mm512_castps_si512(b),
        ))
    }

    // Masks: AVX2 keeps them as all-ones lanes of a vector, AVX-512 in mask registers.
    impl V8 {
        #[target_feature(enable = "avx2")]
        #[inline]
        unsafe fn lt(self, o: V8) -> __m256 {
            _mm256_cmp_ps::<_CMP_LT_OQ>(self.0, o.0)
        }
        #[target_feature(enable = "avx2")]
        #[inline]
        unsafe fn gt(self, o: V8) -> __m256 {
            _mm256_cmp_ps::<_CMP_GT_OQ>(self.0, o.0)
        }
        #[target_feature(enable = "avx2")]
        #[inline]
        unsafe fn eq(self, o: V8) -> __m256 {
            _mm256_cmp_ps::<_CMP_EQ_OQ>(self.0, o.0)
        }
        #[target_feature(enable = "avx2")]
        #[inline]
        unsafe fn and_not(m: __m256, not: __m256) -> __m256 {
            _mm256_andnot_ps(not, m)
        }
        #[target_feature(enable = "avx2")]
        #[inline]
        unsafe fn and(a: __m256, b: __m256) -> __m256 {
            _mm256_and_ps(a, b)
        }
        /// `if m { a } else { b }` per lane.
        #[target_feature(enable = "avx2")]
        #[inline]
        unsafe fn select(m: __m256, a: V8, b: V8) -> V8 {
            V8(_mm256_blendv_ps(b.0, a.0, m))
        }
        #[target_feature(enable = "avx2")]
        #[inline]
        unsafe fn any(m: __m256) -> bool {
            _mm256_movemask_ps(m) != 0
        }
    }

    impl V16 {
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn lt(self, o: V16) -> __mmask16 {
            _mm512_cmp_ps_mask::<_CMP_LT_OQ>(self.0, o.0)
        }
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn gt(self, o: V16) -> __mmask16 {
            _mm512_cmp_ps_mask::<_CMP_GT_OQ>(self.0, o.0)
        }
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn eq(self, o: V16) -> __mmask16 {
            _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(self.0, o.0)
        }
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn and_not(m: __mmask16, not: __mmask16) -> __mmask16 {
            m & !not
        }
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn and(a: __mmask16, b: __mmask16) -> __mmask16 {
            a & b
        }
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn select(m: __mmask16, a: V16, b: V16) -> V16 {
            V16(_mm512_mask_blend_ps(m, b.0, a.0))
        }
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn any(m: __mmask16) -> bool {
            m != 0
        }
    }

    /// The search body, instantiated per vector type inside a `#[target_feature]` function.
    /// Slices are lane-major rows: element (i, j) at `i * L + j`, N rows.
    macro_rules! qkx2_body {
        ($V:ident, $L:expr, $xt:ident, $wt:ident, $lt:ident, $scale_out:ident, $min_out:ident,
         $nmax:ident, $rmin:ident, $rdelta:ident, $nstep:ident) => {{
            const L: usize = $L;
            assert!($xt.len() >= N * L && $wt.len() >= N * L && $lt.len() >= N * L);
            assert!($scale_out.len() >= L && $min_out.len() >= L);
            let xp = $xt.as_ptr();
            let wp = $wt.as_ptr();
            let lp = $lt.as_mut_ptr();
            let zero = $V::splat(0.0);
            let x0 = $V::load(xp);
            let w0 = $V::load(wp);
            let mut min = x0;
            let mut max = x0;
            let mut sum_w = w0;
            let mut sum_x = w0.mul(x0);
            for i in 1..N {
                let v = $V::load(xp.add(i * L));
                let w = $V::load(wp.add(i * L));
                min = v.min_sel(min);
                max = v.max_sel(max);
                sum_w = sum_w.add(w);
                sum_x = sum_x.add(w.mul(v));
            }
            min = $V::select(min.gt(zero), zero, min);
            let flat = max.eq(min);
            let nmaxf = $V::splat($nmax as f32);
            let iscale = nmaxf.div(max.sub(min));
            let mut scale = $V::splat(1.0).div(iscale);
            let mut best_error = zero;
            for i in 0..N {
                let v = $V::load(xp.add(i * L));
                let w = $V::load(wp.add(i * L));
                let l = iscale.mul(v.sub(min)).code($nmax);
                l.store(lp.add(i * L));
                let diff = scale.mul(l).add(min).sub(v);
                best_error = best_error.add(w.mul(diff.mul(diff)));
            }
            let mut laux = [0f32; N * L];
            let ap = laux.as_mut_ptr();
            for is in 0..=$nstep {
                let step = $V::splat($rmin + $rdelta * is as f32 + $nmax as f32);
                let iscale = step.div(max.sub(min));
                let (mut sum_l, mut sum_l2, mut sum_xl) = (zero, zero, zero);
                for i in 0..N {
                    let v = $V::load(xp.add(i * L));
                    let w = $V::load(wp.add(i * L));
                    let l = iscale.mul(v.sub(min)).code($nmax);
                    l.store(ap.add(i * L));
                    let wl = w.mul(l);
                    sum_l = sum_l.add(wl);
                    sum_l2 = sum_l2.add(wl.mul(l));
                    sum_xl = sum_xl.add(wl.mul(v));
                }
                let det = sum_w.mul(sum_l2).sub(sum_l.mul(sum_l));
                let ok = $V::and_not(det.gt(zero), flat);
                let ts = sum_w.mul(sum_xl).sub(sum_x.mul(sum_l)).div(det);
                let tm = sum_l2.mul(sum_x).sub(sum_l.mul(sum_xl)).div(det);
                let pos = tm.gt(zero);
                let this_min = $V::select(pos, zero, tm);
                let this_scale = $V::select(pos, sum_xl.div(sum_l2), ts);
                let mut cur = zero;
                for i in 0..N {
                    let v = $V::load(xp.add(i * L));
                    let w = $V::load(wp.add(i * L));
                    let l = $V::load(ap.add(i * L));
                    let diff = this_scale.mul(l).add(this_min).sub(v);
                    cur = cur.add(w.mul(diff.mul(diff)));
                }
                let better = $V::and(ok, cur.lt(best_error));
                if $V::any(better) {
                    best_error = $V::select(better, cur, best_error);
                    scale = $V::select(better, this_scale, scale);
                    min = $V::select(better, this_min, min);
                    for i in 0..N {
                        let l =
                            $V::select(better, $V::load(ap.add(i * L)), $V::load(lp.add(i * L)));
                        l.store(lp.add(i * L));
                    }
                }
            }
            $V::select(flat, zero, scale).store($scale_out.as_mut_ptr());
            min.neg().store($min_out.as_mut_ptr());
            for i in 0..N {
                $V::select(flat, zero, $V::load(lp.add(i * L))).store(lp.add(i * L));
            }
        }};
    }

    /// 8 sub-blocks (one super-block) with AVX2.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn qkx2_avx2(
        xt: &[f32],
        wt: &[f32],
        lt: &mut [f32],
        scale_out: &mut [f32],
        min_out: &mut [f32],
        nmax: i32,
        rmin: f32,
        rdelta: f32,
        nstep: i32,
    ) {
        qkx2_body!(V8, 8, xt, wt, lt, scale_out, min_out, nmax, rmin, rdelta, nstep)
    }

    /// 16 sub-blocks (two super-blocks) with AVX-512.
    #[target_feature(enable = "avx512f,avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn qkx2_avx512(
        xt: &[f32],
        wt: &[f32],
        lt: &mut [f32],
        scale_out: &mut [f32],
        min_out: &mut [f32],
        nmax: i32,
        rmin: f32,
        rdelta: f32,
        nstep: i32,
    ) {
        qkx2_body!(V16, 16, xt, wt, lt, scale_out, min_out, nmax, rmin, rdelta, nstep)
    }
}
