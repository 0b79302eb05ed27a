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

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

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

inline void store(float* p, float v) { *p = v; }
inline void store(at::Half* p, float v) { *p = static_cast<at::Half>(v); }
inline void store(at::BFloat16* p, float v) { *p = static_cast<at::BFloat16>(v); }

template <typename W, typename Y, int R>
void gemv(const W* w, const float* x, const float* scale, const float* bias, Y* y, int64_t out,
          int64_t in) {
  // blocks of at least 16 rows (a few KiB of W) per task, so a thread streams long runs
  at::parallel_for(0, out, 16, [&](int64_t begin, int64_t end) {
    float acc[R];
    for (int64_t o = begin; o < end; ++o) {
      dot_rows<W, R>(w + o * in, x, in, acc);
      float s = scale ? scale[o] : 1.0f;
      float b = bias ? bias[o] : 0.0f;
      for (int r = 0; r < R; ++r) store(y + r * out + o, acc[r] * s + b);
    }
  });
}

template <typename W, typename Y>
void dispatch_rows(int64_t rows, const W* w, const float* x, const float* scale, const float* bias,
                   Y* y, int64_t out, int64_t in) {
  switch (rows) {
    case 1: return gemv<W, Y, 1>(w, x, scale, bias, y, out, in);
    case 2: return gemv<W, Y, 2>(w, x, scale, bias, y, out, in);
    case 3: return gemv<W, Y, 3>(w, x, scale, bias, y, out, in);
    default: return gemv<W, Y, 4>(w, x, scale, bias, y, out, in);
  }
}

template <typename Y>
void dispatch_weight(const at::Tensor& w, int64_t rows, const float* x, const float* scale,
                     const float* bias, Y* y) {
  const int64_t out = w.size(0), in = w.size(1);
  switch (w.scalar_type()) {
    case at::kFloat: return dispatch_rows(rows, w.data_ptr<float>(), x, scale, bias, y, out, in);
    case at::kHalf: return dispatch_rows(rows, w.data_ptr<at::Half>(), x, scale, bias, y, out, in);
    case at::kBFloat16:
      return dispatch_rows(rows, w.data_ptr<at::BFloat16>(), x, scale, bias, y, out, in);
    case at::kChar: return dispatch_rows(rows, w.data_ptr<int8_t>(), x, scale, bias, y, out, in);
    default: TORCH_CHECK(false, "decode_gemv: w must be float32, float16, bfloat16 or int8");
  }
}

// A small tensor (x, a scale, a bias) as float32, converted here rather than by a dispatched
// `.to()`: a decode step makes ~50 of these calls, and each ATen op costs microseconds.
const float* as_float(const at::Tensor& t, std::vector<float>& buf) {
  if (t.scalar_type() == at::kFloat) return t.data_ptr<float>();
  const int64_t n = t.numel();
  buf.resize(n);
  switch (t.scalar_type()) {
    case at::kHalf: {
      const at::Half* p = t.data_ptr<at::Half>();
      for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<float>(p[i]);
      break;
    }
    case at::kBFloat16: {
      const at::BFloat16* p = t.data_ptr<at::BFloat16>();
      for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<float>(p[i]);
      break;
    }
    default: TORCH_CHECK(false, "decode_gemv: x, scale and bias must be float32, float16 or bfloat16");
  }
  return buf.data();
}

at::Tensor decode_gemv(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& scale,
                       const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "decode_gemv: CPU tensors only");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2, "decode_gemv: x (rows, in) and w (out, in)");
  TORCH_CHECK(x.size(1) == w.size(1), "decode_gemv: x and w disagree on in_features");
  TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= MAX_ROWS, "decode_gemv: 1 to 4 rows");
  TORCH_CHECK(w.is_contiguous(), "decode_gemv: w must be contiguous");
  const int64_t rows = x.size(0), out = w.size(0);
  TORCH_CHECK(!scale.has_value() || scale->numel() == out, "decode_gemv: one scale per output row");
  TORCH_CHECK(!bias.has_value() || bias->numel() == out, "decode_gemv: one bias per output row");
  at::Tensor xc = x.contiguous();
  at::Tensor sc = scale.has_value() ? scale->contiguous() : at::Tensor();
  at::Tensor bc = bias.has_value() ? bias->contiguous() : at::Tensor();
  std::vector<float> xb, sb, bb;
  const float* xp = as_float(xc, xb);
  const float* sp = sc.defined() ? as_float(sc, sb) : nullptr;
  const float* bp = bc.defined() ? as_float(bc, bb) : nullptr;
  at::Tensor y = at::empty({rows, out}, x.options());
  switch (x.scalar_type()) {
    case at::kFloat: dispatch_weight(w, rows, xp, sp, bp, y.data_ptr<float>()); break;
    case at::kHalf: dispatch_weight(w, rows, xp, sp, bp, y.data_ptr<at::Half>()); break;
    case at::kBFloat16: dispatch_weight(w, rows, xp, sp, bp, y.data_ptr<at::BFloat16>()); break;
    default: TORCH_CHECK(false, "decode_gemv: x, scale and bias must be float32, float16 or bfloat16");
  }
  return y;
}

