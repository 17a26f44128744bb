// Kernels of the general model runner (model.rs): what real checkpoints need beyond the
// synthetic llama step in ops.cu — any head size, several tokens per call (prefill), rope from a
// frequency table (scaled ropes, partial rotary), sliding windows, q/k biases, GeGLU and the
// online Hadamard rotation. Activations are f32, row-major [tokens][...].

// Rotate q or k ([tokens][n_heads][hd]) in place for positions pos0 + t. inv_freq holds
// rot_half = rot_dim / 2 frequencies; neox pairs (i, i + rot_half), else (2i, 2i + 1). The angle
// is the f32 product the CPU computes; its cosine and sine are taken in double.
extern "C" __global__ void rope_table_f32(float* __restrict__ v, int tokens, int n_heads, int hd, int rot_half,
                                          const float* __restrict__ inv_freq, int pos0, int neox, float mscale) {
    PDL_ENTRY();
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    int per_token = n_heads * rot_half;
    if (idx >= tokens * per_token) return;
    int t = idx / per_token, r = idx % per_token;
    int h = r / rot_half, i = r % rot_half;
    float ang = (float)(pos0 + t) * inv_freq[i];
    float c = (float)cos((double)ang) * mscale, s = (float)sin((double)ang) * mscale;
    float* hv = v + ((size_t)t * n_heads + h) * hd;
    int a = neox ? i : 2 * i, b = neox ? i + rot_half : 2 * i + 1;
    float x0 = hv[a], x1 = hv[b];
    hv[a] = x0 * c - x1 * s;
    hv[b] = x1 * c + x0 * s;
}

// Append k and v ([tokens][n_kv][hd] f32) at positions pos0.. of the bf16 caches
// [n_kv][max_seq][hd].
extern "C" __global__ void store_kv_rows_bf16(const float* __restrict__ k, const float* __restrict__ v,
                                              u16* __restrict__ kc, u16* __restrict__ vc, int tokens, int n_kv,
                                              int hd, int max_seq, int pos0) {
    PDL_ENTRY();
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    int per_token = n_kv * hd;
    if (idx >= tokens * per_token) return;
    int t = idx / per_token, r = idx % per_token;
    int h = r / hd, d = r % hd;
    size_t o = ((size_t)h * max_seq + pos0 + t) * hd + d;
    kc[o] = f32_to_bf16(k[idx]);
    vc[o] = f32_to_bf16(v[idx]);
}

// E4M3 (FN) byte to f32 (0x7F / 0xFF are NaN in the format; weights never hold them).
__device__ __forceinline__ float e4m3_to_f32(u32 b) {
    u32 s = (b >> 7) & 1, e = (b >> 3) & 15, m = b & 7;
    float v = e == 0 ? (float)m * 0.001953125f : __uint_as_float(((e + 120) << 23) | (m << 20));
    return s ? -v : v;
}

#define GA_WARPS 4
#define GA_MAXD 8
#define GA_NEG_BIG (-1.0e30f)

// E4M3 (FN) code of v, round to nearest even, saturating at ±448. The codes are contiguous
// across binades ((exponent + 7) << 3 | mantissa), so a mantissa rounding up to 8 carries into
// the exponent by itself.
__device__ __forceinline__ u32 f32_to_e4m3(float v) {
    u32 sign = v < 0.0f ? 0x80u : 0u;
    float a = fminf(fabsf(v), 448.0f);
    u32 code;
    if (a < 0.015625f) {  // below the smallest normal 2^-6: steps of 2^-9
        code = (u32)rintf(a * 512.0f);
    } else {
        int e;
        frexpf(a, &e);  // a = f * 2^e, f in [0.5, 1)
        e -= 1;         // a = 1.m * 2^e
        code = (u32)((e + 7) << 3) + (u32)rintf(ldexpf(a, 3 - e)) - 8u;
    }
    return sign | min(code, 0x7Eu);
}

