// Matrix products with weights that stay in llama.cpp's (ggml's) block formats: Q8_0, Q4_0,
// Q4_1, Q5_0 and Q4_K, the bytes exactly as a GGUF file stores them. The block dot products
// are in quant_dot.h, shared with the fused decode step (decode.cpp), which says why they are
// as they are; this file is the op-by-op entry point and the dequantizer.
//
// quant_gemv(x (rows, in) float32, blocks (out, row_bytes) uint8, kind, bias?) -> (rows, out)
// quant_gemm(x (rows, in) float32, blocks, kind, bias?) -> (rows, out): a prompt's product,
//   quant_gemm.h (AVX512-VNNI builds only: quant_has_gemm())
// quant_dequantize(blocks (out, row_bytes) uint8, kind, in) -> (out, in) float32
// `kind` is the ggml type number: 2 Q4_0, 3 Q4_1, 6 Q5_0, 8 Q8_0, 12 Q4_K; or 102, Q4_0 with
// rows interleaved by 8 (quant_dot.h), for the products.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "quant_dot.h"
#include "quant_gemm.h"

namespace {

using namespace qdot;

at::Tensor quant_gemv(const at::Tensor& x_in, const at::Tensor& blocks, int64_t kind,
                      const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x_in.dim() == 2, "quant_gemv: x must be (rows, in)");
  TORCH_CHECK(known_kind(kind), "quant_gemv: unknown block kind ", kind);
  const int64_t rows = x_in.size(0), in = x_in.size(1), out_f = blocks.size(0);
  check_blocks(blocks, kind, in);
  at::Tensor x = x_in.to(at::kFloat).contiguous();
  Act a;
  quantize_act(x.data_ptr<float>(), rows, in, a);
  at::Tensor y = at::empty({rows, out_f}, x.options());
  float* yp = y.data_ptr<float>();
  const uint8_t* wp = blocks.data_ptr<uint8_t>();
  const int64_t row_bytes = blocks.size(1);
  at::Tensor b32;
  const float* bp = nullptr;
  if (bias.has_value() && bias->defined()) {
    b32 = bias->to(at::kFloat).contiguous();
    bp = b32.data_ptr<float>();
  }
  at::parallel_for(0, out_f, GRAIN, [&](int64_t begin, int64_t end) {
    gemv_range(a, rows, kind, wp, row_bytes, begin, end, bp, yp, out_f);
  });
  return y;
}

bool quant_has_gemm() {
#if defined(LMGEN_VNNI512)
  return true;
#else
  return false;
#endif
}

at::Tensor quant_gemm(const at::Tensor& x_in, const at::Tensor& blocks, int64_t kind,
                      const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(quant_has_gemm(), "quant_gemm: this build has no AVX512-VNNI");
  TORCH_CHECK(x_in.dim() == 2, "quant_gemm: x must be (rows, in)");
  TORCH_CHECK(known_kind(kind), "quant_gemm: unknown block kind ", kind);
  const int64_t rows = x_in.size(0), in = x_in.size(1), out_f = blocks.size(0);
  check_blocks(blocks, kind, in);
  at::Tensor x = x_in.to(at::kFloat).contiguous();
  at::Tensor y = at::empty({rows, out_f}, x.options());
  at::Tensor b32;
  const float* bp = nullptr;
  if (bias.has_value() && bias->defined()) {
    b32 = bias->to(at::kFloat).contiguous();
    bp = b32.data_ptr<float>();
  }
#if defined(LMGEN_VNNI512)
  qgemm::gemm(x.data_ptr<float>(), rows, in, kind, blocks.data_ptr<uint8_t>(), blocks.size(1),
              out_f, bp, y.data_ptr<float>());
#endif
  return y;
}

