// Fused dequantize + matrix-vector product for decode (batch 1..8); Q8_0, Q4_K and bf16 use one
// warp per output row, INT4 a 16-row tensor-core tile per block.
// y[b][n] = sum_k W[n][k] * x[b][k]; x is f32 [B][K], y is f32 [B][N]. Weights stay packed in
// memory and are decoded in registers; each lane loads 16 bytes at a time, coalesced across
// the warp, and the activation values are re-read through L1.

#define GEMV_WARPS 4
// Blocks whose loads a lane issues together in the k-quant and FP4 GEMVs (memory parallelism).
#ifndef GEMV_STEPS
#define GEMV_STEPS 4
#endif

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
    PDL_ENTRY();
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
    PDL_ENTRY();
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
    PDL_ENTRY();
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
// Eight lanes share a block, four values each, so a warp covers 4 consecutive blocks (128
// values) per step and its activation loads are one contiguous 512-byte run (coalesced; a
// block per lane made every float4 load touch 32 separate lines). Blocks are only 2-byte
// aligned: a lane reads its 4 codes as two u16.
template <int B>
__device__ __forceinline__ void gemv_q8_0(const u16* __restrict__ w, const float* __restrict__ x,
                                          float* __restrict__ y, int N, int K) {
    PDL_ENTRY();
    int lane = threadIdx.x & 31;
    int row = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (row >= N) return;
    int nblk = K >> 5;
    const u16* wr = w + (size_t)row * nblk * 17;
    int sub = lane >> 3, g = lane & 7;  // block within the step, 4-value group within the block
    float acc[B];
#pragma unroll
    for (int b = 0; b < B; b++) acc[b] = 0.0f;
#pragma unroll 4
    for (int i = sub; i < nblk; i += 4) {
        const u16* blk = wr + (size_t)i * 17;
        float d = f16_to_f32(__ldg(blk));
        u32 lo = __ldg(blk + 1 + 2 * g), hi = __ldg(blk + 2 + 2 * g);
        float w0 = (float)(signed char)(lo & 0xFF), w1 = (float)(signed char)(lo >> 8);
        float w2 = (float)(signed char)(hi & 0xFF), w3 = (float)(signed char)(hi >> 8);
#pragma unroll
        for (int b = 0; b < B; b++) {
            float4 a = __ldg((const float4*)(x + (size_t)b * K + (size_t)i * 32 + 4 * g));
            acc[b] += d * (w0 * a.x + w1 * a.y + w2 * a.z + w3 * a.w);
        }
    }
    warp_store_rows<B>(acc, y, N, row);
}

// Byte k (0..11) of the Q4_K scale field held in three words, without a local array.
__device__ __forceinline__ u32 scale_byte(u32 s0, u32 s1, u32 s2, int k) {
    u32 w = k < 4 ? s0 : (k < 8 ? s1 : s2);
    return (w >> (8 * (k & 3))) & 0xFFu;
}

