// Counter-based noise shared by the CPU and CUDA kernels (and mirrored in kernels/reference.py).
// z(i) = 2 * (h >> 8) / 2^24 - 1 with h = lowbias32(lowbias32(i ^ k0) + k1), all mod 2^32.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define FACECOMP_HD __host__ __device__ __forceinline__
#else
#define FACECOMP_HD inline
#endif

namespace facecomp {

// Chris Wellons' lowbias32: two xor-shift-multiply rounds, full avalanche.
FACECOMP_HD uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// Uniform in [-1, 1): the top 24 bits of the hash, exact in fp32.
FACECOMP_HD float noise_at(uint32_t i, uint32_t k0, uint32_t k1) {
  const uint32_t h = lowbias32(lowbias32(i ^ k0) + k1);
  const float u = static_cast<float>(h >> 8) * (1.0f / 16777216.0f);
  return 2.0f * u - 1.0f;
}

}  // namespace facecomp