// Cache element loaders: bf16 values, or E4M3 codes times one f32 scale per (position, head).
struct CacheBf16 {
    const u16* p;
    __device__ __forceinline__ float at(size_t row, int i, int hd) const { return bf16_to_f32(p[row * hd + i]); }
    __device__ __forceinline__ float scale(size_t) const { return 1.0f; }
};
struct CacheFp8 {
    const u8* p;
    const float* s;
    __device__ __forceinline__ float at(size_t row, int i, int hd) const { return e4m3_to_f32(p[row * hd + i]); }
    __device__ __forceinline__ float scale(size_t row) const { return s[row]; }
};

// Causal attention of `tokens` queries at positions pos0.. over the cache (already holding
// positions 0..pos0+tokens; row (kv head h, position j) = h * max_seq + j). One block per
// (head, token); its warps take every GA_WARPS-th key, keep an online softmax each, and merge
// at the end. Lane l holds dims l, l+32, ... (head_dim up to 32 * GA_MAXD). window > 0:
// position p sees keys j with p - j < window. q, out: [tokens][n_heads][hd]. GQA: query head h
// reads kv head h / (n_heads / n_kv).
template <typename C>
__device__ __forceinline__ void attn_rows(const float* __restrict__ q, C kc, C vc, float* __restrict__ out,
                                          int n_heads, int n_kv, int hd, int max_seq, int pos0, float scale,
                                          int window) {
    PDL_ENTRY();
    __shared__ float sm_m[GA_WARPS], sm_l[GA_WARPS];
    __shared__ float sm_acc[GA_WARPS][32 * GA_MAXD];
    int head = blockIdx.x, t = blockIdx.y;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int kvh = head / (n_heads / n_kv);
    int p = pos0 + t;
    int start = window > 0 ? max(0, p - window + 1) : 0;
    const float* qh = q + ((size_t)t * n_heads + head) * hd;
    float qr[GA_MAXD], acc[GA_MAXD];
#pragma unroll
    for (int d = 0; d < GA_MAXD; d++) {
        int i = lane + 32 * d;
        qr[d] = i < hd ? qh[i] * scale : 0.0f;
        acc[d] = 0.0f;
    }
    float m = GA_NEG_BIG, l = 0.0f;
    size_t base = (size_t)kvh * max_seq;
    for (int j = start + warp; j <= p; j += GA_WARPS) {
        size_t row = base + j;
        float s = 0.0f;
#pragma unroll
        for (int d = 0; d < GA_MAXD; d++) {
            int i = lane + 32 * d;
            if (i < hd) s += qr[d] * kc.at(row, i, hd);
        }
        s = warp_sum(s) * kc.scale(row);
        float m_new = fmaxf(m, s);
        float corr = __expf(m - m_new), e = __expf(s - m_new);
        l = l * corr + e;
        float ev = e * vc.scale(row);
#pragma unroll
        for (int d = 0; d < GA_MAXD; d++) {
            int i = lane + 32 * d;
            if (i < hd) acc[d] = acc[d] * corr + ev * vc.at(row, i, hd);
        }
        m = m_new;
    }
    if (lane == 0) {
        sm_m[warp] = m;
        sm_l[warp] = l;
    }
#pragma unroll
    for (int d = 0; d < GA_MAXD; d++) sm_acc[warp][lane + 32 * d] = acc[d];
    __syncthreads();
    float M = GA_NEG_BIG;
#pragma unroll
    for (int w = 0; w < GA_WARPS; w++) M = fmaxf(M, sm_m[w]);
    float L = 0.0f;
#pragma unroll
    for (int w = 0; w < GA_WARPS; w++) L += sm_l[w] * __expf(sm_m[w] - M);
    float* oh = out + ((size_t)t * n_heads + head) * hd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        float o = 0.0f;
#pragma unroll
        for (int w = 0; w < GA_WARPS; w++) o += sm_acc[w][i] * __expf(sm_m[w] - M);
        oh[i] = L > 0.0f ? o / L : 0.0f;
    }
}

extern "C" __global__ void __launch_bounds__(GA_WARPS * 32)
    attn_rows_bf16(const float* __restrict__ q, const u16* __restrict__ kc, const u16* __restrict__ vc,
                   float* __restrict__ out, int n_heads, int n_kv, int hd, int max_seq, int pos0, float scale,
                   int window) {
    attn_rows<CacheBf16>(q, CacheBf16{kc}, CacheBf16{vc}, out, n_heads, n_kv, hd, max_seq, pos0, scale, window);
}

