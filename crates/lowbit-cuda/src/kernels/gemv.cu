// Fused dequantize + matrix-vector product for decode (batch 1..8); Q8_0, Q4_K and bf16 use one
// warp per output row, INT4 a 16-row tensor-core tile per block.
// y[b][n] = sum_k W[n][k] * x[b][k]; x is f32 [B][K], y is f32 [B][N]. Weights stay packed in
// memory and are decoded in registers; each lane loads 16 bytes at a time, coalesced across
// the warp, and the activation values are re-read through L1.

#define GEMV_WARPS 4

// INT4 g128, symmetric: W is u32 [N][K/8], word w of a row holds elements 8w..8w+7 with element
// 8w+j in bits 4j..4j+3 (lowbit-formats pack order), stored as q + 8; scales are f16 [N][K/128].
// Requires K % 128 == 0.
//
// Tensor cores do the multiply: one mma.m16n8k16 (f16 in, f32 accumulate) takes a 16-row x
// 16-k tile of weights and a 16-k x 8 tile of activations (batch in the 8 columns, unused
// columns zero), so batch 1..8 costs one weight read. A block owns 16 rows; its INT4_WARPS warps
// split K by groups of 128 and add their partial sums in shared memory at the end.
//
// Lane (g = lane/4, t = lane%4) of a warp holds, per group, one 16-byte load of row g and one of
// row g+8, both covering k = 32t..32t+31 of the group: the four lanes of a quad read the 64
// contiguous bytes of a group-row. A dot product does not care how k is ordered, so each lane
// feeds its own 32 k values into the mma's k slots {2t, 2t+1, 2t+8, 2t+9} (8 mma per group) and
// builds the activation fragment for batch row g from the same k values. Codes become exact f16
// values with the 0x6400 exponent trick (f16 1024 + c), so only the activations are rounded
// (to f16, relative 2^-11); products and sums are f32.
#define INT4_WARPS 8
// Tuning knobs (overridable with LOWBIT_NVRTC_DEFINES, e.g. "-DINT4_PREFETCH=2"): groups whose
// weights are loaded ahead, whether their activations are loaded ahead too, mma chains per group,
// and the minimum resident blocks per SM asked of the register allocator.
#ifndef INT4_PREFETCH
#define INT4_PREFETCH 4
#endif
#ifndef INT4_ACT_EARLY
#define INT4_ACT_EARLY 0
#endif
#ifndef INT4_CHAINS
#define INT4_CHAINS 1
#endif
#ifndef INT4_MIN_BLOCKS
#define INT4_MIN_BLOCKS 1
#endif