// Q4_K (GGML): 144-byte blocks of 256 values: f16 d, f16 dmin, 12 bytes of 6-bit (scale, min)
// pairs, 128 bytes of nibbles; the low nibbles of qs[32c..32c+32] are sub-block 2c, the high
// nibbles sub-block 2c+1. y = (d * sc) * q - (dmin * m). A warp takes one block per step:
// lane w reads qs word w (chunk c = w / 8, bytes 4(w % 8)..+3), i.e. values 64c + 4(w % 8)..+3
// and 32 more, so the warp's code loads are one 128-byte run and its activation loads two
// contiguous 512-byte runs (coalesced). Requires K % 256 == 0.
template <int B>
__device__ __forceinline__ void gemv_q4_k(const u8* __restrict__ w, const float* __restrict__ x,
                                          float* __restrict__ y, int N, int K) {
    PDL_ENTRY();
    int lane = threadIdx.x & 31;
    int row = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (row >= N) return;
    int nblk = K >> 8;
    const u8* wr = w + (size_t)row * nblk * 144;
    int c = lane >> 3, off = 64 * c + 4 * (lane & 7);
    int j = 2 * c;  // sub-blocks j (low nibbles) and j + 1 (high nibbles)
    float acc[B];
#pragma unroll
    for (int b = 0; b < B; b++) acc[b] = 0.0f;
    // GEMV_STEPS blocks per iteration, their loads issued before any math: enough bytes in
    // flight per warp to cover the memory latency.
    for (int blk0 = 0; blk0 < nblk; blk0 += GEMV_STEPS) {
        uint4 heads[GEMV_STEPS];
        u32 wds[GEMV_STEPS];
#pragma unroll
        for (int u = 0; u < GEMV_STEPS; u++) {
            if (blk0 + u < nblk) {
                const u8* bp = wr + (size_t)(blk0 + u) * 144;
                heads[u] = __ldg((const uint4*)bp);  // d, dmin, scales[12]
                wds[u] = __ldg((const u32*)(bp + 16) + lane);
            }
        }
#pragma unroll
        for (int u = 0; u < GEMV_STEPS; u++) {
            int blk = blk0 + u;
            if (blk >= nblk) break;
            uint4 head = heads[u];
            u32 wd = wds[u];
            float d = f16_to_f32((u16)(head.x & 0xFFFF));
            float dmin = f16_to_f32((u16)(head.x >> 16));
            u32 s0 = head.y, s1 = head.z, s2 = head.w;
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
#pragma unroll
            for (int b = 0; b < B; b++) {
                const float* xb = x + (size_t)b * K + (size_t)blk * 256 + off;
                float4 a = __ldg((const float4*)xb), h = __ldg((const float4*)(xb + 32));
                float plo = nib(wd, 0, 8388608.0f) * a.x + nib(wd, 8, 8388608.0f) * a.y +
                            nib(wd, 16, 8388608.0f) * a.z + nib(wd, 24, 8388608.0f) * a.w;
                float phi = nib(wd, 4, 8388608.0f) * h.x + nib(wd, 12, 8388608.0f) * h.y +
                            nib(wd, 20, 8388608.0f) * h.z + nib(wd, 28, 8388608.0f) * h.w;
                float slo = a.x + a.y + a.z + a.w, shi = h.x + h.y + h.z + h.w;
                acc[b] += d1 * plo - mm1 * slo + d2 * phi - mm2 * shi;
            }
        }
    }
    warp_store_rows<B>(acc, y, N, row);
}