// One row of blocks -> `in` floats, each value as ggml's reference dequantizer computes it.
void dequantize_row(const uint8_t* w, int64_t kind, int64_t in, float* y) {
  if (kind == Q8_0) {
    for (int64_t b = 0; b < in / 32; ++b, w += 34, y += 32) {
      const float d = half_at(w);
      const int8_t* q = reinterpret_cast<const int8_t*>(w + 2);
      for (int i = 0; i < 32; ++i) y[i] = q[i] * d;
    }
  } else if (kind == Q5_0) {
    for (int64_t b = 0; b < in / 32; ++b, w += 22, y += 32) {
      const float d = half_at(w);
      uint32_t qh;
      std::memcpy(&qh, w + 2, 4);
      const uint8_t* q = w + 6;
      for (int i = 0; i < 16; ++i) {
        const int lo = static_cast<int>((q[i] & 0xF) | (((qh >> i) & 1) << 4));
        const int hi = static_cast<int>((q[i] >> 4) | (((qh >> (i + 16)) & 1) << 4));
        y[i] = static_cast<float>(lo - 16) * d;
        y[i + 16] = static_cast<float>(hi - 16) * d;
      }
    }
  } else if (kind == Q4_0 || kind == Q4_1) {
    const int64_t step = kind == Q4_0 ? 18 : 20;
    for (int64_t b = 0; b < in / 32; ++b, w += step, y += 32) {
      const float d = half_at(w);
      const uint8_t* q = w + (kind == Q4_0 ? 2 : 4);
      if (kind == Q4_0) {
        for (int i = 0; i < 16; ++i) {
          y[i] = ((q[i] & 0xF) - 8) * d;
          y[i + 16] = ((q[i] >> 4) - 8) * d;
        }
      } else {
        const float m = half_at(w + 2);
        for (int i = 0; i < 16; ++i) {
          y[i] = (q[i] & 0xF) * d + m;
          y[i + 16] = (q[i] >> 4) * d + m;
        }
      }
    }
  } else {
    for (int64_t sb = 0; sb < in / 256; ++sb, w += 144) {
      const float d = half_at(w), dmin = half_at(w + 2);
      const uint8_t* q = w + 16;
      for (int c = 0; c < 4; ++c, q += 32) {
        int sc0, m0, sc1, m1;
        scale_min_k4(2 * c, w + 4, &sc0, &m0);
        scale_min_k4(2 * c + 1, w + 4, &sc1, &m1);
        const float d0 = d * sc0, n0 = dmin * m0, d1 = d * sc1, n1 = dmin * m1;
        for (int i = 0; i < 32; ++i) *y++ = d0 * (q[i] & 0xF) - n0;
        for (int i = 0; i < 32; ++i) *y++ = d1 * (q[i] >> 4) - n1;
      }
    }
  }
}

at::Tensor quant_dequantize(const at::Tensor& blocks, int64_t kind, int64_t in) {
  TORCH_CHECK(kind != Q4_0X8, "quant_dequantize: interleaved Q4_0 is dequantized in the file "
              "layout (lmgen.ggml_blocks.deinterleave_q4_0)");
  check_blocks(blocks, kind, in);
  const int64_t out_f = blocks.size(0), row_bytes = blocks.size(1);
  at::Tensor y = at::empty({out_f, in}, at::kFloat);
  const uint8_t* wp = blocks.data_ptr<uint8_t>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, out_f, 16, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) dequantize_row(wp + o * row_bytes, kind, in, yp + o * in);
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(lmgen_quant, m) {
  m.def("quant_gemv(Tensor x, Tensor blocks, int kind, Tensor? bias) -> Tensor");
  m.def("quant_gemm(Tensor x, Tensor blocks, int kind, Tensor? bias) -> Tensor");
  m.def("quant_has_gemm() -> bool", &quant_has_gemm);
  m.def("quant_dequantize(Tensor blocks, int kind, int in_features) -> Tensor");
}

TORCH_LIBRARY_IMPL(lmgen_quant, CPU, m) {
  m.impl("quant_gemv", &quant_gemv);
  m.impl("quant_gemm", &quant_gemm);
  m.impl("quant_dequantize", &quant_dequantize);
}
