// Decode attention over a bf16 KV cache, split-K (flash-decoding): pass 1 gives each
// (head, split) block a slice of the positions and writes an unnormalized partial output with
// its running max m and sum l; pass 2 merges the splits of each head. GQA: query head h reads
// kv head h / (n_heads / n_kv).
// q: f32 [n_heads][HD]; caches: bf16 [n_kv][max_seq][HD]; part_o: f32 [n_heads][n_splits][HD];
// part_ml: f32 [n_heads][n_splits][2]; out: f32 [n_heads][HD].

#define ATTN_WARPS 4
#define NEG_BIG (-1.0e30f)  // stands for -inf so that exp(m - m_new) of an empty split is 0, not NaN

template <int HD>
__device__ __forceinline__ void attn_split(const float* __restrict__ q, const u16* __restrict__ kc,
                                           const u16* __restrict__ vc, float* __restrict__ part_o,
                                           float* __restrict__ part_ml, int n_heads, int n_kv, int max_seq,
                                           const int* __restrict__ last_pos, int split_len, float scale) {
    PDL_ENTRY();
    constexpr int D = HD / 32;  // dims per lane
    __shared__ float sm_m[ATTN_WARPS], sm_l[ATTN_WARPS];
    __shared__ float sm_acc[ATTN_WARPS][HD];
    int head = blockIdx.x, split = blockIdx.y, n_splits = gridDim.y;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int kvh = head / (n_heads / n_kv);
    int seq_len = *last_pos + 1;  // positions 0..=last_pos are in the cache
    int start = split * split_len;
    int end = min(seq_len, start + split_len);
    float qr[D];
#pragma unroll
    for (int d = 0; d < D; d++) qr[d] = q[(size_t)head * HD + lane * D + d] * scale;
    float m = NEG_BIG, l = 0.0f, acc[D];
#pragma unroll
    for (int d = 0; d < D; d++) acc[d] = 0.0f;
    const u16* kbase = kc + (size_t)kvh * max_seq * HD + lane * D;
    const u16* vbase = vc + (size_t)kvh * max_seq * HD + lane * D;
    for (int p = start + warp; p < end; p += ATTN_WARPS) {
        float kv[D], vv[D];
#pragma unroll
        for (int d = 0; d < D; d++) {
            kv[d] = bf16_to_f32(kbase[(size_t)p * HD + d]);
            vv[d] = bf16_to_f32(vbase[(size_t)p * HD + d]);
        }
        float s = 0.0f;
#pragma unroll
        for (int d = 0; d < D; d++) s += qr[d] * kv[d];
        s = warp_sum(s);
        float m_new = fmaxf(m, s);
        float corr = __expf(m - m_new), e = __expf(s - m_new);
        l = l * corr + e;
#pragma unroll
        for (int d = 0; d < D; d++) acc[d] = acc[d] * corr + e * vv[d];
        m = m_new;
    }
    if (lane == 0) { sm_m[warp] = m; sm_l[warp] = l; }
#pragma unroll
    for (int d = 0; d < D; d++) sm_acc[warp][lane * D + d] = acc[d];
    __syncthreads();
    float M = NEG_BIG;
#pragma unroll
    for (int w = 0; w < ATTN_WARPS; w++) M = fmaxf(M, sm_m[w]);
    size_t ps = (size_t)head * n_splits + split;
    for (int d = threadIdx.x; d < HD; d += blockDim.x) {
        float o = 0.0f;
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; w++) o += sm_acc[w][d] * __expf(sm_m[w] - M);
        part_o[ps * HD + d] = o;
    }
    if (threadIdx.x == 0) {
        float L = 0.0f;
#pragma unroll
        for (int w = 0; w < ATTN_WARPS; w++) L += sm_l[w] * __expf(sm_m[w] - M);
        part_ml[ps * 2] = M;
        part_ml[ps * 2 + 1] = L;
    }
}

// One block per head, HD threads.
template <int HD>
__device__ __forceinline__ void attn_merge(const float* __restrict__ part_o, const float* __restrict__ part_ml,
                                           float* __restrict__ out, int n_splits) {
    PDL_ENTRY();
    int head = blockIdx.x, d = threadIdx.x;
    if (d >= HD) return;
    float M = NEG_BIG;
    for (int s = 0; s < n_splits; s++) M = fmaxf(M, part_ml[((size_t)head * n_splits + s) * 2]);
    float L = 0.0f, o = 0.0f;
    for (int s = 0; s < n_splits; s++) {
        size_t ps = (size_t)head * n_splits + s;
        float f = __expf(part_ml[ps * 2] - M);
        L += part_ml[ps * 2 + 1] * f;
        o += part_o[ps * HD + d] * f;
    }
    out[(size_t)head * HD + d] = L > 0.0f ? o / L : 0.0f;
}

#define ATTN_INSTANCES(HD)                                                                                      \
    extern "C" __global__ void __launch_bounds__(ATTN_WARPS * 32) attn_decode_split_hd##HD(                    \
        const float* q, const u16* kc, const u16* vc, float* part_o, float* part_ml, int n_heads, int n_kv,   \
        int max_seq, const int* last_pos, int split_len, float scale) {                                        \
        attn_split<HD>(q, kc, vc, part_o, part_ml, n_heads, n_kv, max_seq, last_pos, split_len, scale);        \
    }                                                                                                         \
    extern "C" __global__ void attn_decode_merge_hd##HD(const float* part_o, const float* part_ml, float* out, \
                                                        int n_splits) {                                       \
        attn_merge<HD>(part_o, part_ml, out, n_splits);                                                       \
    }

ATTN_INSTANCES(64)
ATTN_INSTANCES(128)
