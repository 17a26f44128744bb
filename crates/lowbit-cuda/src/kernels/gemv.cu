// Fused dequantize + matrix-vector product for decode (batch 1..8), one warp per output row.
// y[b][n] = sum_k W[n][k] * x[b][k]; x is f32 [B][K], y is f32 [B][N]. Weights stay packed in
// memory and are decoded in registers; each lane loads 16 bytes at a time, coalesced across
// the warp, and the activation values are re-read through L1.

#define GEMV_WARPS 4

// INT4 g128, symmetric: W is u32 [N][K/8], word w of a row holds elements 8w..8w+7 with element
// 8w+j in bits 4j..4j+3 (lowbit-formats pack order), stored as q + 8; scales are f16 [N][K/128].
// Requires K % 128 == 0. Each warp computes INT4_ROWS rows so that the activations a lane loads
// (8x the bytes of its weights) are reused across rows instead of re-read through L1 per row.
#define INT4_ROWS 4
template <int B>
__device__ __forceinline__ void gemv_int4_g128(const uint4* __restrict__ w, const u16* __restrict__ scales,
                                               const float* __restrict__ x, float* __restrict__ y, int N, int K) {
    int lane = threadIdx.x & 31;
    int row0 = (blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5)) * INT4_ROWS;
    if (row0 >= N) return;
    int nvec = K >> 5;  // 16-byte vectors (32 values) per row
    const uint4* wr[INT4_ROWS];
    const u16* sr[INT4_ROWS];
#pragma unroll
    for (int r = 0; r < INT4_ROWS; r++) {
        int row = min(row0 + r, N - 1);  // tail rows recompute the last row; not stored
        wr[r] = w + (size_t)row * nvec;
        sr[r] = scales + (size_t)row * (K >> 7);
    }
    float acc[INT4_ROWS][B];
#pragma unroll
    for (int r = 0; r < INT4_ROWS; r++)
#pragma unroll
        for (int b = 0; b < B; b++) acc[r][b] = 0.0f;