extern "C" __global__ void __launch_bounds__(GA_WARPS * 32)
    attn_rows_fp8(const float* __restrict__ q, const u8* __restrict__ kc, const u8* __restrict__ vc,
                  const float* __restrict__ ks, const float* __restrict__ vs, float* __restrict__ out, int n_heads,
                  int n_kv, int hd, int max_seq, int pos0, float scale, int window) {
    attn_rows<CacheFp8>(q, CacheFp8{kc, ks}, CacheFp8{vc, vs}, out, n_heads, n_kv, hd, max_seq, pos0, scale,
                        window);
}

// FP8 cache store: one warp per (token, kv head) row of k ([tokens][n_kv][hd] f32) and of v:
// scale = absmax / 448 (1 for an all-zero row), codes = e4m3(x / scale).
extern "C" __global__ void store_kv_rows_fp8(const float* __restrict__ k, const float* __restrict__ v,
                                             u8* __restrict__ kc, u8* __restrict__ vc, float* __restrict__ ks,
                                             float* __restrict__ vs, int tokens, int n_kv, int hd, int max_seq,
                                             int pos0) {
    PDL_ENTRY();
    int lane = threadIdx.x & 31;
    int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);  // t * n_kv + h
    if (r >= tokens * n_kv) return;
    int t = r / n_kv, h = r % n_kv;
    size_t row = (size_t)h * max_seq + pos0 + t;
    for (int which = 0; which < 2; which++) {
        const float* src = (which == 0 ? k : v) + (size_t)r * hd;
        u8* dst = (which == 0 ? kc : vc) + row * hd;
        float amax = 0.0f;
        for (int i = lane; i < hd; i += 32) amax = fmaxf(amax, fabsf(src[i]));
        amax = warp_max(amax);
        float sc = amax > 0.0f ? amax / 448.0f : 1.0f;
        for (int i = lane; i < hd; i += 32) dst[i] = (u8)f32_to_e4m3(src[i] / sc);
        if (lane == 0) (which == 0 ? ks : vs)[row] = sc;
    }
}

// out[i] = act(g[i]) * u[i]: SiLU (gelu == 0) or tanh-approximated GELU (Gemma's GeGLU).
extern "C" __global__ void gated_act_f32(const float* __restrict__ g, const float* __restrict__ u,
                                         float* __restrict__ out, int n, int gelu) {
    PDL_ENTRY();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float a = g[i];
    float act;
    if (gelu) {
        const float k = 0.7978845608028654f;  // sqrt(2 / pi)
        act = 0.5f * a * (1.0f + tanhf(k * (a + 0.044715f * a * a * a)));
    } else {
        act = a / (1.0f + expf(-a));
    }
    out[i] = act * u[i];
}

// y[r][i] += b[i] for rows of n values (total values in y).
extern "C" __global__ void add_bias_f32(float* __restrict__ y, const float* __restrict__ b, int n, int total) {
    PDL_ENTRY();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) y[i] += b[i % n];
}

// x[r] <- x[r] · Q for the online rotation Q = D · (H_p ⊗ H_m) / sqrt(n) (lowbit_cpu::hadamard),
// one block per row of n = p * m values held in shared memory (2n floats): signs, the dense
// factor per block of m values, then the in-place fast Walsh–Hadamard transform over the p
// blocks, then the scale. Same operation order as the CPU's apply_rows_f32.
extern "C" __global__ void hadamard_rows_f32(float* __restrict__ x, const float* __restrict__ signs,
                                             const float* __restrict__ base, int n, int p, int m, float norm) {
    PDL_ENTRY();
    extern __shared__ float hs[];
    float* a = hs;
    float* b = hs + n;
    float* row = x + (size_t)blockIdx.x * n;
    for (int i = threadIdx.x; i < n; i += blockDim.x) a[i] = row[i] * signs[i];
    __syncthreads();
    if (m > 1) {
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            int blk = i / m, bp = i % m;
            const float* src = a + (size_t)blk * m;
            float s = 0.0f;
            for (int k = 0; k < m; k++) s += src[k] * base[k * m + bp];
            b[i] = s;
        }
        __syncthreads();
        float* tmp = a;
        a = b;
        b = tmp;
    }
    for (int h = 1; h < p; h *= 2) {
        for (int k = threadIdx.x; k < n / 2; k += blockDim.x) {
            int j = k / m, e = k % m;
            int i0 = (j / h) * 2 * h + (j % h);
            int ia = i0 * m + e, ib = (i0 + h) * m + e;
            float u = a[ia], v = a[ib];
            a[ia] = u + v;
            a[ib] = u - v;
        }
        __syncthreads();
    }
    for (int i = threadIdx.x; i < n; i += blockDim.x) row[i] = a[i] * norm;
}

