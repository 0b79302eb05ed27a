// Products with weights in llama.cpp's (ggml's) block formats: Q8_0, Q4_0, Q4_1, Q5_0 and Q4_K,
// the bytes exactly as a GGUF file stores them. Included by quant.cpp (the op-by-op product,
// `quant_gemv`) and by decode.cpp (the fused decode step), so that both compute every product
// with the same code: the same int8 rounding of the activations, the same block dots in the
// same order, hence the same bits.
//
// Why: a decode step streams every weight once, so 4.5-bit weights are read 7x faster than
// float32 ones. As in llama.cpp, the activation row is quantized to int8 in blocks of 32 (one
// float scale per block, and the sum of its int8 values for the formats with an offset), and
// each 32-weight block's dot product is an integer one: `vpdpbusd` (AVX512-VNNI or AVX-VNNI)
// where the CPU has it, else AVX2's `vpmaddubsw` + `vpmaddwd`; both give the same int32, so the
// results do not depend on which. Each block's integer sum is scaled (weight scale x activation
// scale) and accumulated in float32 in the same order for every row, whatever the number of
// rows: a row's result is the same alone or in a batch. Rows share each load of a weight block.
//
// Everything is in an anonymous namespace: each including source gets its own copy, built with
// its own flags, and no symbol is shared between the two extensions.

#pragma once

#include <ATen/ATen.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {
namespace qdot {

// Q4_0X8 is not a ggml type: Q4_0 blocks of 8 rows interleaved (lmgen.ggml_blocks'
// interleave_q4_0; layout at dot_q4_0x8), the same bytes per row, for the one-row product.
enum Kind : int64_t { Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q8_0 = 8, Q4_K = 12, Q4_0X8 = 102 };

inline bool known_kind(int64_t kind) {
  return kind == Q4_0 || kind == Q4_1 || kind == Q5_0 || kind == Q8_0 || kind == Q4_K ||
         kind == Q4_0X8;
}
inline int64_t block_elems(int64_t kind) { return kind == Q4_K ? 256 : 32; }
inline int64_t block_bytes(int64_t kind) {
  switch (kind) {
    case Q4_0:
    case Q4_0X8: return 18;
    case Q4_1: return 20;
    case Q5_0: return 22;
    case Q8_0: return 34;
    case Q4_K: return 144;
  }
  TORCH_CHECK(false, "quant kernels: unknown block kind ", kind);
}

// blocks: a contiguous uint8 (out, row_bytes) tensor of whole blocks of `kind` for `in` inputs.
inline void check_blocks(const at::Tensor& blocks, int64_t kind, int64_t in) {
  TORCH_CHECK(blocks.dim() == 2 && blocks.scalar_type() == at::kByte && blocks.is_contiguous(),
              "quant kernels: blocks must be a contiguous uint8 (out, row_bytes) tensor");
  TORCH_CHECK(in % block_elems(kind) == 0, "quant kernels: ", in, " inputs are not whole blocks");
  TORCH_CHECK(blocks.size(1) == in / block_elems(kind) * block_bytes(kind),
              "quant kernels: row of ", blocks.size(1), " bytes for ", in, " inputs");
  TORCH_CHECK(kind != Q4_0X8 || blocks.size(0) % 8 == 0,
              "quant kernels: interleaved Q4_0 needs whole groups of 8 rows");
}

inline float half_at(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// Q4_K's 6-bit scale and min of sub-block j (0..7) from its 12 packed bytes.
inline void scale_min_k4(int j, const uint8_t* q, int* sc, int* mn) {
  if (j < 4) {
    *sc = q[j] & 63;
    *mn = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// u8 x s8 -> 8 int32 partial sums of 32 products.
inline __m256i dot_u8s8(__m256i u, __m256i s) {
#if defined(LMGEN_VNNI512)
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#elif defined(LMGEN_AVXVNNI)
  return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

// 16 bytes of nibbles -> 32 values 0..15: low nibbles first, then high (Q4_0 / Q4_1 order).
inline __m256i nibbles16(const uint8_t* p) {
  __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  __m256i v = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
  return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}

// Q5_0's 32 high bits (bit j: element j) -> 0x10 in byte j where set, else 0.
inline __m256i high_bits32(const uint8_t* p) {
  uint32_t qh;
  std::memcpy(&qh, p, 4);
  const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                          2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
  __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(qh)), spread);
  __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
  return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The activation rows in int8 blocks of 32: values, scale, and the block's sum in float
// (scale x sum of its int8 values, for the weight formats with an offset or a min). Kept
// between calls by the fused step, so that a step allocates nothing once its buffers are sized.
struct Act {
  std::vector<int8_t> q;
  std::vector<float> d;
  std::vector<float> s;
  int64_t nb = 0;  // blocks per row
  int64_t in = 0;  // values per row
};

// Rows of x (rows, in), in % 32 == 0, into `a`: per block of 32, d = max|x| / 127 and
// q = round-half-even(x * 127 / max|x|).
inline void quantize_act(const float* x, int64_t rows, int64_t in, Act& a) {
  a.in = in;
  a.nb = in / 32;
  a.q.resize(rows * in);
  a.d.resize(rows * a.nb);
  a.s.resize(rows * a.nb);
  // vectorized: the same max (exact), the same products x * id, and cvtps's rounding (the
  // default mode, nearest even) is nearbyint's: the scalar loop's bits, ~5x fewer instructions
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < a.nb; ++b) {
      const float* xb = x + r * in + b * 32;
      __m256 v[4];
      for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(xb + 8 * i);
      __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], abs_mask),
                                             _mm256_and_ps(v[1], abs_mask)),
                               _mm256_max_ps(_mm256_and_ps(v[2], abs_mask),
                                             _mm256_and_ps(v[3], abs_mask)));
      __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
      h = _mm_max_ps(h, _mm_movehl_ps(h, h));
      h = _mm_max_ss(h, _mm_movehdup_ps(h));
      const float amax = _mm_cvtss_f32(h);
      const float d = amax / 127.f, id = amax > 0.f ? 127.f / amax : 0.f;
      const __m256 vid = _mm256_set1_ps(id);
      __m256i q[4];
      for (int i = 0; i < 4; ++i) q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], vid));
      const __m256i q16 = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]),
                                             _mm256_packs_epi32(q[2], q[3]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(a.q.data() + r * in + b * 32),
                          _mm256_permutevar8x32_epi32(q16, order));
      __m256i t = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
      __m128i u = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
      u = _mm_add_epi32(u, _mm_shuffle_epi32(u, 0x4E));
      u = _mm_add_epi32(u, _mm_shuffle_epi32(u, 0xB1));
      const int32_t sum = _mm_cvtsi128_si32(u);
      a.d[r * a.nb + b] = d;
      a.s[r * a.nb + b] = d * static_cast<float>(sum);
    }
  }
}