// bf16 weights, row-major [N][K]; each lane reads 8 values per 16-byte load. Requires K % 8 == 0.
template <int B>
__device__ __forceinline__ void gemv_bf16(const uint4* __restrict__ w, const float* __restrict__ x,
                                          float* __restrict__ y, int N, int K) {
    PDL_ENTRY();
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
    warp_store_rows<B>(acc, y, N, row);
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

// ---------------------------------------------------------------------------------------------
// INT4 g128 in the tiled layout ("int4g128t"), streamed by a persistent grid (batch 1..16).
//
// Why: the row-major kernels above top out at 50-60% of copy bandwidth at batch 1. Each warp
// load touches 8 rows x 64 bytes (scattered 64-byte pieces of rows K/2 bytes apart), and each
// block does one short round of loads, a reduction and exits, so the memory pipe idles between
// block generations and in the last partial wave. Here the weights are repacked once, at upload,
// so that the unit of work -- 16 rows x one group of 128 -- is 1 KB of contiguous bytes laid out
// exactly as the warp's registers want them, and the grid has one or two blocks per SM whose
// warps each stream one contiguous range of units, loading the next P units while computing
// the current ones.
//
// Layout: tiles of 16 rows (the last padded), unit u = tile * (K/128) + group at byte u * 1024.
// In a unit, lane L (g = L/4, t = L%4) finds at uint4 index L the 32 codes of row g, k = 32t..
// 32t+31 of the group (four u32 words in lowbit-formats' pack order, codes q + 8), and at uint4
// index 32 + L the same for row g + 8. Scales: f16, 16 per unit (rows 0..15 of the tile) at
// u * 16. The mma use is the same as gemv_int4_g128_mma: batch columns ride in the mma's N = 8
// (two mma column tiles for batch 9..16).
//
// A tile whose units are split between warps is finished through a workspace: each warp adds
// its partial sums into ws[tile] (f32 atomics at L2) and then its unit count into
// counters[tile]; the warp that completes the count writes y from ws and clears ws and the
// counter again, so the workspace is all zeros between launches. Warps that own a whole tile
// write y directly. (With three or more warps on one tile the order of the float additions
// varies between runs; with two it does not.)
#ifndef INT4T_P
#define INT4T_P 2
#endif
#ifndef INT4T_WARPS
#define INT4T_WARPS 8
#endif

#ifndef INT4T_LDG
#define INT4T_LDG 0
#endif
__device__ __forceinline__ uint4 ld_stream_u4(const uint4* p) {
#if INT4T_LDG
    return __ldg(p);
#endif
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

template <int B>
__device__ __forceinline__ void int4t_flush(const float (&acc)[(B + 7) / 8][4], int tile, int u0, int u1,
                                            int G, int N, int g, int t, int lane, float* __restrict__ y,
                                            float* __restrict__ ws, unsigned* __restrict__ counters) {
    constexpr int NB = (B + 7) / 8;
    int first = tile * G, last = first + G;
    int ra = tile * 16 + g, rb = ra + 8;
    if (first >= u0 && last <= u1) {
#pragma unroll
        for (int c = 0; c < NB; c++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int b = 8 * c + 2 * t + h;
                if (b < B) {
                    if (ra < N) y[(size_t)b * N + ra] = acc[c][h];
                    if (rb < N) y[(size_t)b * N + rb] = acc[c][2 + h];
                }
            }
        return;
    }
    float* wt = ws + (size_t)tile * 256;  // [16 rows][16 batch]
#pragma unroll
    for (int c = 0; c < NB; c++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            int b = 8 * c + 2 * t + h;
            if (b < B) {
                atomicAdd(wt + g * 16 + b, acc[c][h]);
                atomicAdd(wt + (g + 8) * 16 + b, acc[c][2 + h]);
            }
        }
    __threadfence();
    __syncwarp();
    unsigned mine = (unsigned)(min(last, u1) - max(first, u0));
    unsigned old = 0;
    if (lane == 0) old = atomicAdd(counters + tile, mine);
    old = __shfl_sync(0xffffffffu, old, 0);
    if (old + mine != (unsigned)G) return;
    __threadfence();
#pragma unroll
    for (int c = 0; c < NB; c++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            int b = 8 * c + 2 * t + h;
            if (b < B) {
                float va = __ldcg(wt + g * 16 + b), vb = __ldcg(wt + (g + 8) * 16 + b);
                __stcg(wt + g * 16 + b, 0.0f);
                __stcg(wt + (g + 8) * 16 + b, 0.0f);
                if (ra < N) y[(size_t)b * N + ra] = va;
                if (rb < N) y[(size_t)b * N + rb] = vb;
            }
        }
    if (lane == 0) counters[tile] = 0u;
}

// Activations: with SMEM, each (persistent) block first copies x into shared memory as f16 in
// the permuted layout of the staged kernels (a lane's four 16-byte loads per group are its mma
// B fragments), once per launch; otherwise lanes read f32 x through L1 and convert per use.
// Index arithmetic is 32-bit and incremental: no division in the loop (a 64-bit division per
// unit cost as much as the rest of the unit in the first version).
template <int B, bool SMEM>
__device__ __forceinline__ void gemv_int4t(const uint4* __restrict__ w, const u16* __restrict__ scales,
                                           const float* __restrict__ x, float* __restrict__ y,
                                           float* __restrict__ ws, unsigned* __restrict__ counters, int N, int K) {
    constexpr int NB = (B + 7) / 8;
    constexpr int P = INT4T_P;
    extern __shared__ uint4 xs[];
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    int nwarps = gridDim.x * (blockDim.x >> 5);
    int wid = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int G = K >> 7;
    int U = ((N + 15) >> 4) * G;
    int u0 = (int)((long long)wid * U / nwarps), u1 = (int)((long long)(wid + 1) * U / nwarps);
    int cnt = u1 - u0;
    const uint4* wp = w + (size_t)u0 * 64 + lane;
    const u16* sp = scales + (size_t)u0 * 16 + g;
    uint4 qa[2][P], qb[2][P];
    float sa[2][P], sb[2][P];
#define INT4T_LOAD(BUF, OFF)                                                 \
    _Pragma("unroll") for (int i = 0; i < P; i++) {                          \
        int o = (OFF) + i;                                                   \
        if (o < cnt) {                                                       \
            qa[BUF][i] = ld_stream_u4(wp + o * 64);                          \
            qb[BUF][i] = ld_stream_u4(wp + o * 64 + 32);                     \
            sa[BUF][i] = f16_to_f32(__ldg(sp + o * 16));                     \
            sb[BUF][i] = f16_to_f32(__ldg(sp + o * 16 + 8));                 \
        }                                                                    \
    }
    // The first weights go out before waiting on the previous kernel (programmatic dependent
    // launch): they are constant, and their latency then overlaps that kernel's tail.
    pdl_launch_dependents();
    INT4T_LOAD(0, 0)
    pdl_wait();
    int rstride = (K >> 3) + 4;
    if (SMEM) {
        int rchunks = K >> 3;
        for (int c = threadIdx.x; c < B * rchunks; c += blockDim.x) {
            int b = c / rchunks, cc = c - b * rchunks;
            const float4* xf = (const float4*)x + 2 * c;
            xs[b * rstride + int4_act_slot(cc)] = int4_act_pack(__ldg(xf), __ldg(xf + 1));
        }
        __syncthreads();
    }
    if (cnt <= 0) return;
    int tile = u0 / G, grp = u0 - tile * G;
    // Lane g supplies batch column 8c + g of column tile c; columns >= B read row 0 and are
    // never stored.
    const uint4* xsr[NB];
    const float4* xfr[NB];
#pragma unroll
    for (int c = 0; c < NB; c++) {
        int b = 8 * c + g < B ? 8 * c + g : 0;
        xsr[c] = xs + b * rstride + t;
        xfr[c] = (const float4*)(x + (size_t)b * K + 32 * t);
    }
    float acc[NB][4];
#pragma unroll
    for (int c = 0; c < NB; c++) acc[c][0] = acc[c][1] = acc[c][2] = acc[c][3] = 0.0f;
#define INT4T_COMPUTE(BUF, OFF)                                                                        \
    _Pragma("unroll") for (int i = 0; i < P; i++) {                                                    \
        if ((OFF) + i < cnt) {                                                                         \
            u32 wda[4] = {qa[BUF][i].x, qa[BUF][i].y, qa[BUF][i].z, qa[BUF][i].w};                     \
            u32 wdb[4] = {qb[BUF][i].x, qb[BUF][i].y, qb[BUF][i].z, qb[BUF][i].w};                     \
            float p[NB][4];                                                                            \
            _Pragma("unroll") for (int c = 0; c < NB; c++) p[c][0] = p[c][1] = p[c][2] = p[c][3] = 0.0f; \
            _Pragma("unroll") for (int j = 0; j < 4; j++) {                                            \
                u32 ha[4], hb[4];                                                                      \
                int4x8_to_f16x2(wda[j], ha);                                                           \
                int4x8_to_f16x2(wdb[j], hb);                                                           \
                _Pragma("unroll") for (int c = 0; c < NB; c++) {                                       \
                    u32 b0, b1, b2, b3;                                                                \
                    if (SMEM) {                                                                        \
                        uint4 xv = xsr[c][grp * 16 + 4 * j];                                           \
                        b0 = xv.x; b1 = xv.y; b2 = xv.z; b3 = xv.w;                                    \
                    } else {                                                                           \
                        float4 lo = __ldg(xfr[c] + 32 * grp + 2 * j), hi = __ldg(xfr[c] + 32 * grp + 2 * j + 1); \
                        b0 = pack_f16x2(lo.x, hi.x); b1 = pack_f16x2(lo.y, hi.y);                      \
                        b2 = pack_f16x2(lo.z, hi.z); b3 = pack_f16x2(lo.w, hi.w);                      \
                    }                                                                                  \
                    mma_f16_f32(p[c], ha[0], hb[0], ha[1], hb[1], b0, b1);                             \
                    mma_f16_f32(p[c], ha[2], hb[2], ha[3], hb[3], b2, b3);                             \
                }                                                                                      \
            }                                                                                          \
            _Pragma("unroll") for (int c = 0; c < NB; c++) {                                           \
                acc[c][0] += sa[BUF][i] * p[c][0];                                                     \
                acc[c][1] += sa[BUF][i] * p[c][1];                                                     \
                acc[c][2] += sb[BUF][i] * p[c][2];                                                     \
                acc[c][3] += sb[BUF][i] * p[c][3];                                                     \
            }                                                                                          \
            if (++grp == G) {                                                                          \
                int4t_flush<B>(acc, tile, u0, u1, G, N, g, t, lane, y, ws, counters);                  \
                _Pragma("unroll") for (int c = 0; c < NB; c++) acc[c][0] = acc[c][1] = acc[c][2] = acc[c][3] = 0.0f; \
                tile++;                                                                                \
                grp = 0;                                                                               \
            }                                                                                          \
        }                                                                                              \
    }
    for (int n = 0; n < cnt; n += 2 * P) {
        INT4T_LOAD(1, n + P)
        INT4T_COMPUTE(0, n)
        INT4T_LOAD(0, n + 2 * P)
        INT4T_COMPUTE(1, n + P)
    }
#undef INT4T_LOAD
#undef INT4T_COMPUTE
    if (grp != 0) int4t_flush<B>(acc, tile, u0, u1, G, N, g, t, lane, y, ws, counters);
}

#define INT4T_INSTANCE(B)                                                                                    \
    extern "C" __global__ void __launch_bounds__(INT4T_WARPS * 32) gemv_int4t_b##B(                          \
        const uint4* w, const u16* s, const float* x, float* y, float* ws, unsigned* counters, int N, int K) { \
        gemv_int4t<B, false>(w, s, x, y, ws, counters, N, K);                                                \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(INT4T_WARPS * 32) gemv_int4t_smem_b##B(                     \
        const uint4* w, const u16* s, const float* x, float* y, float* ws, unsigned* counters, int N, int K) { \
        gemv_int4t<B, true>(w, s, x, y, ws, counters, N, K);                                                 \
    }
INT4T_INSTANCE(1)
INT4T_INSTANCE(2)
INT4T_INSTANCE(3)
INT4T_INSTANCE(4)
INT4T_INSTANCE(5)
INT4T_INSTANCE(6)
INT4T_INSTANCE(7)
INT4T_INSTANCE(8)
INT4T_INSTANCE(9)
INT4T_INSTANCE(10)
INT4T_INSTANCE(11)
INT4T_INSTANCE(12)
INT4T_INSTANCE(13)
INT4T_INSTANCE(14)
INT4T_INSTANCE(15)
INT4T_INSTANCE(16)
