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

// Causal attention of `tokens` queries at positions pos0.. over the bf16 cache (already holding
// positions 0..pos0+tokens). One block per (head, token); its warps take every GA_WARPS-th key,
// keep an online softmax each, and merge at the end. Lane l holds dims l, l+32, ... (head_dim
// up to 32 * GA_MAXD). window > 0: position p sees keys j with p - j < window.
// q, out: [tokens][n_heads][hd]. GQA: query head h reads kv head h / (n_heads / n_kv).
#define GA_WARPS 4
#define GA_MAXD 8
#define GA_NEG_BIG (-1.0e30f)
extern "C" __global__ void __launch_bounds__(GA_WARPS * 32)
    attn_rows_bf16(const float* __restrict__ q, const u16* __restrict__ kc, const u16* __restrict__ vc,
                   float* __restrict__ out, int n_heads, int n_kv, int hd, int max_seq, int pos0, float scale,
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
    const u16* kb = kc + (size_t)kvh * max_seq * hd;
    const u16* vb = vc + (size_t)kvh * max_seq * hd;
    for (int j = start + warp; j <= p; j += GA_WARPS) {
        float s = 0.0f;
#pragma unroll
        for (int d = 0; d < GA_MAXD; d++) {
            int i = lane + 32 * d;
            if (i < hd) s += qr[d] * bf16_to_f32(kb[(size_t)j * hd + i]);
        }
        s = warp_sum(s);
        float m_new = fmaxf(m, s);
        float corr = __expf(m - m_new), e = __expf(s - m_new);
        l = l * corr + e;
#pragma unroll
        for (int d = 0; d < GA_MAXD; d++) {
            int i = lane + 32 * d;
            if (i < hd) acc[d] = acc[d] * corr + e * bf16_to_f32(vb[(size_t)j * hd + i]);
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
#pragma unroll
    for (int b = 0; b < B; b++) {
        float v = warp_sum(acc[b]);
        if (lane == 0) y[(size_t)b * N + row] = v;
    }
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
#pragma unroll
    for (int b = 0; b < B; b++) {
        float v = warp_sum(acc[b]);
        if (lane == 0) y[(size_t)b * N + row] = v;
    }
}

#define MODEL_GEMV_INSTANCES(B)                                                                       \
    extern "C" __global__ void __launch_bounds__(128) gemv_f32_b##B(const float* w, const float* x,  \
                                                                    float* y, int N, int K) {         \
        gemv_f32_rows<B>(w, x, y, N, K);                                                              \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(128) gemv_q6_k_b##B(const u8* w, const float* x,    \
                                                                     float* y, int N, int K) {        \
        gemv_q6_k_rows<B>(w, x, y, N, K);                                                             \
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
