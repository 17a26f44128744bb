// Element-wise and normalization kernels of a llama-style decoder step. Activations are f32.

// y[r] = x[r] / rms(x[r]) * w, one block per row of n values.
extern "C" __global__ void rmsnorm_f32(const float* __restrict__ x, const float* __restrict__ w,
                                       float* __restrict__ y, int n, float eps) {
    PDL_ENTRY();
    const float* xr = x + (size_t)blockIdx.x * n;
    float* yr = y + (size_t)blockIdx.x * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss);
    float inv = rsqrtf(ss / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = xr[i] * inv * w[i];
}

// Rotary embedding in place on v = [n_heads][head_dim] for position *pos. neox != 0 rotates the
// pairs (i, i + head_dim/2) (Hugging Face llama); neox == 0 rotates (2i, 2i+1) (GGUF llama).
// The angle is computed in double so long positions keep full f32 accuracy.
extern "C" __global__ void rope_f32(float* __restrict__ v, int n_heads, int head_dim, const int* __restrict__ pos,
                                    float theta, int neox) {
    PDL_ENTRY();
    int half = head_dim >> 1;
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n_heads * half) return;
    int h = t / half, i = t % half;
    double freq = pow((double)theta, -2.0 * (double)i / (double)head_dim);
    double ang = (double)(*pos) * freq;
    float c = (float)cos(ang), s = (float)sin(ang);
    float* hv = v + (size_t)h * head_dim;
    int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
    float x0 = hv[a], x1 = hv[b];
    hv[a] = x0 * c - x1 * s;
    hv[b] = x0 * s + x1 * c;
}

// out[b][i] = silu(gu[b][i]) * gu[b][n + i]: gate and up come from one fused GEMV of 2n rows.
extern "C" __global__ void silu_mul_f32(const float* __restrict__ gu, float* __restrict__ out, int n) {
    PDL_ENTRY();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float* g = gu + (size_t)blockIdx.y * 2 * n;
    float a = g[i];
    out[(size_t)blockIdx.y * n + i] = a / (1.0f + expf(-a)) * g[n + i];
}

extern "C" __global__ void add_f32(float* __restrict__ a, const float* __restrict__ b, int n) {
    PDL_ENTRY();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) a[i] += b[i];
}

// out = table[*token] (bf16 rows of dim values); the token id stays on the device.
extern "C" __global__ void embed_bf16(const u16* __restrict__ table, const int* __restrict__ token,
                                      float* __restrict__ out, int dim) {
    PDL_ENTRY();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < dim) out[i] = bf16_to_f32(table[(size_t)(*token) * dim + i]);
}

// Append k and v ([n_kv][hd] f32) at position *pos of the bf16 caches [n_kv][max_seq][hd].
extern "C" __global__ void store_kv_bf16(const float* __restrict__ k, const float* __restrict__ v,
                                         u16* __restrict__ kc, u16* __restrict__ vc, int n_kv, int hd,
                                         int max_seq, const int* __restrict__ pos) {
    PDL_ENTRY();
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n_kv * hd) return;
    int h = t / hd, d = t % hd;
    size_t o = ((size_t)h * max_seq + *pos) * hd + d;
    kc[o] = f32_to_bf16(k[t]);
    vc[o] = f32_to_bf16(v[t]);
}

// Index of the largest value (first on ties), one block; also advances *pos for the next step.
extern "C" __global__ void argmax_f32(const float* __restrict__ x, int n, int* __restrict__ out,
                                      int* __restrict__ pos) {
    PDL_ENTRY();
    __shared__ float bv[32];
    __shared__ int bi[32];
    float best = -3.0e38f;
    int idx = 0x7fffffff;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = x[i];
        if (v > best) { best = v; idx = i; }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, best, o);
        int oi = __shfl_xor_sync(0xffffffffu, idx, o);
        if (ov > best || (ov == best && oi < idx)) { best = ov; idx = oi; }
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { bv[warp] = best; bi[warp] = idx; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++)
            if (bv[w] > best || (bv[w] == best && bi[w] < idx)) { best = bv[w]; idx = bi[w]; }
        *out = idx;
        if (pos) *pos += 1;
    }
}

extern "C" __global__ void fill_random_u32(u32* __restrict__ p, u64 n, u64 seed) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        p[i] = (u32)mix64(seed * 0x9e3779b97f4a7c15ull + i);
}

// Uniform in [lo, hi) as f16 (kind 0), bf16 (kind 1).
extern "C" __global__ void fill_random_half(u16* __restrict__ p, u64 n, u64 seed, float lo, float hi, int kind) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        float v = lo + (unit_rand(seed, i) + 1.0f) * 0.5f * (hi - lo);
        p[i] = kind == 0 ? f32_to_f16(v) : f32_to_bf16(v);
    }
}

