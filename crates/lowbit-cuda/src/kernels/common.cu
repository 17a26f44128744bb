// Shared prelude, prepended to every kernel source before NVRTC compiles it.
// No #include: CI compiles these with the bare NVRTC wheel, which has no CUDA headers,
// so half/bf16 conversions are done with PTX cvt and bit manipulation.
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;
typedef unsigned long long u64;

__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }

// Round to nearest even; NaN stays a (quiet) NaN.
__device__ __forceinline__ u16 f32_to_bf16(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (u16)(u >> 16);
}

__device__ __forceinline__ float f16_to_f32(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f32_to_f16(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over a block of at most 1024 threads; every thread gets the result.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    float t = lane < nwarps ? part[lane] : 0.0f;
    return warp_sum(t);
}

// 4-bit code c (0..15) to float without an int->float conversion: 2^23 + c has c in its
// mantissa; subtracting 2^23 + offset gives c - offset exactly.
__device__ __forceinline__ float nib(u32 word, int shift, float magic) {
    return __uint_as_float(0x4B000000u | ((word >> shift) & 0xFu)) - magic;
}

// Programmatic dependent launch (Hopper): a kernel launched with the programmatic-serialization
// attribute may start while the previous kernel in the stream is still running. Such a kernel
// must call pdl_wait() before it reads anything an earlier kernel wrote or writes anything an
// earlier kernel may still read; work before it may only touch constant data (weights).
// pdl_launch_dependents() lets the next kernel be scheduled early. Both are no-ops when the
// kernel was launched normally or on GPUs before sm_90.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}
#define PDL_ENTRY() \
    do {                        \
        pdl_launch_dependents(); \
        pdl_wait();             \
    } while (0)

// Counter-based hash (splitmix64 finalizer) so random fills need no state and no host data.
__device__ __forceinline__ u64 mix64(u64 z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ float unit_rand(u64 seed, u64 i) {  // uniform in [-1, 1)
    return (float)(mix64(seed * 0x9e3779b97f4a7c15ull + i) >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

// End of a one-warp-per-row GEMV: reduce each batch row's partial sums across the warp and let
// lane 0 store y[b][row].
template <int B>
__device__ __forceinline__ void warp_store_rows(float (&acc)[B], float* __restrict__ y, int N, int row) {
    int lane = threadIdx.x & 31;
#pragma unroll
    for (int b = 0; b < B; b++) {
        float v = warp_sum(acc[b]);
        if (lane == 0) y[(size_t)b * N + row] = v;
    }
}
