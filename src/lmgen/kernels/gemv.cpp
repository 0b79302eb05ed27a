// Decode-step matrix products on x86 CPUs: y = x @ (W * scale[:, None]).T + b for a few rows of
// x, with W stored as float32, float16, bfloat16 or int8 (one float scale per output row).
//
// Why a kernel of our own: a decode step is a matrix-vector product per weight, so its speed is
// the rate at which W streams from memory. torch's maintained CPU kernels do not get there for
// one row (docs/PERFORMANCE.md has the measurements): bfloat16 ~10 GB/s, float16 14-25 GB/s,
// int8 (`_weight_int8pack_mm`) ~10 GB/s from DRAM, against ~30 GB/s for a plain sum. Here each
// thread takes a contiguous block of output rows, converts W's elements to float32 as they
// stream (AVX2 + F16C: every x86-64-v3 CPU) and accumulates in float32 with FMA.
//
// x (rows, in) is read as float32 and the result (rows, out) is returned in x's dtype; up to
// MAX_ROWS rows share each load of W (beams, small batches).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <cstdint>

namespace {

constexpr int MAX_ROWS = 4;

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const at::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline __m256 load8(const at::BFloat16* p) {
  __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
inline __m256 load8(const int8_t* p) {
  __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
}

inline float to_float(float v) { return v; }
inline float to_float(at::Half v) { return static_cast<float>(v); }
inline float to_float(at::BFloat16 v) { return static_cast<float>(v); }
inline float to_float(int8_t v) { return static_cast<float>(v); }

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// One output row o: dot products of W[o] with R rows of x, four accumulators per row (32
// weights per iteration, so the conversions of one load overlap the FMAs of another).
template <typename W, int R>
inline void dot_rows(const W* w, const float* x, int64_t in, float* acc) {
  __m256 a[R][4];
  for (int r = 0; r < R; ++r)
    for (int k = 0; k < 4; ++k) a[r][k] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= in; i += 32) {
    __m256 w0 = load8(w + i), w1 = load8(w + i + 8), w2 = load8(w + i + 16),
           w3 = load8(w + i + 24);
    for (int r = 0; r < R; ++r) {
      const float* xr = x + r * in + i;
      a[r][0] = _mm256_fmadd_ps(w0, load8(xr), a[r][0]);
      a[r][1] = _mm256_fmadd_ps(w1, load8(xr + 8), a[r][1]);
      a[r][2] = _mm256_fmadd_ps(w2, load8(xr + 16), a[r][2]);
      a[r][3] = _mm256_fmadd_ps(w3, load8(xr + 24), a[r][3]);
    }
  }
  for (; i + 8 <= in; i += 8) {
    __m256 w0 = load8(w + i);
    for (int r = 0; r < R; ++r) a[r][0] = _mm256_fmadd_ps(w0, load8(x + r * in + i), a[r][0]);
  }
  for (int r = 0; r < R; ++r) {
    float s = hsum(_mm256_add_ps(_mm256_add_ps(a[r][0], a[r][1]), _mm256_add_ps(a[r][2], a[r][3])));
    for (int64_t j = i; j < in; ++j) s += to_float(w[j]) * x[r * in + j];
    acc[r] = s;
  }
}

template <typename W, int R>
void gemv(const W* w, const float* x, const float* scale, const float* bias, float* y,
          int64_t out, int64_t in) {
  // blocks of at least 16 rows (a few KiB of W) per task, so a thread streams long runs
  at::parallel_for(0, out, 16, [&](int64_t begin, int64_t end) {
    float acc[R];
    for (int64_t o = begin; o < end; ++o) {
      dot_rows<W, R>(w + o * in, x, in, acc);
      float s = scale ? scale[o] : 1.0f;
      float b = bias ? bias[o] : 0.0f;
      for (int r = 0; r < R; ++r) y[r * out + o] = acc[r] * s + b;
    }
  });
}

template <typename W>
void dispatch_rows(int64_t rows, const W* w, const float* x, const float* scale, const float* bias,
                   float* y, int64_t out, int64_t in) {
  switch (rows) {
    case 1: return gemv<W, 1>(w, x, scale, bias, y, out, in);
    case 2: return gemv<W, 2>(w, x, scale, bias, y, out, in);
    case 3: return gemv<W, 3>(w, x, scale, bias, y, out, in);
    default: return gemv<W, 4>(w, x, scale, bias, y, out, in);
  }
}

at::Tensor decode_gemv(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& scale,
                       const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "decode_gemv: CPU tensors only");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2, "decode_gemv: x (rows, in) and w (out, in)");
  TORCH_CHECK(x.size(1) == w.size(1), "decode_gemv: x and w disagree on in_features");
  TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= MAX_ROWS, "decode_gemv: 1 to 4 rows");
  TORCH_CHECK(w.is_contiguous(), "decode_gemv: w must be contiguous");
  const int64_t rows = x.size(0), in = w.size(1), out = w.size(0);
  at::Tensor xf = x.to(at::kFloat).contiguous();
  at::Tensor sf, bf;
  if (scale.has_value()) sf = scale->to(at::kFloat).contiguous();
  if (bias.has_value()) bf = bias->to(at::kFloat).contiguous();
  TORCH_CHECK(!sf.defined() || sf.numel() == out, "decode_gemv: one scale per output row");
  TORCH_CHECK(!bf.defined() || bf.numel() == out, "decode_gemv: one bias per output row");
  at::Tensor y = at::empty({rows, out}, x.options().dtype(at::kFloat));
  const float* xp = xf.data_ptr<float>();
  const float* sp = sf.defined() ? sf.data_ptr<float>() : nullptr;
  const float* bp = bf.defined() ? bf.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  switch (w.scalar_type()) {
    case at::kFloat: dispatch_rows(rows, w.data_ptr<float>(), xp, sp, bp, yp, out, in); break;
    case at::kHalf: dispatch_rows(rows, w.data_ptr<at::Half>(), xp, sp, bp, yp, out, in); break;
    case at::kBFloat16:
      dispatch_rows(rows, w.data_ptr<at::BFloat16>(), xp, sp, bp, yp, out, in);
      break;
    case at::kChar: dispatch_rows(rows, w.data_ptr<int8_t>(), xp, sp, bp, yp, out, in); break;
    default: TORCH_CHECK(false, "decode_gemv: w must be float32, float16, bfloat16 or int8");
  }
  return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY(lmgen_kernels, m) {
  m.def("decode_gemv(Tensor x, Tensor w, Tensor? scale, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(lmgen_kernels, CPU, m) { m.impl("decode_gemv", decode_gemv); }