extern "C" __global__ void fill_random_f32(float* __restrict__ p, u64 n, u64 seed, float lo, float hi) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        p[i] = lo + (unit_rand(seed, i) + 1.0f) * 0.5f * (hi - lo);
}

// Q4_K blocks with random nibbles and scales but finite f16 d/dmin in a sane range.
extern "C" __global__ void fill_random_q4_k(u8* __restrict__ p, u64 nblocks, u64 seed) {
    for (u64 blk = blockIdx.x * (u64)blockDim.x + threadIdx.x; blk < nblocks; blk += (u64)gridDim.x * blockDim.x) {
        u32* w = (u32*)(p + blk * 144);
        u16 d = f32_to_f16(0.001f + 0.001f * unit_rand(seed, 2 * blk));
        u16 dmin = f32_to_f16(0.001f + 0.0005f * unit_rand(seed, 2 * blk + 1));
        w[0] = (u32)d | ((u32)dmin << 16);
        for (int t = 1; t < 36; t++) w[t] = (u32)mix64(seed * 0x9e3779b97f4a7c15ull + blk * 64 + t + 0x1234567ull);
    }
}

// Q8_0 blocks: random int8 values and a small positive f16 scale.
extern "C" __global__ void fill_random_q8_0(u16* __restrict__ p, u64 nblocks, u64 seed) {
    for (u64 blk = blockIdx.x * (u64)blockDim.x + threadIdx.x; blk < nblocks; blk += (u64)gridDim.x * blockDim.x) {
        u16* b = p + blk * 17;
        b[0] = f32_to_f16(0.0005f + 0.0002f * unit_rand(seed, blk));
        for (int t = 1; t < 17; t++) b[t] = (u16)mix64(seed * 0x9e3779b97f4a7c15ull + blk * 32 + t + 0x7654321ull);
    }
}

// Fused decode-step kernels: each replaces several launches of the ones above (a launch costs a
// few microseconds even inside a CUDA graph, against ~1 us of work here).

// x[r] += delta[r]; y[r] = rmsnorm(x[r]) * w. One block per row (the residual add of one
// sub-layer and the norm of the next).
extern "C" __global__ void add_rmsnorm_f32(float* __restrict__ x, const float* __restrict__ delta,
                                           const float* __restrict__ w, float* __restrict__ y, int n, float eps) {
    PDL_ENTRY();
    float* xr = x + (size_t)blockIdx.x * n;
    const float* dr = delta + (size_t)blockIdx.x * n;
    float* yr = y + (size_t)blockIdx.x * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = xr[i] + dr[i];
        xr[i] = v;
        ss += v * v;
    }
    ss = block_sum(ss);
    float inv = rsqrtf(ss / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = xr[i] * inv * w[i];
}

// From the fused qkv GEMV output ([q: n_heads*hd][k: n_kv*hd][v: n_kv*hd]) at position *pos:
// q rotated into q_out, k rotated and v copied into the bf16 caches [n_kv][max_seq][hd].
// Same rotation as rope_f32 (angles in double).
extern "C" __global__ void qkv_rope_store_f32(const float* __restrict__ qkv, float* __restrict__ q_out,
                                              u16* __restrict__ kc, u16* __restrict__ vc, int n_heads, int n_kv,
                                              int hd, int max_seq, const int* __restrict__ pos, float theta,
                                              int neox) {
    PDL_ENTRY();
    int half = hd >> 1;
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    int nq = n_heads * half, nk = n_kv * half;
    int p = *pos;
    if (t < nq + nk) {
        bool is_q = t < nq;
        int tt = is_q ? t : t - nq;
        int h = tt / half, i = tt % half;
        double freq = pow((double)theta, -2.0 * (double)i / (double)hd);
        double ang = (double)p * freq;
        float c = (float)cos(ang), s = (float)sin(ang);
        const float* src = qkv + (is_q ? 0 : (size_t)n_heads * hd) + (size_t)h * hd;
        int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
        float x0 = src[a], x1 = src[b];
        float y0 = x0 * c - x1 * s, y1 = x0 * s + x1 * c;
        if (is_q) {
            q_out[(size_t)h * hd + a] = y0;
            q_out[(size_t)h * hd + b] = y1;
        } else {
            size_t o = ((size_t)h * max_seq + p) * hd;
            kc[o + a] = f32_to_bf16(y0);
            kc[o + b] = f32_to_bf16(y1);
        }
    } else if (t < nq + nk + n_kv * hd) {
        int tt = t - nq - nk;
        int h = tt / hd, d = tt % hd;
        vc[((size_t)h * max_seq + p) * hd + d] = f32_to_bf16(qkv[(size_t)(n_heads + n_kv) * hd + tt]);
    }
}