// f32 weights [N][K], any K (small or odd matrices the other formats cannot hold). One warp
// per row.
template <int B>
__device__ __forceinline__ void gemv_f32_rows(const float* __restrict__ w, const float* __restrict__ x,
                                              float* __restrict__ y, int N, int K) {
    PDL_ENTRY();
    int lane = threadIdx.x & 31;
    int row = blockIdx.x * 4 + (threadIdx.x >> 5);
    if (row >= N) return;
    const float* wr = w + (size_t)row * K;
    float acc[B];
#pragma unroll
    for (int b = 0; b < B; b++) acc[b] = 0.0f;
    for (int k = lane; k < K; k += 32) {
        float wv = __ldg(wr + k);
#pragma unroll
        for (int b = 0; b < B; b++) acc[b] += wv * __ldg(x + (size_t)b * K + k);
    }
    warp_store_rows<B>(acc, y, N, row);
}

// GGML Q6_K: 210-byte blocks of 256 values: ql[128] (low 4 bits), qh[64] (high 2 bits), 16 int8
// sub-block scales, f16 d. Value = d * scale[sub] * (q - 32). The warp reads one block at a
// time: lane l takes, in each half n of 128 values, elements l, l+32, l+64, l+96 (the four
// 2-bit fields of qh[32n + l]). Requires K % 256 == 0.
template <int B>
__device__ __forceinline__ void gemv_q6_k_rows(const u8* __restrict__ w, const float* __restrict__ x,
                                               float* __restrict__ y, int N, int K) {
    PDL_ENTRY();
    int lane = threadIdx.x & 31;
    int row = blockIdx.x * 4 + (threadIdx.x >> 5);
    if (row >= N) return;
    int nblk = K >> 8;
    const u8* wr = w + (size_t)row * nblk * 210;
    float acc[B];
#pragma unroll
    for (int b = 0; b < B; b++) acc[b] = 0.0f;
    for (int blk = 0; blk < nblk; blk++) {
        const u8* bp = wr + (size_t)blk * 210;
        float d = f16_to_f32((u16)bp[208] | ((u16)bp[209] << 8));
        const signed char* sc = (const signed char*)(bp + 192);
#pragma unroll
        for (int n = 0; n < 2; n++) {
            u32 l0 = __ldg(bp + 64 * n + lane), l1 = __ldg(bp + 64 * n + 32 + lane);
            u32 h = __ldg(bp + 128 + 32 * n + lane);
            int is = 8 * n + lane / 16;
            float w0 = d * (float)sc[is] * (float)((int)((l0 & 0xF) | ((h & 3) << 4)) - 32);
            float w1 = d * (float)sc[is + 2] * (float)((int)((l1 & 0xF) | (((h >> 2) & 3) << 4)) - 32);
            float w2 = d * (float)sc[is + 4] * (float)((int)((l0 >> 4) | (((h >> 4) & 3) << 4)) - 32);
            float w3 = d * (float)sc[is + 6] * (float)((int)((l1 >> 4) | (((h >> 6) & 3) << 4)) - 32);
#pragma unroll
            for (int b = 0; b < B; b++) {
                const float* xb = x + (size_t)b * K + (size_t)blk * 256 + 128 * n + lane;
                acc[b] += w0 * __ldg(xb) + w1 * __ldg(xb + 32) + w2 * __ldg(xb + 64) + w3 * __ldg(xb + 96);
            }
        }
    }
    warp_store_rows<B>(acc, y, N, row);
}

