// CUDA versions of the fused ops in fused.cpp: a grid-stride loop over the logical NCHW index, so
// any memory layout works and the noise of element i is the CPU's, bit for bit (noise.h; the
// build passes -fmad=false so products round exactly as on the CPU and in the reference).

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "noise.h"

namespace {

template <typename T>
using acc = at::opmath_type<T>;

struct Strides4 {
  int64_t s0, s1, s2, s3;
};

Strides4 strides_of(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

__device__ __forceinline__ int64_t at4(const Strides4& s, int64_t n, int64_t c, int64_t h, int64_t w) {
  return n * s.s0 + c * s.s1 + h * s.s2 + w * s.s3;
}

template <typename T>
__global__ void fill_kernel(const T* x, const T* m, T* out, Strides4 xs, Strides4 ms, Strides4 os, int64_t H,
                            int64_t W, int64_t total, uint32_t k0, uint32_t k1, bool mask_channel) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t w = i % W, h = (i / W) % H, c = (i / (W * H)) % 3, n = i / (W * H * 3);
    const acc<T> mv = static_cast<acc<T>>(m[at4(ms, n, 0, h, w)]);
    const acc<T> z = facecomp::noise_at(static_cast<uint32_t>(i), k0, k1);
    out[at4(os, n, c, h, w)] = static_cast<T>(mv * z + (acc<T>(1) - mv) * static_cast<acc<T>>(x[at4(xs, n, c, h, w)]));
    if (mask_channel && c == 0) out[at4(os, n, 3, h, w)] = m[at4(ms, n, 0, h, w)];
  }
}

template <typename T>
__global__ void composite_kernel(const T* x, const T* g, const T* m, T* out, Strides4 xs, Strides4 gs, Strides4 ms,
                                 Strides4 os, int64_t H, int64_t W, int64_t total) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t w = i % W, h = (i / W) % H, c = (i / (W * H)) % 3, n = i / (W * H * 3);
    const acc<T> mv = static_cast<acc<T>>(m[at4(ms, n, 0, h, w)]);
    out[at4(os, n, c, h, w)] = static_cast<T>(mv * static_cast<acc<T>>(g[at4(gs, n, c, h, w)]) +
                                              (acc<T>(1) - mv) * static_cast<acc<T>>(x[at4(xs, n, c, h, w)]));
  }
}

template <typename T>
__global__ void backward_kernel(const T* gy, const T* m, T* gx, T* gg, Strides4 ys, Strides4 ms, Strides4 xs,
                                Strides4 gs, int64_t H, int64_t W, int64_t total) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t w = i % W, h = (i / W) % H, c = (i / (W * H)) % 3, n = i / (W * H * 3);
    const acc<T> mv = static_cast<acc<T>>(m[at4(ms, n, 0, h, w)]);
    const acc<T> gv = static_cast<acc<T>>(gy[at4(ys, n, c, h, w)]);
    gx[at4(xs, n, c, h, w)] = static_cast<T>((acc<T>(1) - mv) * gv);
    if (gg) gg[at4(gs, n, c, h, w)] = static_cast<T>(mv * gv);
  }
}

at::Tensor empty_like_format(const at::Tensor& x, int64_t channels) {
  return at::empty({x.size(0), channels, x.size(2), x.size(3)}, x.options().memory_format(x.suggest_memory_format()));
}

dim3 blocks_for(int64_t total) {
  const int64_t threads = 256;
  return dim3(static_cast<unsigned>(std::min<int64_t>((total + threads - 1) / threads, 65535 * 8)));
}

}  // namespace

at::Tensor fill_cuda(const at::Tensor& x, const at::Tensor& m, uint32_t k0, uint32_t k1, bool mask_channel) {
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = empty_like_format(x, mask_channel ? 4 : 3);
  const int64_t H = x.size(2), W = x.size(3), total = x.numel();
  if (total == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fill_cuda", [&] {
    fill_kernel<scalar_t><<<blocks_for(total), 256, 0, stream>>>(
        x.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), strides_of(x), strides_of(m),
        strides_of(out), H, W, total, k0, k1, mask_channel);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor composite_cuda(const at::Tensor& x, const at::Tensor& g, const at::Tensor& m) {
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = empty_like_format(x, 3);
  const int64_t H = x.size(2), W = x.size(3), total = x.numel();
  if (total == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "composite_cuda", [&] {
    composite_kernel<scalar_t><<<blocks_for(total), 256, 0, stream>>>(
        x.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
        strides_of(x), strides_of(g), strides_of(m), strides_of(out), H, W, total);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::vector<at::Tensor> blend_backward_cuda(const at::Tensor& gy, const at::Tensor& m, bool both) {
  const c10::cuda::CUDAGuard guard(gy.device());
  at::Tensor gx = empty_like_format(gy, 3);
  at::Tensor gg = both ? empty_like_format(gy, 3) : at::Tensor();
  const int64_t H = gy.size(2), W = gy.size(3), total = gy.numel();
  if (total > 0) {
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gy.scalar_type(), "blend_backward_cuda", [&] {
      backward_kernel<scalar_t><<<blocks_for(total), 256, 0, stream>>>(
          gy.data_ptr<scalar_t>(), m.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(),
          both ? gg.data_ptr<scalar_t>() : nullptr, strides_of(gy), strides_of(m), strides_of(gx),
          both ? strides_of(gg) : strides_of(gx), H, W, total);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return both ? std::vector<at::Tensor>{gx, gg} : std::vector<at::Tensor>{gx};
}