__device__ __forceinline__ u32 lop3_and_or(u32 a, u32 b, u32 c) {
    u32 d;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(a), "r"(b), "r"(c));  // (a & b) | c
    return d;
}
__device__ __forceinline__ u32 hsub2(u32 a, u32 b) {
    u32 d;
    asm("sub.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}
__device__ __forceinline__ u32 hfma2(u32 a, u32 b, u32 c) {
    u32 d;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}
// (lo, hi) rounded to f16 and packed, lo in the low half.
__device__ __forceinline__ u32 pack_f16x2(float lo, float hi) {
    u32 d;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
}
// d += a * b for one m16n8k16 tile (fragment layouts as in the PTX ISA).
__device__ __forceinline__ void mma_f16_f32(float (&d)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Eight codes of one word (c_j in bits 4j..4j+3, value c_j - 8) as four exact f16 pairs:
// h[0] = (c0, c4), h[1] = (c1, c5), h[2] = (c2, c6), h[3] = (c3, c7), low half first.
__device__ __forceinline__ void int4x8_to_f16x2(u32 w, u32 (&h)[4]) {
    const u32 base = 0x64006400u;   // f16 1024 in both halves: a nibble ORed in bits 0..3 adds c
    const u32 sub = 0x64086408u;    // 1032 = 1024 + 8 (the code offset)
    const u32 sixteenth = 0x2C002C00u;
    const u32 neg72 = 0xD480D480u;  // (1024 + 16c) / 16 - 72 = c - 8
    h[0] = hsub2(lop3_and_or(w, 0x000F000Fu, base), sub);
    h[1] = hfma2(lop3_and_or(w, 0x00F000F0u, base), sixteenth, neg72);
    w >>= 8;
    h[2] = hsub2(lop3_and_or(w, 0x000F000Fu, base), sub);
    h[3] = hfma2(lop3_and_or(w, 0x00F000F0u, base), sixteenth, neg72);
}

template <int B>
__device__ __forceinline__ void gemv_int4_g128_mma(const uint4* __restrict__ w, const u16* __restrict__ scales,
                                                   const float* __restrict__ x, float* __restrict__ y, int N,
                                                   int K) {
    __shared__ float red[INT4_WARPS][16][8];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int g = lane >> 2, t = lane & 3;
    int row0 = blockIdx.x * 16;
    int ra = min(row0 + g, N - 1), rb = min(row0 + g + 8, N - 1);  // tail rows: loaded, not stored
    int ngroups = K >> 7, nvec = K >> 5;
    const uint4* wa = w + (size_t)ra * nvec + t;
    const uint4* wb = w + (size_t)rb * nvec + t;
    const u16* sa = scales + (size_t)ra * ngroups;
    const u16* sb = scales + (size_t)rb * ngroups;
    // Lane g supplies batch column g; columns >= B stay zero.
    const float4* xg = (const float4*)(x + (size_t)(g < B ? g : 0) * K + 32 * t);
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    // Weights of INT4_PREFETCH groups are loaded before any is used, so each warp keeps
    // 4 KB in flight: one group at a time leaves too few bytes in flight to cover DRAM latency.
    for (int kc = warp; kc < ngroups; kc += INT4_PREFETCH * INT4_WARPS) {
        uint4 qa[INT4_PREFETCH], qb[INT4_PREFETCH];
        float s_a[INT4_PREFETCH], s_b[INT4_PREFETCH];
#if INT4_ACT_EARLY
        float4 xall[INT4_PREFETCH][8];
#endif
#pragma unroll
        for (int i = 0; i < INT4_PREFETCH; i++) {
            int kg = kc + i * INT4_WARPS;
            if (kg < ngroups) {
                qa[i] = __ldg(wa + 4 * kg);
                qb[i] = __ldg(wb + 4 * kg);
                s_a[i] = f16_to_f32(__ldg(sa + kg));
                s_b[i] = f16_to_f32(__ldg(sb + kg));
            } else {
                qa[i] = qb[i] = make_uint4(0u, 0u, 0u, 0u);
                s_a[i] = s_b[i] = 0.0f;
            }
#if INT4_ACT_EARLY
#pragma unroll
            for (int j = 0; j < 8; j++)
                xall[i][j] = (g < B && kg < ngroups) ? __ldg(xg + 32 * kg + j) : make_float4(0.f, 0.f, 0.f, 0.f);
#endif
        }
#pragma unroll
        for (int i = 0; i < INT4_PREFETCH; i++) {
            int kg = kc + i * INT4_WARPS;
            if (kg >= ngroups) break;
#if INT4_ACT_EARLY
            float4* xv = xall[i];
#else
            float4 xv[8];
#pragma unroll
            for (int j = 0; j < 8; j++) xv[j] = g < B ? __ldg(xg + 32 * kg + j) : make_float4(0.f, 0.f, 0.f, 0.f);
#endif
            u32 wda[4] = {qa[i].x, qa[i].y, qa[i].z, qa[i].w}, wdb[4] = {qb[i].x, qb[i].y, qb[i].z, qb[i].w};
            // INT4_CHAINS=2 splits the dependent mma chain in two (measured: within noise).
            float part[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                // Word j covers k = 8j..8j+7 of this lane's 32: float4 lo = k 0..3, hi = k 4..7.
                float4 lo = xv[2 * j], hi = xv[2 * j + 1];
                u32 ha[4], hb[4];
                int4x8_to_f16x2(wda[j], ha);
                int4x8_to_f16x2(wdb[j], hb);
                float(&p)[4] = part[INT4_CHAINS == 2 ? (j & 1) : 0];
                mma_f16_f32(p, ha[0], hb[0], ha[1], hb[1], pack_f16x2(lo.x, hi.x), pack_f16x2(lo.y, hi.y));
                mma_f16_f32(p, ha[2], hb[2], ha[3], hb[3], pack_f16x2(lo.z, hi.z), pack_f16x2(lo.w, hi.w));
            }
            // part: [0], [1] = row g, batch 2t, 2t+1; [2], [3] = row g+8.
            acc[0] += s_a[i] * (part[0][0] + part[1][0]);
            acc[1] += s_a[i] * (part[0][1] + part[1][1]);
            acc[2] += s_b[i] * (part[0][2] + part[1][2]);
            acc[3] += s_b[i] * (part[0][3] + part[1][3]);
        }
    }
    red[warp][g][2 * t] = acc[0];
    red[warp][g][2 * t + 1] = acc[1];
    red[warp][g + 8][2 * t] = acc[2];
    red[warp][g + 8][2 * t + 1] = acc[3];
    __syncthreads();
    if (threadIdx.x < 16 * 8) {
        int r = threadIdx.x >> 3, b = threadIdx.x & 7;
        float v = 0.0f;
#pragma unroll
        for (int i = 0; i < INT4_WARPS; i++) v += red[i][r][b];
        if (b < B && row0 + r < N) y[(size_t)b * N + row0 + r] = v;
    }
}

// INT4 g128 with the activations staged in shared memory as f16 (the "staged" kernels).
// The kernel above re-reads 128 B of f32 activations per 16 B of weights through L1 and
// converts them in every lane; Nsight showed its stalls waiting on those loads. Here a block
// first copies its activations into shared memory, already rounded to f16 and permuted so that
// a lane's four 16-byte shared loads per group are exactly its eight mma B fragments, then
// streams the weights as before.
//
// Permuted layout of one batch row (K/8 uint4 per row): in group q, uint4 slot 4j + t holds lane
// t's pairs for word j, i.e. k = 32t + 8j + {(0,4), (1,5), (2,6), (3,7)} within the group; so the
// four lanes of a quad read 64 contiguous bytes per j (no bank conflicts).
// Chunk c (values 8c..8c+7 of a row, K % 128 == 0) goes to slot int4_act_slot(c).
__device__ __forceinline__ int int4_act_slot(int c) { return (c & ~15) | ((c & 3) << 2) | ((c >> 2) & 3); }
__device__ __forceinline__ uint4 int4_act_pack(float4 lo, float4 hi) {
    return make_uint4(pack_f16x2(lo.x, hi.x), pack_f16x2(lo.y, hi.y), pack_f16x2(lo.z, hi.z), pack_f16x2(lo.w, hi.w));
}

// Pre-pass: x f32 [B][K] -> xh in the permuted f16 layout ([B][K/8] uint4), so the GEMV copies
// 2 bytes per value into shared memory instead of reading and converting 4.
extern "C" __global__ void int4_act_to_f16(const float4* __restrict__ x, uint4* __restrict__ xh, int nchunks) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c < nchunks) xh[int4_act_slot(c)] = int4_act_pack(__ldg(x + 2 * c), __ldg(x + 2 * c + 1));
}

#ifndef INT4S_PREFETCH
#define INT4S_PREFETCH 4
#endif

// RT row tiles of 16 rows per block; the INT4_WARPS / RT warps of a tile split K by groups.
// XH: the source is the pre-pass output (f16, permuted) instead of f32 x. Dynamic shared memory:
// B rows of K/8 + 4 uint4 (the 64-byte pad puts batch rows on different banks).
template <int B, int RT, bool XH>
__device__ __forceinline__ void gemv_int4_g128_staged(const uint4* __restrict__ w, const u16* __restrict__ scales,
                                                      const void* __restrict__ xsrc, float* __restrict__ y, int N,
                                                      int K) {
    extern __shared__ uint4 xs[];
    __shared__ float red[INT4_WARPS][16][8];
    constexpr int KW = INT4_WARPS / RT;
    constexpr int P = INT4S_PREFETCH;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int g = lane >> 2, t = lane & 3;
    int tile = warp / KW, kw = warp % KW;
    int row0 = (blockIdx.x * RT + tile) * 16;
    int ra = min(row0 + g, N - 1), rb = min(row0 + g + 8, N - 1);  // tail rows: loaded, not stored
    int ngroups = K >> 7, nvec = K >> 5, rchunks = K >> 3, rstride = rchunks + 4;
    const uint4* wa = w + (size_t)ra * nvec + t;
    const uint4* wb = w + (size_t)rb * nvec + t;
    const u16* sa = scales + (size_t)ra * ngroups;
    const u16* sb = scales + (size_t)rb * ngroups;
    uint4 qa[P], qb[P];
    float s_a[P], s_b[P];
    // Weight loads of the first P groups go out before the staging, so they overlap it.
#define INT4S_LOAD(KC)                                                          \
    _Pragma("unroll") for (int i = 0; i < P; i++) {                             \
        int kg = (KC) + i * KW;                                                 \
        if (kg < ngroups) {                                                     \
            qa[i] = __ldg(wa + 4 * kg);                                         \
            qb[i] = __ldg(wb + 4 * kg);                                         \
            s_a[i] = f16_to_f32(__ldg(sa + kg));                                \
            s_b[i] = f16_to_f32(__ldg(sb + kg));                                \
        }                                                                       \
    }
    INT4S_LOAD(kw)
    for (int c = threadIdx.x; c < B * rchunks; c += blockDim.x) {
        int b = c / rchunks, cc = c - b * rchunks;
        if (XH) {
            xs[b * rstride + cc] = __ldg((const uint4*)xsrc + c);
        } else {
            const float4* xf = (const float4*)xsrc + 2 * c;
            xs[b * rstride + int4_act_slot(cc)] = int4_act_pack(__ldg(xf), __ldg(xf + 1));
        }
    }
    __syncthreads();
    // Lanes of batch columns >= B read row 0: those mma columns are computed and never stored.
    const uint4* xr = xs + (g < B ? g : 0) * rstride + t;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int kc = kw; kc < ngroups; kc += P * KW) {
#pragma unroll
        for (int i = 0; i < P; i++) {
            int kg = kc + i * KW;
            if (kg >= ngroups) break;
            u32 wda[4] = {qa[i].x, qa[i].y, qa[i].z, qa[i].w}, wdb[4] = {qb[i].x, qb[i].y, qb[i].z, qb[i].w};
            float p[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                uint4 xv = xr[kg * 16 + 4 * j];
                u32 ha[4], hb[4];
                int4x8_to_f16x2(wda[j], ha);
                int4x8_to_f16x2(wdb[j], hb);
                mma_f16_f32(p, ha[0], hb[0], ha[1], hb[1], xv.x, xv.y);
                mma_f16_f32(p, ha[2], hb[2], ha[3], hb[3], xv.z, xv.w);
            }
            acc[0] += s_a[i] * p[0];
            acc[1] += s_a[i] * p[1];
            acc[2] += s_b[i] * p[2];
            acc[3] += s_b[i] * p[3];
        }
        INT4S_LOAD(kc + P * KW)
    }
#undef INT4S_LOAD
    red[warp][g][2 * t] = acc[0];
    red[warp][g][2 * t + 1] = acc[1];
    red[warp][g + 8][2 * t] = acc[2];
    red[warp][g + 8][2 * t + 1] = acc[3];
    __syncthreads();
    if (threadIdx.x < RT * 128) {
        int tl = threadIdx.x >> 7, r = (threadIdx.x >> 3) & 15, b = threadIdx.x & 7;
        int row = (blockIdx.x * RT + tl) * 16 + r;
        float v = 0.0f;
#pragma unroll
        for (int i = 0; i < KW; i++) v += red[tl * KW + i][r][b];
        if (b < B && row < N) y[(size_t)b * N + row] = v;
    }
}