// Outputs o..o+O-1 (their weight rows at w, row_bytes apart) of R rows (r0..r0+R-1). Two
// accumulators per product, even and odd blocks (so that one FMA's latency does not wait on
// the previous), each 8 lanes += block scale x int dot; off the offset terms (Q4_0's -8,
// Q4_1's min, Q4_K's mins). Each product's arithmetic is the same for every O and R: O > 1
// only interleaves independent products (more work in flight per activation load).
template <int O, int R, int64_t kind>
void dot_rows(const uint8_t* w0, int64_t row_bytes, const Act& a, int64_t r0, float* out,
              int64_t out_stride) {
  __m256 acc[O][R][2];
  float off[O][R][2];
  for (int o = 0; o < O; ++o)
    for (int r = 0; r < R; ++r)
      for (int k = 0; k < 2; ++k) {
        acc[o][r][k] = _mm256_setzero_ps();
        off[o][r][k] = 0.f;
      }
  const int64_t nb = a.nb, in = a.in;
  const int8_t* xq[R];
  const float* xd[R];
  const float* xs[R];
  for (int r = 0; r < R; ++r) {
    xq[r] = a.q.data() + (r0 + r) * in;
    xd[r] = a.d.data() + (r0 + r) * nb;
    xs[r] = a.s.data() + (r0 + r) * nb;
  }
  auto load_x = [&](int r, int64_t b) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[r] + b * 32));
  };
  auto add = [&](int o, int r, int k, float scale, __m256i p) {
    acc[o][r][k] = _mm256_fmadd_ps(_mm256_set1_ps(scale), _mm256_cvtepi32_ps(p), acc[o][r][k]);
  };
  // one 32-weight block b of Q8_0 / Q4_0 / Q4_1 / Q5_0 into accumulator k (k a constant: the
  // accumulators stay in registers)
  auto block = [&](int64_t b, auto k) {
    constexpr int64_t BB = kind == Q8_0 ? 34 : kind == Q4_0 ? 18 : kind == Q5_0 ? 22 : 20;
    for (int o = 0; o < O; ++o) {
      const uint8_t* wb = w0 + o * row_bytes + b * BB;
      const float d = half_at(wb);
      if constexpr (kind == Q8_0) {
        __m256i wq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + 2));
        __m256i u = _mm256_abs_epi8(wq);
        for (int r = 0; r < R; ++r)
          add(o, r, k, d * xd[r][b], dot_u8s8(u, _mm256_sign_epi8(load_x(r, b), wq)));
      } else if constexpr (kind == Q5_0) {  // (nibble | high bit << 4) - 16
        __m256i u = _mm256_or_si256(nibbles16(wb + 6), high_bits32(wb + 2));
        for (int r = 0; r < R; ++r) {
          add(o, r, k, d * xd[r][b], dot_u8s8(u, load_x(r, b)));
          off[o][r][k] += -16.f * d * xs[r][b];
        }
      } else {
        const float m = kind == Q4_0 ? -8.f * d : half_at(wb + 2);
        __m256i u = nibbles16(wb + (kind == Q4_0 ? 2 : 4));
        for (int r = 0; r < R; ++r) {
          add(o, r, k, d * xd[r][b], dot_u8s8(u, load_x(r, b)));
          off[o][r][k] += m * xs[r][b];
        }
      }
    }
  };
  if constexpr (kind != Q4_K) {
    int64_t b = 0;
    for (; b + 1 < nb; b += 2) {
      block(b, std::integral_constant<int, 0>{});
      block(b + 1, std::integral_constant<int, 1>{});
    }
    if (b < nb) block(b, std::integral_constant<int, 0>{});
  } else {  // Q4_K: 256 weights in 8 sub-blocks of 32, each with its own scale and min
    for (int64_t sb = 0; sb < nb / 8; ++sb) {
      for (int o = 0; o < O; ++o) {
        const uint8_t* w = w0 + o * row_bytes + sb * 144;
        const float d = half_at(w), dmin = half_at(w + 2);
        const uint8_t* scales = w + 4;
        const uint8_t* qs = w + 16;
        for (int c = 0; c < 4; ++c) {
          __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * c));
          __m256i lo = _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
          __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0F));
          int sc0, m0, sc1, m1;
          scale_min_k4(2 * c, scales, &sc0, &m0);
          scale_min_k4(2 * c + 1, scales, &sc1, &m1);
          const float d0 = d * sc0, d1 = d * sc1, n0 = -dmin * m0, n1 = -dmin * m1;
          const int64_t b0 = sb * 8 + 2 * c;
          for (int r = 0; r < R; ++r) {
            add(o, r, 0, d0 * xd[r][b0], dot_u8s8(lo, load_x(r, b0)));
            add(o, r, 1, d1 * xd[r][b0 + 1], dot_u8s8(hi, load_x(r, b0 + 1)));
            off[o][r][0] += n0 * xs[r][b0];
            off[o][r][1] += n1 * xs[r][b0 + 1];
          }
        }
      }
    }
  }
  for (int o = 0; o < O; ++o)
    for (int r = 0; r < R; ++r)
      out[r * out_stride + o] =
          hsum8(_mm256_add_ps(acc[o][r][0], acc[o][r][1])) + (off[o][r][0] + off[o][r][1]);
}

