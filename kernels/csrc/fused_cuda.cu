// CUDA versions of the fused ops in fused.cpp. One thread per pixel (n, h, w), looping over the three
// colour channels: the mask is read once per pixel, and all index arithmetic is 32-bit (fused.cpp
// refuses tensors of 2^32 elements or more, so pixel and element indices fit). The first version ran
// a thread per element with four 64-bit divisions each, which the H200 executes as long instruction
// sequences: it reached 16-21% of the copy bandwidth (bench/RESULTS.md, "Device check"). Memory
// offsets are still taken through the tensors' strides, in 64-bit, so any layout works, and the noise
// of logical NCHW element i is the CPU's, bit for bit (noise.h; the build passes -fmad=false so
// products round exactly as on the CPU and in the reference).

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include "noise.h"

namespace {

template <typename T>
using acc = at::opmath_type<T>;

struct Strides4 {
  int64_t s0, s1, s2, s3;
};

Strides4 strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

__device__ __forceinline__ int64_t at4(const Strides4& s, uint32_t n, uint32_t c, uint32_t h, uint32_t w) {
  return int64_t(n) * s.s0 + int64_t(c) * s.s1 + int64_t(h) * s.s2 + int64_t(w) * s.s3;
}

// The pixel p = (n * H + h) * W + w split into its coordinates: two 32-bit divisions per pixel.
struct Pixel {
  uint32_t n, hw, h, w;
};

__device__ __forceinline__ Pixel pixel_of(uint32_t p, uint32_t H, uint32_t W) {
  const uint32_t HW = H * W;
  const uint32_t n = p / HW, hw = p - n * HW, h = hw / W;
  return {n, hw, h, hw - h * W};
}

// Grid-stride loop over pixels. pixels < 2^32 / 3 and the stride < 2^28, so p never wraps.
#define FOR_EACH_PIXEL(p, pixels) \
  for (uint32_t p = blockIdx.x * blockDim.x + threadIdx.x; p < (pixels); p += blockDim.x * gridDim.x)

template <typename T>
__global__ void fill_kernel(const T* x, const T* m, T* out, Strides4 xs, Strides4 ms, Strides4 os, uint32_t H,
                            uint32_t W, uint32_t pixels, uint32_t k0, uint32_t k1, bool mask_channel) {
  FOR_EACH_PIXEL(p, pixels) {
    const Pixel q = pixel_of(p, H, W);
    const T m_raw = m[at4(ms, q.n, 0, q.h, q.w)];
    const acc<T> mv = static_cast<acc<T>>(m_raw);
#pragma unroll
    for (uint32_t c = 0; c < 3; ++c) {
      const uint32_t i = (q.n * 3 + c) * (H * W) + q.hw;  // the logical NCHW index: the noise key
      const acc<T> z = facecomp::noise_at(i, k0, k1);
      const acc<T> xv = static_cast<acc<T>>(x[at4(xs, q.n, c, q.h, q.w)]);
      out[at4(os, q.n, c, q.h, q.w)] = static_cast<T>(mv * z + (acc<T>(1) - mv) * xv);
    }
    if (mask_channel) out[at4(os, q.n, 3, q.h, q.w)] = m_raw;
  }
}

template <typename T>
__global__ void composite_kernel(const T* x, const T* g, const T* m, T* out, Strides4 xs, Strides4 gs, Strides4 ms,
                                 Strides4 os, uint32_t H, uint32_t W, uint32_t pixels) {
  FOR_EACH_PIXEL(p, pixels) {
    const Pixel q = pixel_of(p, H, W);
    const acc<T> mv = static_cast<acc<T>>(m[at4(ms, q.n, 0, q.h, q.w)]);
#pragma unroll
    for (uint32_t c = 0; c < 3; ++c) {
      const acc<T> gv = static_cast<acc<T>>(g[at4(gs, q.n, c, q.h, q.w)]);
      const acc<T> xv = static_cast<acc<T>>(x[at4(xs, q.n, c, q.h, q.w)]);
      out[at4(os, q.n, c, q.h, q.w)] = static_cast<T>(mv * gv + (acc<T>(1) - mv) * xv);
    }
  }
}

template <typename T>
__global__ void backward_kernel(const T* gy, const T* m, T* gx, T* gg, Strides4 ys, Strides4 ms, Strides4 xs,
                                Strides4 gs, uint32_t H, uint32_t W, uint32_t pixels) {
  FOR_EACH_PIXEL(p, pixels) {
    const Pixel q = pixel_of(p, H, W);
    const acc<T> mv = static_cast<acc<T>>(m[at4(ms, q.n, 0, q.h, q.w)]);
#pragma unroll
    for (uint32_t c = 0; c < 3; ++c) {
      const acc<T> gv = static_cast<acc<T>>(gy[at4(ys, q.n, c, q.h, q.w)]);
      gx[at4(xs, q.n, c, q.h, q.w)] = static_cast<T>((acc<T>(1) - mv) * gv);
      if (gg) gg[at4(gs, q.n, c, q.h, q.w)] = static_cast<T>(mv * gv);
    }
  }
}

#undef FOR_EACH_PIXEL

at::Tensor empty_like_format(const at::Tensor& x, int64_t channels) {
  return at::empty({x.size(0), channels, x.size(2), x.size(3)}, x.options().memory_format(x.suggest_memory_format()));
}

dim3 blocks_for(int64_t pixels) {
  const int64_t threads = 256;
  return dim3(static_cast<unsigned>(std::min<int64_t>((pixels + threads - 1) / threads, 65535 * 8)));
}

uint32_t pixels_of(const at::Tensor& t) { return static_cast<uint32_t>(t.size(0) * t.size(2) * t.size(3)); }

}  // namespace

