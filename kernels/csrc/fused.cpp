// Fused noise fill and composite: one pass over memory, no noise tensor, no temporaries.
//
//   fill:       out[:, :3] = m * z + (1 - m) * x   (+ out[:, 3] = m when mask_channel)
//   composite:  y = m * g + (1 - m) * x
//   backward:   fill: gx = (1 - m) * gout[:, :3];   composite: gx = (1 - m) * gy, gg = m * gy
//
// z for logical NCHW element i is a pure function of (k0, k1, i) (see kernels/reference.py and
// noise.h), so the result does not depend on thread count, memory layout or device.
// Arithmetic is fp32 for fp32/bf16/fp16 storage (fp64 for fp64), rounded once on store; the build turns off FMA
// contraction so each product is rounded exactly as in the PyTorch reference.
//
// Work is split over (n, h) rows with ATen's parallel_for; within a row the w loop runs over
// unit-stride pointers when the tensors are NCHW-contiguous (which gcc vectorizes: -O3), and
// over strided pointers otherwise (channels_last and any other layout).

#include <torch/extension.h>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "noise.h"

namespace {

struct Geometry {
  int64_t N, H, W;
};

Geometry check_pair(const at::Tensor& x, const at::Tensor& m, const char* op) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) == 3, op, ": x must be [N,3,H,W], got ", x.sizes());
  TORCH_CHECK(m.dim() == 4 && m.size(0) == x.size(0) && m.size(1) == 1 && m.size(2) == x.size(2) &&
                  m.size(3) == x.size(3),
              op, ": m must be [N,1,H,W] = [", x.size(0), ",1,", x.size(2), ",", x.size(3), "], got ", m.sizes());
  TORCH_CHECK(m.device() == x.device(), op, ": m is on ", m.device(), " but x is on ", x.device());
  TORCH_CHECK(m.scalar_type() == x.scalar_type(), op, ": m is ", m.scalar_type(), " but x is ", x.scalar_type());
  TORCH_CHECK(x.numel() < (int64_t(1) << 32), op, ": more than 2^32 elements");
  return {x.size(0), x.size(2), x.size(3)};
}

at::Tensor empty_like_format(const at::Tensor& x, int64_t channels) {
  return at::empty({x.size(0), channels, x.size(2), x.size(3)},
                   x.options().memory_format(x.suggest_memory_format()));
}

int64_t grain_rows(int64_t W) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, 3 * W)); }

template <typename T>
using acc = at::opmath_type<T>;

// Unit-stride row loops. __restrict__ tells gcc the rows do not overlap, so it vectorizes them
// without runtime alias checks.
template <typename T>
void fill_row(const T* __restrict__ x, const T* __restrict__ m, T* __restrict__ out, int64_t W, uint32_t base,
              uint32_t k0, uint32_t k1) {
  for (int64_t w = 0; w < W; ++w) {
    const acc<T> mv = static_cast<acc<T>>(m[w]);
    const acc<T> z = facecomp::noise_at(base + static_cast<uint32_t>(w), k0, k1);
    out[w] = static_cast<T>(mv * z + (acc<T>(1) - mv) * static_cast<acc<T>>(x[w]));
  }
}

template <typename T>
void composite_row(const T* __restrict__ x, const T* __restrict__ g, const T* __restrict__ m, T* __restrict__ out,
                   int64_t W) {
  for (int64_t w = 0; w < W; ++w) {
    const acc<T> mv = static_cast<acc<T>>(m[w]);
    out[w] = static_cast<T>(mv * static_cast<acc<T>>(g[w]) + (acc<T>(1) - mv) * static_cast<acc<T>>(x[w]));
  }
}

template <typename T>
void backward_row(const T* __restrict__ gy, const T* __restrict__ m, T* __restrict__ gx, T* __restrict__ gg,
                  int64_t W) {
  if (gg) {
    for (int64_t w = 0; w < W; ++w) {
      const acc<T> mv = static_cast<acc<T>>(m[w]);
      const acc<T> gv = static_cast<acc<T>>(gy[w]);
      gx[w] = static_cast<T>((acc<T>(1) - mv) * gv);
      gg[w] = static_cast<T>(mv * gv);
    }
  } else {
    for (int64_t w = 0; w < W; ++w) {
      gx[w] = static_cast<T>((acc<T>(1) - static_cast<acc<T>>(m[w])) * static_cast<acc<T>>(gy[w]));
    }
  }
}