// Outputs [o0, o1) of the weight at w (one row of blocks of `kind` per output, row_bytes
// apart) for every row of `a`: y[r * y_stride + o] = dot + bias[o] (no bias: nullptr). Rows go
// four at a time through dot_rows, so each weight row is loaded once per four rows; one row
// (a decode step) takes two weight rows at a time.
// How far ahead of the rows being multiplied the weight is prefetched: a step's matrices are
// small (0.3-2 MB), and the hardware prefetcher alone left the one-row product at about half
// the bytes per second it reaches on a long stream (measured in the fused step, SmolLM2, one
// thread: 2 KiB ahead gave 1.3-2x the tokens per CPU second of none; 4 and 8 KiB no better).
constexpr int64_t PREFETCH = 2048;

// Q4_0X8: each group of 8 rows (8 x row_bytes bytes) holds, per 32-input block b, 144 bytes:
// the 8 rows' fp16 scales, then 4 chunks of 32 bytes, chunk c byte 4j + p = the file's quant
// byte 4c + p of row j (low nibble input 4c + p, high nibble input 16 + 4c + p). One load and
// a mask give, for 8 rows at once, the 4 inputs that dot_rows' lane c sums for one row, and
// the activation's 4 bytes broadcast; so `vpdpbusd` lane j is row j's lane-c integer sum.
// Why: the one-row product of Q4_0 spent ~16 instructions a block per row (a 16-byte load,
// its unpack, a scalar fp16 conversion and scale); here ~7. The arithmetic is dot_rows<1, 1,
// Q4_0>'s, lane by lane and in the same order (per-group accumulators for even and odd
// blocks, the same horizontal sum, the offsets summed apart), so each row has the bits of the
// file layout's product: the decode step's results do not change, only its speed.
inline void dot_q4_0x8(const uint8_t* g, int64_t nb, const Act& a, int64_t r, float* out) {
  __m256 acc[2][8];
  __m256 off[2];
  for (int k = 0; k < 2; ++k) {
    off[k] = _mm256_setzero_ps();
    for (int l = 0; l < 8; ++l) acc[k][l] = _mm256_setzero_ps();
  }
  const int8_t* xq = a.q.data() + r * a.in;
  const float* xd = a.d.data() + r * a.nb;
  const float* xs = a.s.data() + r * a.nb;
  const __m256i mask = _mm256_set1_epi8(0x0F);
  auto block = [&](int64_t b, auto k) {
    const uint8_t* blk = g + b * 144;
    const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk)));
    const __m256 scale = _mm256_mul_ps(d, _mm256_set1_ps(xd[b]));
    const __m256 m = _mm256_mul_ps(_mm256_set1_ps(-8.f), d);
    off[k] = _mm256_add_ps(off[k], _mm256_mul_ps(m, _mm256_set1_ps(xs[b])));
    int32_t x4[8];
    std::memcpy(x4, xq + b * 32, 32);
    for (int c = 0; c < 4; ++c) {
      __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 16 + 32 * c));
      __m256i lo = _mm256_and_si256(v, mask);
      __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
      acc[k][c] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot_u8s8(lo, _mm256_set1_epi32(x4[c]))),
                                  acc[k][c]);
      acc[k][c + 4] = _mm256_fmadd_ps(
          scale, _mm256_cvtepi32_ps(dot_u8s8(hi, _mm256_set1_epi32(x4[c + 4]))), acc[k][c + 4]);
    }
  };
  int64_t b = 0;
  for (; b + 1 < nb; b += 2) {
    block(b, std::integral_constant<int, 0>{});
    block(b + 1, std::integral_constant<int, 1>{});
  }
  if (b < nb) block(b, std::integral_constant<int, 0>{});
  // hsum8 of (acc0 + acc1) per row, its additions in its order, then + (off0 + off1)
  __m256 v[8];
  for (int l = 0; l < 8; ++l) v[l] = _mm256_add_ps(acc[0][l], acc[1][l]);
  const __m256 u0 = _mm256_add_ps(_mm256_add_ps(v[0], v[4]), _mm256_add_ps(v[2], v[6]));
  const __m256 u1 = _mm256_add_ps(_mm256_add_ps(v[1], v[5]), _mm256_add_ps(v[3], v[7]));
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(u0, u1), _mm256_add_ps(off[0], off[1])));
}