// Blocks (per lane) whose loads the FP4 GEMVs issue together, for memory parallelism.
#ifndef FP4_STEPS
#define FP4_STEPS 4
#endif

// FP4 (E2M1) code c to twice its value, exactly: magnitudes x2 are 0,1,2,3,4,6,8,12, packed one
// per nibble; bit 3 is the sign. The block scales are halved to match (as llama.cpp's MXFP4).
__device__ __forceinline__ float e2m1x2(u32 c) {
    float m = (float)((0xC8643210u >> (4 * (c & 7))) & 0xFu);
    return (c & 8) ? -m : m;
}

// lowbit's LB_NVFP4 blocks (lowbit-formats lb_nvfp4.rs): 76 bytes per 128 values = f32 global
// scale, 8 E4M3 sub-scales (16 values each), 4 chunks of 16 bytes (chunk k: byte j holds value
// 32k + j low, 32k + j + 16 high). value = e2m1 * (e4m3(sub) / global). Sixteen lanes share a
// block, one code word each (word w: chunk k = w / 4, values 32k + 4(w % 4)..+3 and 16 more),
// so a warp covers two blocks per step with coalesced code and activation loads. Requires
// K % 128 == 0.
template <int B>
__device__ __forceinline__ void gemv_nvfp4_rows(const u8* __restrict__ w, const float* __restrict__ x,
                                                float* __restrict__ y, int N, int K) {
    PDL_ENTRY();
    int lane = threadIdx.x & 31;
    int row = blockIdx.x * 4 + (threadIdx.x >> 5);
    if (row >= N) return;
    int nblk = K >> 7;
    const u32* wr = (const u32*)(w + (size_t)row * nblk * 76);
    int half = lane >> 4, wi = lane & 15, k = wi >> 2;
    int off = 32 * k + 4 * (wi & 3);
    float acc[B];
#pragma unroll
    for (int b = 0; b < B; b++) acc[b] = 0.0f;
    for (int i0 = half; i0 < nblk; i0 += 2 * FP4_STEPS) {
        u32 gs[FP4_STEPS], sws[FP4_STEPS], wds[FP4_STEPS];
#pragma unroll
        for (int u = 0; u < FP4_STEPS; u++) {
            int i = i0 + 2 * u;
            if (i < nblk) {
                const u32* bp = wr + (size_t)i * 19;
                gs[u] = __ldg(bp);
                sws[u] = __ldg(bp + 1 + (k >> 1));
                wds[u] = __ldg(bp + 3 + wi);
            }
        }
#pragma unroll
        for (int u = 0; u < FP4_STEPS; u++) {
            int i = i0 + 2 * u;
            if (i >= nblk) break;
            float g = __uint_as_float(gs[u]);
            u32 sw = sws[u] >> (16 * (k & 1));  // sub-scales 2k, 2k + 1
            float sa = e4m3_to_f32(sw & 0xFF) / g * 0.5f, sb = e4m3_to_f32((sw >> 8) & 0xFF) / g * 0.5f;
            u32 wd = wds[u];
            float w0 = e2m1x2(wd), w1 = e2m1x2(wd >> 8), w2 = e2m1x2(wd >> 16), w3 = e2m1x2(wd >> 24);
            float h0 = e2m1x2(wd >> 4), h1 = e2m1x2(wd >> 12), h2 = e2m1x2(wd >> 20), h3 = e2m1x2(wd >> 28);
#pragma unroll
            for (int b = 0; b < B; b++) {
                const float* xb = x + (size_t)b * K + (size_t)i * 128 + off;
                float4 lo = __ldg((const float4*)xb), hi = __ldg((const float4*)(xb + 16));
                acc[b] += sa * (w0 * lo.x + w1 * lo.y + w2 * lo.z + w3 * lo.w) +
                          sb * (h0 * hi.x + h1 * hi.y + h2 * hi.z + h3 * hi.w);
            }
        }
    }
    warp_store_rows<B>(acc, y, N, row);
}