template <typename T>
at::Tensor fill_cpu_impl(const at::Tensor& x, const at::Tensor& m, uint32_t k0, uint32_t k1, bool mask_channel) {
  const Geometry g{x.size(0), x.size(2), x.size(3)};  // checked by fill() before any device's kernel
  at::Tensor out = empty_like_format(x, mask_channel ? 4 : 3);
  const T* xp = x.data_ptr<T>();
  const T* mp = m.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const auto xs = x.strides(), ms = m.strides(), os = out.strides();
  const int64_t H = g.H, W = g.W;
  at::parallel_for(0, g.N * H, grain_rows(W), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / H, h = r % H;
      const T* mrow = mp + n * ms[0] + h * ms[2];
      for (int64_t c = 0; c < 3; ++c) {
        const T* xrow = xp + n * xs[0] + c * xs[1] + h * xs[2];
        T* orow = op + n * os[0] + c * os[1] + h * os[2];
        const uint32_t base = static_cast<uint32_t>(((n * 3 + c) * H + h) * W);
        if (xs[3] == 1 && ms[3] == 1 && os[3] == 1) {
          fill_row<T>(xrow, mrow, orow, W, base, k0, k1);
        } else {
          for (int64_t w = 0; w < W; ++w) {
            const acc<T> mv = static_cast<acc<T>>(mrow[w * ms[3]]);
            const acc<T> z = facecomp::noise_at(base + static_cast<uint32_t>(w), k0, k1);
            orow[w * os[3]] = static_cast<T>(mv * z + (acc<T>(1) - mv) * static_cast<acc<T>>(xrow[w * xs[3]]));
          }
        }
      }
      if (mask_channel) {
        T* orow = op + n * os[0] + 3 * os[1] + h * os[2];
        for (int64_t w = 0; w < W; ++w) orow[w * os[3]] = mrow[w * ms[3]];
      }
    }
  });
  return out;
}

// out = a * (1 - m) [+ b * m]: composite forward (a = x, b = g) and both backward passes.
template <typename T, bool kWithB>
void blend_rows(const at::Tensor& a, const at::Tensor* b, const at::Tensor& m, at::Tensor& out, at::Tensor* out_m) {
  const int64_t N = a.size(0), H = a.size(2), W = a.size(3);
  const T* ap = a.data_ptr<T>();
  const T* bp = kWithB ? b->data_ptr<T>() : nullptr;
  const T* mp = m.data_ptr<T>();
  T* op = out.data_ptr<T>();
  T* omp = out_m ? out_m->data_ptr<T>() : nullptr;
  const auto as = a.strides(), ms = m.strides(), os = out.strides();
  const auto bs = kWithB ? b->strides() : as;
  const auto oms = out_m ? out_m->strides() : os;
  at::parallel_for(0, N * H, grain_rows(W), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / H, h = r % H;
      const T* mrow = mp + n * ms[0] + h * ms[2];
      for (int64_t c = 0; c < 3; ++c) {
        const T* arow = ap + n * as[0] + c * as[1] + h * as[2];
        const T* brow = kWithB ? bp + n * bs[0] + c * bs[1] + h * bs[2] : nullptr;
        T* orow = op + n * os[0] + c * os[1] + h * os[2];
        T* omrow = omp ? omp + n * oms[0] + c * oms[1] + h * oms[2] : nullptr;
        const bool unit = as[3] == 1 && ms[3] == 1 && os[3] == 1 && (!kWithB || bs[3] == 1) && (!omp || oms[3] == 1);
        if (unit) {
          if constexpr (kWithB) {
            composite_row<T>(arow, brow, mrow, orow, W);
          } else {
            backward_row<T>(arow, mrow, orow, omrow, W);
          }
        } else {
          for (int64_t w = 0; w < W; ++w) {
            const acc<T> mv = static_cast<acc<T>>(mrow[w * ms[3]]);
            const acc<T> av = static_cast<acc<T>>(arow[w * as[3]]);
            if constexpr (kWithB) {
              orow[w * os[3]] = static_cast<T>(mv * static_cast<acc<T>>(brow[w * bs[3]]) + (acc<T>(1) - mv) * av);
            } else {
              orow[w * os[3]] = static_cast<T>((acc<T>(1) - mv) * av);
              if (omrow) omrow[w * oms[3]] = static_cast<T>(mv * av);
            }
          }
        }
      }
    }
  });
}

}  // namespace

