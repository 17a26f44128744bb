// Helpers for the cuBLASLt GEMMs (src/cublaslt.rs): FP8 E4M3 activation quantization with a
// per-tensor scale computed on the device, and random E4M3 matrices for tests and benchmarks.
// E4M3 here is OCP "E4M3FN": bias 7, no infinities, 0x7F/0xFF NaN, largest finite 448 (0x7E).

#define E4M3_MAX 448.0f

// f32 -> E4M3FN, round to nearest even, saturating to +-448 (NaN stays NaN). Done with integer
// arithmetic (no cuda_fp8.h: the sources compile without CUDA headers) so the CPU reference in
// lowbit-formats (Minifloat::E4M3FN.saturating(), NearestEven) gives the same codes.
__device__ __forceinline__ u8 f32_to_e4m3(float x) {
    u32 bits = __float_as_uint(x);
    u32 sign = (bits >> 24) & 0x80u;
    u32 mag = bits & 0x7fffffffu;
    if (mag > 0x7f800000u) return (u8)(sign | 0x7fu);  // NaN
    float a = __uint_as_float(mag);
    if (a < 0.015625f) {
        // Below the smallest normal 2^-6: subnormal codes are multiples of 2^-9, so the code is
        // rint(a * 512) (exact scaling, rintf ties to even); 8 rounds up into the first normal.
        return (u8)(sign | (u32)rintf(a * 512.0f));
    }
    // Keep 3 mantissa bits, ties to even, by adding just under half an ulp plus the kept lsb.
    u32 r = mag + 0x7ffffu + ((mag >> 20) & 1u);
    int e = (int)(r >> 23) - 127;  // >= -6 here
    u32 m = (r >> 20) & 7u;
    if (e > 8 || (e == 8 && m == 7u)) return (u8)(sign | 0x7eu);  // above 448: saturate
    return (u8)(sign | ((u32)(e + 7) << 3) | m);
}

__device__ __forceinline__ float e4m3_to_f32(u8 c) {
    u32 e = (c >> 3) & 15u, m = c & 7u;
    float v;
    if ((c & 0x7fu) == 0x7fu) v = __uint_as_float(0x7fc00000u);
    else if (e == 0) v = (float)m * 0.001953125f;  // m * 2^-9
    else v = __uint_as_float(((e + 120u) << 23) | (m << 20));
    return (c & 0x80u) ? -v : v;
}

// Max of |x| over the block, then one atomicMax per block on the float's bits (non-negative
// floats order like their bit patterns). *amax must be 0 before the launch. NaN is ignored
// (fmaxf drops it).
__device__ __forceinline__ void amax_commit(float m, u32* amax) {
    __shared__ float part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    m = warp_max(m);
    if (lane == 0) part[warp] = m;
    __syncthreads();
    if (warp == 0) {
        float t = lane < nwarps ? part[lane] : 0.0f;
        t = warp_max(t);
        if (lane == 0) atomicMax(amax, __float_as_uint(t));
    }
}

extern "C" __global__ void fp8_absmax_f32(const float* __restrict__ x, u64 n, u32* __restrict__ amax) {
    float m = 0.0f;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        m = fmaxf(m, fabsf(x[i]));
    amax_commit(m, amax);
}

extern "C" __global__ void fp8_absmax_bf16(const u16* __restrict__ x, u64 n, u32* __restrict__ amax) {
    float m = 0.0f;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        m = fmaxf(m, fabsf(bf16_to_f32(x[i])));
    amax_commit(m, amax);
}

// The per-tensor scale from the absmax: x ~ e4m3 * scale with the largest |x| mapped to 448.
// An all-zero (or all-NaN) tensor gets scale 1.
__device__ __forceinline__ float fp8_scale(const u32* amax) {
    float a = __uint_as_float(*amax);
    return (a > 0.0f && a <= 3.0e38f) ? a / E4M3_MAX : 1.0f;
}

// q[i] = e4m3(x[i] / scale), saturating; block 0 stores the scale for the GEMM's scale pointer.
extern "C" __global__ void fp8_quantize_f32(const float* __restrict__ x, u64 n, const u32* __restrict__ amax,
                                            u8* __restrict__ q, float* __restrict__ scale) {
    float s = fp8_scale(amax);
    if (blockIdx.x == 0 && threadIdx.x == 0) *scale = s;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        q[i] = f32_to_e4m3(x[i] / s);
}

extern "C" __global__ void fp8_quantize_bf16(const u16* __restrict__ x, u64 n, const u32* __restrict__ amax,
                                             u8* __restrict__ q, float* __restrict__ scale) {
    float s = fp8_scale(amax);
    if (blockIdx.x == 0 && threadIdx.x == 0) *scale = s;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        q[i] = f32_to_e4m3(bf16_to_f32(x[i]) / s);
}

// splitmix64 finalizer (the same mixing as ops.cu; each module compiles alone).
__device__ __forceinline__ u64 gemm_mix64(u64 z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// E4M3 codes of values uniform in [lo, hi) (saturating), so tests can decode them exactly.
extern "C" __global__ void fill_random_e4m3(u8* __restrict__ p, u64 n, u64 seed, float lo, float hi) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        float u = (float)(gemm_mix64(seed * 0x9e3779b97f4a7c15ull + i) >> 40) * (1.0f / 16777216.0f);
        p[i] = f32_to_e4m3(lo + u * (hi - lo));
    }
}