// GGML MXFP4: 17 bytes per 32 values = E8M0 exponent e, 16 bytes (byte j: value j low, j + 16
// high). value = 2^(e-128) * (2 * e2m1). Four lanes share a block (4 code bytes each: values
// 4t..4t+3 and 16 more), eight blocks per warp step, coalesced. K % 32 == 0.
template <int B>
__device__ __forceinline__ void gemv_mxfp4_rows(const u8* __restrict__ w, const float* __restrict__ x,
                                                float* __restrict__ y, int N, int K) {
    PDL_ENTRY();
    int lane = threadIdx.x & 31;
    int row = blockIdx.x * 4 + (threadIdx.x >> 5);
    if (row >= N) return;
    int nblk = K >> 5;
    const u8* wr = w + (size_t)row * nblk * 17;
    int sub = lane >> 2, t = lane & 3;
    float acc[B];
#pragma unroll
    for (int b = 0; b < B; b++) acc[b] = 0.0f;
    for (int i0 = sub; i0 < nblk; i0 += 8 * FP4_STEPS) {
        u32 es[FP4_STEPS], wds[FP4_STEPS];
#pragma unroll
        for (int u = 0; u < FP4_STEPS; u++) {
            int i = i0 + 8 * u;
            if (i < nblk) {
                const u8* bp = wr + (size_t)i * 17;
                const u8* q = bp + 1 + 4 * t;
                es[u] = __ldg(bp);
                wds[u] = (u32)__ldg(q) | ((u32)__ldg(q + 1) << 8) | ((u32)__ldg(q + 2) << 16) |
                         ((u32)__ldg(q + 3) << 24);
            }
        }
#pragma unroll
        for (int u = 0; u < FP4_STEPS; u++) {
            int i = i0 + 8 * u;
            if (i >= nblk) break;
            u32 e = es[u], wd = wds[u];
            float d = __uint_as_float(e < 2 ? (0x00200000u << e) : ((e - 1) << 23));
            float w0 = e2m1x2(wd), w1 = e2m1x2(wd >> 8), w2 = e2m1x2(wd >> 16), w3 = e2m1x2(wd >> 24);
            float h0 = e2m1x2(wd >> 4), h1 = e2m1x2(wd >> 12), h2 = e2m1x2(wd >> 20), h3 = e2m1x2(wd >> 28);
#pragma unroll
            for (int b = 0; b < B; b++) {
                const float* xb = x + (size_t)b * K + (size_t)i * 32 + 4 * t;
                float4 lo = __ldg((const float4*)xb), hi = __ldg((const float4*)(xb + 16));
                acc[b] += d * (w0 * lo.x + w1 * lo.y + w2 * lo.z + w3 * lo.w + h0 * hi.x + h1 * hi.y +
                               h2 * hi.z + h3 * hi.w);
            }
        }
    }
    warp_store_rows<B>(acc, y, N, row);
}

#define MODEL_GEMV_INSTANCES(B)                                                                       \
    extern "C" __global__ void __launch_bounds__(128) gemv_f32_b##B(const float* w, const float* x,  \
                                                                    float* y, int N, int K) {         \
        gemv_f32_rows<B>(w, x, y, N, K);                                                              \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(128) gemv_q6_k_b##B(const u8* w, const float* x,    \
                                                                     float* y, int N, int K) {        \
        gemv_q6_k_rows<B>(w, x, y, N, K);                                                             \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(128) gemv_nvfp4_b##B(const u8* w, const float* x,   \
                                                                      float* y, int N, int K) {       \
        gemv_nvfp4_rows<B>(w, x, y, N, K);                                                            \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(128) gemv_mxfp4_b##B(const u8* w, const float* x,   \
                                                                      float* y, int N, int K) {       \
        gemv_mxfp4_rows<B>(w, x, y, N, K);                                                            \
    }

MODEL_GEMV_INSTANCES(1)
MODEL_GEMV_INSTANCES(2)
MODEL_GEMV_INSTANCES(3)
MODEL_GEMV_INSTANCES(4)
MODEL_GEMV_INSTANCES(5)
MODEL_GEMV_INSTANCES(6)
MODEL_GEMV_INSTANCES(7)
MODEL_GEMV_INSTANCES(8)