at::Tensor fill_cuda(const at::Tensor& x, const at::Tensor& m, uint32_t k0, uint32_t k1, bool mask_channel) {
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = empty_like_format(x, mask_channel ? 4 : 3);
  const uint32_t H = x.size(2), W = x.size(3), pixels = pixels_of(x);
  if (pixels == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fill_cuda", [&] {
    fill_kernel<scalar_t><<<blocks_for(pixels), 256, 0, stream>>>(
        x.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), strides_of(x), strides_of(m),
        strides_of(out), H, W, pixels, k0, k1, mask_channel);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor composite_cuda(const at::Tensor& x, const at::Tensor& g, const at::Tensor& m) {
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = empty_like_format(x, 3);
  const uint32_t H = x.size(2), W = x.size(3), pixels = pixels_of(x);
  if (pixels == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "composite_cuda", [&] {
    composite_kernel<scalar_t><<<blocks_for(pixels), 256, 0, stream>>>(
        x.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
        strides_of(x), strides_of(g), strides_of(m), strides_of(out), H, W, pixels);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::vector<at::Tensor> blend_backward_cuda(const at::Tensor& gy, const at::Tensor& m, bool both) {
  const c10::cuda::CUDAGuard guard(gy.device());
  at::Tensor gx = empty_like_format(gy, 3);
  at::Tensor gg = both ? empty_like_format(gy, 3) : at::Tensor();
  const uint32_t H = gy.size(2), W = gy.size(3), pixels = pixels_of(gy);
  if (pixels > 0) {
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gy.scalar_type(), "blend_backward_cuda", [&] {
      backward_kernel<scalar_t><<<blocks_for(pixels), 256, 0, stream>>>(
          gy.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(),
          both ? gg.data_ptr<scalar_t>() : nullptr, strides_of(gy), strides_of(m), strides_of(gx),
          both ? strides_of(gg) : strides_of(gx), H, W, pixels);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return both ? std::vector<at::Tensor>{gx, gg} : std::vector<at::Tensor>{gx};
}