// One query per (batch row, head) against L cached keys and values, no mask: the attention of a
// decode step. scores = q.k * scale, softmax in float32, out = sum p v. k and v are views of the
// KV cache: (B, H, L, D) with D contiguous.
template <typename T>
void attend_one(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                float scale) {
  const int64_t B = q.size(0), H = q.size(1), L = k.size(2), D = q.size(3);
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t qs0 = q.stride(0), qs1 = q.stride(1);
  const int64_t ks0 = k.stride(0), ks1 = k.stride(1), ks2 = k.stride(2);
  const int64_t vs0 = v.stride(0), vs1 = v.stride(1), vs2 = v.stride(2);
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(D), p(L), acc(D);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const T* qr = qp + b * qs0 + h * qs1;
      for (int64_t d = 0; d < D; ++d) qf[d] = to_float(qr[d]);
      const T* kb = kp + b * ks0 + h * ks1;
      float m = -INFINITY;
      for (int64_t l = 0; l < L; ++l) {
        float dot[1];
        dot_rows<T, 1>(kb + l * ks2, qf.data(), D, dot);
        p[l] = dot[0] * scale;
        m = std::max(m, p[l]);
      }
      float sum = 0.0f;
      for (int64_t l = 0; l < L; ++l) sum += (p[l] = std::exp(p[l] - m));
      const float inv = 1.0f / sum;
      std::fill(acc.begin(), acc.end(), 0.0f);
      const T* vb = vp + b * vs0 + h * vs1;
      for (int64_t l = 0; l < L; ++l) {
        const __m256 pl = _mm256_set1_ps(p[l] * inv);
        const T* vr = vb + l * vs2;
        int64_t d = 0;
        for (; d + 8 <= D; d += 8)
          _mm256_storeu_ps(&acc[d], _mm256_fmadd_ps(pl, load8(vr + d), _mm256_loadu_ps(&acc[d])));
        for (; d < D; ++d) acc[d] += p[l] * inv * to_float(vr[d]);
      }
      T* orow = op + bh * D;
      for (int64_t d = 0; d < D; ++d) store(orow + d, acc[d]);
    }
  });
}

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(q.device().is_cpu(), "decode_attention: CPU tensors only");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "decode_attention: (B, H, T, D)");
  TORCH_CHECK(q.size(2) == 1, "decode_attention: one query per row");
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == q.size(0) && k.size(1) == q.size(1) &&
                  k.size(3) == q.size(3) && k.size(2) >= 1,
              "decode_attention: q, k, v disagree in shape");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1,
              "decode_attention: the last dimension must be contiguous");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "decode_attention: q, k, v of one dtype");
  at::Tensor out = at::empty({q.size(0), q.size(1), 1, q.size(3)}, q.options());
  const float scale = 1.0f / std::sqrt(static_cast<float>(q.size(3)));
  switch (q.scalar_type()) {
    case at::kFloat: attend_one<float>(q, k, v, out, scale); break;
    case at::kHalf: attend_one<at::Half>(q, k, v, out, scale); break;
    case at::kBFloat16: attend_one<at::BFloat16>(q, k, v, out, scale); break;
    default: TORCH_CHECK(false, "decode_attention: float32, float16 or bfloat16");
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(lmgen_kernels, m) {
  m.def("decode_gemv(Tensor x, Tensor w, Tensor? scale, Tensor? bias) -> Tensor");
  m.def("decode_attention(Tensor q, Tensor k, Tensor v) -> Tensor");
}

TORCH_LIBRARY_IMPL(lmgen_kernels, CPU, m) {
  m.impl("decode_gemv", decode_gemv);
  m.impl("decode_attention", decode_attention);
}