// Q6_K blocks with random codes and scales and a small positive f16 d (synthetic models).
extern "C" __global__ void fill_random_q6_k(u8* __restrict__ p, u64 nblocks, u64 seed) {
    for (u64 blk = blockIdx.x * (u64)blockDim.x + threadIdx.x; blk < nblocks; blk += (u64)gridDim.x * blockDim.x) {
        u8* b = p + blk * 210;
        for (int t = 0; t < 192; t++) b[t] = (u8)mix64(seed * 0x9e3779b97f4a7c15ull + blk * 256 + t + 0x5151ull);
        for (int t = 0; t < 16; t++) b[192 + t] = (u8)(8 + (mix64(seed + blk * 16 + t) & 31));  // scales 8..39
        u16 d = f32_to_f16(0.0002f + 0.0001f * unit_rand(seed, blk));
        b[208] = (u8)(d & 0xFF);
        b[209] = (u8)(d >> 8);
    }
}

// LB_NVFP4 blocks: global scale 1, random E4M3 sub-scales in [2^-10, 2^-7), random codes.
extern "C" __global__ void fill_random_nvfp4(u8* __restrict__ p, u64 nblocks, u64 seed) {
    for (u64 blk = blockIdx.x * (u64)blockDim.x + threadIdx.x; blk < nblocks; blk += (u64)gridDim.x * blockDim.x) {
        u32* b = (u32*)(p + blk * 76);
        b[0] = 0x3f800000u;  // 1.0f
        u8* s = (u8*)(b + 1);
        for (int t = 0; t < 8; t++) s[t] = (u8)(0x18 + (mix64(seed + blk * 8 + t) % 24));  // e = 3..5
        for (int t = 3; t < 19; t++) b[t] = (u32)mix64(seed * 0x9e3779b97f4a7c15ull + blk * 32 + t + 0x4f4ull);
    }
}

// MXFP4 blocks: exponents 2^-8..2^-6 (e = 119..121 halved), random codes.
extern "C" __global__ void fill_random_mxfp4(u8* __restrict__ p, u64 nblocks, u64 seed) {
    for (u64 blk = blockIdx.x * (u64)blockDim.x + threadIdx.x; blk < nblocks; blk += (u64)gridDim.x * blockDim.x) {
        u8* b = p + blk * 17;
        b[0] = (u8)(120 + (mix64(seed + blk) % 3));
        for (int t = 1; t < 17; t++) b[t] = (u8)mix64(seed * 0x9e3779b97f4a7c15ull + blk * 32 + t + 0x3a3ull);
    }
}

// Dynamic per-token activation quantization of W8A8 checkpoints (lowbit-model act_quant.rs),
// quantize-then-dequantize of each row of x into y: kind 0 = INT8 (scale absmax / 127, round
// half even, clamp to [-128, 127]), kind 1 = FP8 E4M3 (scale absmax / 448, nearest E4M3).
// One block per row.
extern "C" __global__ void act_quant_rows_f32(const float* __restrict__ x, float* __restrict__ y, int n, int kind) {
    PDL_ENTRY();
    __shared__ float part[32];
    const float* xr = x + (size_t)blockIdx.x * n;
    float* yr = y + (size_t)blockIdx.x * n;
    float amax = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) amax = fmaxf(amax, fabsf(xr[i]));
    amax = warp_max(amax);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    if (lane == 0) part[warp] = amax;
    __syncthreads();
    amax = warp_max(lane < nwarps ? part[lane] : 0.0f);
    bool skip = !(amax > 0.0f && amax <= 3.402823466e38f);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = xr[i];
        if (!skip) {
            if (kind == 0) {
                float scale = amax / 127.0f, inv = 1.0f / scale;
                v = fminf(fmaxf(rintf(v * inv), -128.0f), 127.0f) * scale;
            } else {
                float scale = amax / 448.0f;
                v = e4m3_to_f32(f32_to_e4m3(v / scale)) * scale;
            }
        }
        yr[i] = v;
    }
}