// gemv_range for Q4_0X8: whole groups of 8 rows; a range that starts or ends inside a group
// computes the group and keeps its rows (each row's value does not depend on the others).
inline void gemv_range_q4_0x8(const Act& a, int64_t rows, const uint8_t* w, int64_t row_bytes,
                              int64_t o0, int64_t o1, const float* bias, float* y,
                              int64_t y_stride) {
  float res[8];
  const int64_t group_bytes = 8 * row_bytes;
  for (int64_t g0 = o0 / 8 * 8; g0 < o1; g0 += 8) {
    const uint8_t* g = w + g0 * row_bytes;
    const char* pf = reinterpret_cast<const char*>(g) + group_bytes;
    for (int64_t i = 0; i < group_bytes && g0 + 8 < o1; i += 64) _mm_prefetch(pf + i, _MM_HINT_T0);
    const int64_t lo = std::max(o0, g0), hi = std::min(o1, g0 + 8);
    for (int64_t r = 0; r < rows; ++r) {
      dot_q4_0x8(g, a.nb, a, r, res);
      for (int64_t o = lo; o < hi; ++o)
        y[r * y_stride + o] = res[o - g0] + (bias ? bias[o] : 0.f);
    }
  }
}

template <int64_t kind>
void gemv_range_of(const Act& a, int64_t rows, const uint8_t* w, int64_t row_bytes, int64_t o0,
                   int64_t o1, const float* bias, float* y, int64_t y_stride) {
  float res[4 * 2];
  auto store = [&](int64_t o, int64_t r0, int64_t n, int64_t m) {
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < m; ++j)
        y[(r0 + r) * y_stride + o + j] = res[r * m + j] + (bias ? bias[o + j] : 0.f);
  };
  int64_t o = o0;
  // the weight rows PREFETCH bytes ahead, a cache line at a time, into L1 while these rows run
  const char* pf = reinterpret_cast<const char*>(w + o0 * row_bytes) + PREFETCH;
  const char* pf_end = reinterpret_cast<const char*>(w + o1 * row_bytes);
  auto prefetch = [&](int64_t bytes) {
    for (const char* e = pf + bytes; pf < e && pf < pf_end; pf += 64) _mm_prefetch(pf, _MM_HINT_T0);
  };
  if (rows == 1) {
    for (; o + 2 <= o1; o += 2) {
      prefetch(2 * row_bytes);
      dot_rows<2, 1, kind>(w + o * row_bytes, row_bytes, a, 0, res, 2);
      store(o, 0, 1, 2);
    }
  }
  for (; o < o1; ++o) {
    const uint8_t* wo = w + o * row_bytes;
    prefetch(row_bytes);
    for (int64_t r0 = 0; r0 < rows; r0 += 4) {
      const int64_t n = std::min<int64_t>(4, rows - r0);
      switch (n) {
        case 1: dot_rows<1, 1, kind>(wo, row_bytes, a, r0, res, 1); break;
        case 2: dot_rows<1, 2, kind>(wo, row_bytes, a, r0, res, 1); break;
        case 3: dot_rows<1, 3, kind>(wo, row_bytes, a, r0, res, 1); break;
        default: dot_rows<1, 4, kind>(wo, row_bytes, a, r0, res, 1); break;
      }
      store(o, r0, n, 1);
    }
  }
}

inline void gemv_range(const Act& a, int64_t rows, int64_t kind, const uint8_t* w,
                       int64_t row_bytes, int64_t o0, int64_t o1, const float* bias, float* y,
                       int64_t y_stride) {
  switch (kind) {
    case Q8_0: return gemv_range_of<Q8_0>(a, rows, w, row_bytes, o0, o1, bias, y, y_stride);
    case Q4_0: return gemv_range_of<Q4_0>(a, rows, w, row_bytes, o0, o1, bias, y, y_stride);
    case Q4_1: return gemv_range_of<Q4_1>(a, rows, w, row_bytes, o0, o1, bias, y, y_stride);
    case Q5_0: return gemv_range_of<Q5_0>(a, rows, w, row_bytes, o0, o1, bias, y, y_stride);
    case Q4_0X8: return gemv_range_q4_0x8(a, rows, w, row_bytes, o0, o1, bias, y, y_stride);
    default: return gemv_range_of<Q4_K>(a, rows, w, row_bytes, o0, o1, bias, y, y_stride);
  }
}

// The output rows one parallel task takes (at::parallel_for's grain).
constexpr int64_t GRAIN = 16;

}  // namespace qdot
}  // namespace