#pragma unroll 2
    for (int i = lane; i < nvec; i += 32) {
        uint4 q[INT4_ROWS];
        float s[INT4_ROWS];
#pragma unroll
        for (int r = 0; r < INT4_ROWS; r++) {
            q[r] = __ldg(wr[r] + i);
            s[r] = f16_to_f32(__ldg(sr[r] + (i >> 2)));
        }
#pragma unroll
        for (int b = 0; b < B; b++) {
            const float4* xb = (const float4*)(x + (size_t)b * K + (size_t)i * 32);
            float xs[32];
#pragma unroll
            for (int j = 0; j < 8; j++) {
                float4 a = __ldg(xb + j);
                xs[4 * j] = a.x; xs[4 * j + 1] = a.y; xs[4 * j + 2] = a.z; xs[4 * j + 3] = a.w;
            }
#pragma unroll
            for (int r = 0; r < INT4_ROWS; r++) {
                u32 words[4] = {q[r].x, q[r].y, q[r].z, q[r].w};
                float p = 0.0f;
#pragma unroll
                for (int j = 0; j < 4; j++)
#pragma unroll
                    for (int e = 0; e < 8; e++) p += nib(words[j], 4 * e, 8388616.0f) * xs[8 * j + e];
                acc[r][b] += s[r] * p;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < INT4_ROWS; r++)
#pragma unroll
        for (int b = 0; b < B; b++) {
            float v = warp_sum(acc[r][b]);
            if (lane == 0 && row0 + r < N) y[(size_t)b * N + row0 + r] = v;
        }
}

// Q8_0 (GGML): blocks of 34 bytes, f16 d then 32 int8; rows are K/32 blocks back to back.
// Blocks are only 2-byte aligned, so a lane reads its block as 17 u16.
template <int B>
__device__ __forceinline__ void gemv_q8_0(const u16* __restrict__ w, const float* __restrict__ x,
                                          float* __restrict__ y, int N, int K) {
    int lane = threadIdx.x & 31;
    int row = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (row >= N) return;
    int nblk = K >> 5;
    const u16* wr = w + (size_t)row * nblk * 17;
    float acc[B];
#pragma unroll
    for (int b = 0; b < B; b++) acc[b] = 0.0f;
#pragma unroll 2
    for (int i = lane; i < nblk; i += 32) {
        const u16* blk = wr + (size_t)i * 17;
        float d = f16_to_f32(__ldg(blk));
        u32 h[16];
#pragma unroll
        for (int t = 0; t < 16; t++) h[t] = __ldg(blk + 1 + t);
#pragma unroll
        for (int b = 0; b < B; b++) {
            const float4* xb = (const float4*)(x + (size_t)b * K + (size_t)i * 32);
            float p = 0.0f;
#pragma unroll
            for (int t = 0; t < 8; t++) {
                float4 a = __ldg(xb + t);
                u32 lo = h[2 * t], hi = h[2 * t + 1];
                p += (float)(signed char)(lo & 0xFF) * a.x + (float)(signed char)(lo >> 8) * a.y +
                     (float)(signed char)(hi & 0xFF) * a.z + (float)(signed char)(hi >> 8) * a.w;
            }
            acc[b] += d * p;
        }
    }
#pragma unroll
    for (int b = 0; b < B; b++) {
        float v = warp_sum(acc[b]);
        if (lane == 0) y[(size_t)b * N + row] = v;
    }
}

// Byte k (0..11) of the Q4_K scale field held in three words, without a local array.
__device__ __forceinline__ u32 scale_byte(u32 s0, u32 s1, u32 s2, int k) {
    u32 w = k < 4 ? s0 : (k < 8 ? s1 : s2);
    return (w >> (8 * (k & 3))) & 0xFFu;
}

// Q4_K (GGML): 144-byte blocks of 256 values: f16 d, f16 dmin, 12 bytes of 6-bit (scale, min)
// pairs, 128 bytes of nibbles. Four lanes share a block, one 64-value chunk c each: the low
// nibbles of qs[32c..32c+32] are sub-block 2c, the high nibbles sub-block 2c+1.
// y = (d * sc) * q - (dmin * m). Requires K % 256 == 0.
template <int B>
__device__ __forceinline__ void gemv_q4_k(const u8* __restrict__ w, const float* __restrict__ x,
                                          float* __restrict__ y, int N, int K) {
    int lane = threadIdx.x & 31;
    int row = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (row >= N) return;
    int nblk = K >> 8;
    const u8* wr = w + (size_t)row * nblk * 144;
    float acc[B];
#pragma unroll
    for (int b = 0; b < B; b++) acc[b] = 0.0f;
#pragma unroll 2
    for (int idx = lane; idx < nblk * 4; idx += 32) {
        int blk = idx >> 2, c = idx & 3;
        const u8* bp = wr + (size_t)blk * 144;
        uint4 head = __ldg((const uint4*)bp);  // d, dmin, scales[12]
        uint4 q0 = __ldg((const uint4*)(bp + 16 + 32 * c));
        uint4 q1 = __ldg((const uint4*)(bp + 32 + 32 * c));
        float d = f16_to_f32((u16)(head.x & 0xFFFF));
        float dmin = f16_to_f32((u16)(head.x >> 16));
        u32 s0 = head.y, s1 = head.z, s2 = head.w;
        int j = 2 * c;  // sub-blocks j and j + 1
        u32 sc1, m1, sc2, m2;
        if (j < 4) {
            sc1 = scale_byte(s0, s1, s2, j) & 63;
            m1 = scale_byte(s0, s1, s2, j + 4) & 63;
            sc2 = scale_byte(s0, s1, s2, j + 1) & 63;
            m2 = scale_byte(s0, s1, s2, j + 5) & 63;
        } else {
            sc1 = (scale_byte(s0, s1, s2, j + 4) & 0xF) | ((scale_byte(s0, s1, s2, j - 4) >> 6) << 4);
            m1 = (scale_byte(s0, s1, s2, j + 4) >> 4) | ((scale_byte(s0, s1, s2, j) >> 6) << 4);
            sc2 = (scale_byte(s0, s1, s2, j + 5) & 0xF) | ((scale_byte(s0, s1, s2, j - 3) >> 6) << 4);
            m2 = (scale_byte(s0, s1, s2, j + 5) >> 4) | ((scale_byte(s0, s1, s2, j + 1) >> 6) << 4);
        }
        float d1 = d * (float)sc1, mm1 = dmin * (float)m1;
        float d2 = d * (float)sc2, mm2 = dmin * (float)m2;
        u32 qw[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
#pragma unroll
        for (int b = 0; b < B; b++) {
            const float4* xb = (const float4*)(x + (size_t)b * K + (size_t)blk * 256 + 64 * c);
            float plo = 0.0f, phi = 0.0f, slo = 0.0f, shi = 0.0f;
#pragma unroll
            for (int t = 0; t < 8; t++) {
                float4 a = __ldg(xb + t);      // values 4t..4t+3 (low nibbles)
                float4 h = __ldg(xb + 8 + t);  // values 32+4t.. (high nibbles)
                u32 wd = qw[t];
                plo += nib(wd, 0, 8388608.0f) * a.x + nib(wd, 8, 8388608.0f) * a.y + nib(wd, 16, 8388608.0f) * a.z +
                       nib(wd, 24, 8388608.0f) * a.w;
                phi += nib(wd, 4, 8388608.0f) * h.x + nib(wd, 12, 8388608.0f) * h.y + nib(wd, 20, 8388608.0f) * h.z +
                       nib(wd, 28, 8388608.0f) * h.w;
                slo += a.x + a.y + a.z + a.w;
                shi += h.x + h.y + h.z + h.w;
            }
            acc[b] += d1 * plo - mm1 * slo + d2 * phi - mm2 * shi;
        }
    }
#pragma unroll
    for (int b = 0; b < B; b++) {
        float v = warp_sum(acc[b]);
        if (lane == 0) y[(size_t)b * N + row] = v;
    }
}

// bf16 weights, row-major [N][K]; each lane reads 8 values per 16-byte load. Requires K % 8 == 0.
template <int B>
__device__ __forceinline__ void gemv_bf16(const uint4* __restrict__ w, const float* __restrict__ x,
                                          float* __restrict__ y, int N, int K) {
    int lane = threadIdx.x & 31;
    int row = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (row >= N) return;
    int nvec = K >> 3;
    const uint4* wr = w + (size_t)row * nvec;
    float acc[B];
#pragma unroll
    for (int b = 0; b < B; b++) acc[b] = 0.0f;
#pragma unroll 4
    for (int i = lane; i < nvec; i += 32) {
        uint4 q = __ldg(wr + i);
        u32 words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
        for (int b = 0; b < B; b++) {
            const float4* xb = (const float4*)(x + (size_t)b * K + (size_t)i * 8);
            float4 a = __ldg(xb), c = __ldg(xb + 1);
            float xs[8] = {a.x, a.y, a.z, a.w, c.x, c.y, c.z, c.w};
            float p = 0.0f;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                p += __uint_as_float(words[j] << 16) * xs[2 * j] + __uint_as_float(words[j] & 0xFFFF0000u) * xs[2 * j + 1];
            }
            acc[b] += p;
        }
    }
#pragma unroll
    for (int b = 0; b < B; b++) {
        float v = warp_sum(acc[b]);
        if (lane == 0) y[(size_t)b * N + row] = v;
    }
}

#define GEMV_INSTANCES(B)                                                                                          \
    extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32) gemv_int4_g128_b##B(                            \
        const uint4* w, const u16* s, const float* x, float* y, int N, int K) {                                    \
        gemv_int4_g128<B>(w, s, x, y, N, K);                                                                       \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32) gemv_q8_0_b##B(const u16* w, const float* x,    \
                                                                                 float* y, int N, int K) {         \
        gemv_q8_0<B>(w, x, y, N, K);                                                                               \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32) gemv_q4_k_b##B(const u8* w, const float* x,     \
                                                                                 float* y, int N, int K) {         \
        gemv_q4_k<B>(w, x, y, N, K);                                                                               \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32) gemv_bf16_b##B(const uint4* w, const float* x,  \
                                                                                 float* y, int N, int K) {         \
        gemv_bf16<B>(w, x, y, N, K);                                                                               \
    }

GEMV_INSTANCES(1)
GEMV_INSTANCES(2)
GEMV_INSTANCES(3)
GEMV_INSTANCES(4)
GEMV_INSTANCES(5)
GEMV_INSTANCES(6)
GEMV_INSTANCES(7)
GEMV_INSTANCES(8)