#ifdef WITH_CUDA
at::Tensor fill_cuda(const at::Tensor& x, const at::Tensor& m, uint32_t k0, uint32_t k1, bool mask_channel);
at::Tensor composite_cuda(const at::Tensor& x, const at::Tensor& g, const at::Tensor& m);
std::vector<at::Tensor> blend_backward_cuda(const at::Tensor& gy, const at::Tensor& m, bool both);
#endif

at::Tensor fill(const at::Tensor& x, const at::Tensor& m, int64_t k0, int64_t k1, bool mask_channel) {
  TORCH_CHECK(0 <= k0 && k0 < (int64_t(1) << 32) && 0 <= k1 && k1 < (int64_t(1) << 32), "fill: keys must be uint32");
  // Every check before the device branch: the CUDA kernel indexes m by x's geometry and reads it
  // through a raw pointer, so a mis-shaped, CPU-resident or other-dtype mask must never reach it.
  check_pair(x, m, "fill");
  if (x.is_cuda()) {
#ifdef WITH_CUDA
    return fill_cuda(x, m, uint32_t(k0), uint32_t(k1), mask_channel);
#else
    TORCH_CHECK(false, "fill: this build of the facecomp kernels has no CUDA");
#endif
  }
  TORCH_CHECK(x.is_cpu(), "fill: unsupported device ", x.device());
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fill", [&] {
    out = fill_cpu_impl<scalar_t>(x, m, uint32_t(k0), uint32_t(k1), mask_channel);
  });
  return out;
}

at::Tensor composite(const at::Tensor& x, const at::Tensor& g, const at::Tensor& m) {
  check_pair(x, m, "composite");
  TORCH_CHECK(g.sizes() == x.sizes(), "composite: g must have x's shape ", x.sizes(), ", got ", g.sizes());
  TORCH_CHECK(g.device() == x.device() && g.scalar_type() == x.scalar_type(),
              "composite: g is ", g.scalar_type(), " on ", g.device(), ", x is ", x.scalar_type(), " on ", x.device());
  if (x.is_cuda()) {
#ifdef WITH_CUDA
    return composite_cuda(x, g, m);
#else
    TORCH_CHECK(false, "composite: this build of the facecomp kernels has no CUDA");
#endif
  }
  TORCH_CHECK(x.is_cpu(), "composite: unsupported device ", x.device());
  at::Tensor out = empty_like_format(x, 3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "composite", [&] {
    blend_rows<scalar_t, true>(x, &g, m, out, nullptr);
  });
  return out;
}

// gy: [N,3,H,W] (the first 3 channels of fill's output gradient, or composite's);
// returns {(1-m)*gy} or, with both, {(1-m)*gy, m*gy}.
std::vector<at::Tensor> blend_backward(const at::Tensor& gy, const at::Tensor& m, bool both) {
  check_pair(gy, m, "blend_backward");
  if (gy.is_cuda()) {
#ifdef WITH_CUDA
    return blend_backward_cuda(gy, m, both);
#else
    TORCH_CHECK(false, "blend_backward: this build of the facecomp kernels has no CUDA");
#endif
  }
  TORCH_CHECK(gy.is_cpu(), "blend_backward: unsupported device ", gy.device());
  at::Tensor gx = empty_like_format(gy, 3);
  at::Tensor gg = both ? empty_like_format(gy, 3) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gy.scalar_type(), "blend_backward", [&] {
    blend_rows<scalar_t, false>(gy, nullptr, m, gx, both ? &gg : nullptr);
  });
  return both ? std::vector<at::Tensor>{gx, gg} : std::vector<at::Tensor>{gx};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.def("fill", &fill, "fused noise fill");
  mod.def("composite", &composite, "fused composite");
  mod.def("blend_backward", &blend_backward, "fused backward of fill / composite");
#ifdef WITH_CUDA
  mod.attr("with_cuda") = true;
#else
  mod.attr("with_cuda") = false;
#endif
}