#define INT4_STAGED_INSTANCE(B, RT, SRC, XH)                                                               \
    extern "C" __global__ void __launch_bounds__(INT4_WARPS * 32, INT4_MIN_BLOCKS)                         \
        gemv_int4_g128_s##RT##_##SRC##_b##B(const uint4* w, const u16* s, const void* x, float* y, int N,  \
                                            int K) {                                                       \
        gemv_int4_g128_staged<B, RT, XH>(w, s, x, y, N, K);                                                \
    }
#define INT4_STAGED_INSTANCES(B)            \
    INT4_STAGED_INSTANCE(B, 1, f32, false)  \
    INT4_STAGED_INSTANCE(B, 2, f32, false)  \
    INT4_STAGED_INSTANCE(B, 1, f16, true)   \
    INT4_STAGED_INSTANCE(B, 2, f16, true)
INT4_STAGED_INSTANCES(1)
INT4_STAGED_INSTANCES(2)
INT4_STAGED_INSTANCES(3)
INT4_STAGED_INSTANCES(4)
INT4_STAGED_INSTANCES(5)
INT4_STAGED_INSTANCES(6)
INT4_STAGED_INSTANCES(7)
INT4_STAGED_INSTANCES(8)

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
    extern "C" __global__ void __launch_bounds__(INT4_WARPS * 32, INT4_MIN_BLOCKS) gemv_int4_g128_b##B(                          \
        const uint4* w, const u16* s, const float* x, float* y, int N, int K) {                                    \
        gemv_int4_g128_mma<B>(w, s, x, y, N, K);                                                                   \
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
