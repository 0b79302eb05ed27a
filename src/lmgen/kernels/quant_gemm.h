// A prompt's products with weights in ggml's block formats (Q8_0, Q4_0, Q4_1, Q5_0, Q4_K): a
// GEMM of many int8-quantized activation rows against the blocks, for AVX512-VNNI. Included
// by quant.cpp only (the decode step keeps quant_dot.h's row products and their bits).
//
// Why: a decode step streams each weight once for one row, so its cost is the weight's bytes;
// a 512-token prompt multiplies each weight by 512 rows, so its cost is arithmetic. Dequantizing
// to float32 and calling torch's GEMM ran SmolLM2's prefill at ~500 tok/s whatever the type;
// integer dot products do four times the multiply-adds of float32 ones per instruction. The
// row product of quant_dot.h spends a conversion and two float operations per 32 products of
// one weight row; here 16 weight rows are unpacked, per tile, into one byte per weight in an
// interleaved layout (for each group of 4 inputs, 4 bytes of each of the 16 rows: one 512-bit
// register), so one `vpdpbusd` with 4 activation bytes broadcast does 4 inputs of 16 outputs,
// and a 32-input block of 16 outputs x 1 activation row costs 8 `vpdpbusd`, one conversion and
// two or three float operations. llama.cpp's ggml-cpu does the same for Q4_0 (and more) by
// repacking at load time (repack.cpp); here the unpacking is per call and per tile, its cost
// spread over the prompt's rows, and the weights stay in the file's bytes (an exact GGUF round
// trip, and the decode step's layout unchanged).
//
// Arithmetic of one output (o, r), the same whatever the tile or the number of rows (lanes and
// rows never mix): acc = 0; for each block b in order: i = the block's exact integer dot
// (Q8_0: weights + 128 as bytes, less 128 x the activation block's integer sum: exact);
// acc = fma(float(i), ws[o,b] * xd[r,b], acc); then, for the formats with an offset (Q4_0's -8,
// Q4_1's min, Q5_0's -16, Q4_K's mins), acc = fma(wm[o,b], xs[r,b], acc); y = acc + bias.
// This is not quant_dot.h's row product (that keeps 8 float lanes per block), so a prompt's
// rows differ from a decode step's in float rounding, as they did with torch's GEMM.

#pragma once

#if defined(LMGEN_VNNI512)

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "quant_dot.h"

namespace {
namespace qgemm {

using qdot::half_at;

constexpr int64_t TILE = 16;  // output rows per tile: the 16 int32 lanes of a 512-bit register
constexpr int ROWS = 4;       // activation rows per pass over a tile's blocks (registers)

// A tile's weights unpacked: per 32-input block, 8 groups of (16 rows x 4 bytes), and per
// block and row the float scale ws and offset wm: value = q * ws + wm, q the byte (Q8_0: the
// byte is q + 128 and wm 0, the 128 taken off in integers).
struct Tile {
  std::vector<uint8_t> q;  // nb * 512
  std::vector<float> ws;   // nb * 16
  std::vector<float> wm;   // nb * 16
};

// 32 weight values of block b of one row (bytes 0..255, as `vpdpbusd`'s unsigned operand),
// returned; their scale and offset into ws and wm.
template <int64_t kind>
inline __m256i unpack_block(const uint8_t* w, int64_t row_bytes, int64_t o, int64_t b,
                            float* ws, float* wm) {
  const uint8_t* row = w + o * row_bytes;
  if constexpr (kind == qdot::Q4_0X8) {  // the row's 16 quant bytes back together (quant_dot.h)
    const uint8_t* blk = w + (o / 8 * 8) * row_bytes + b * 144;
    const int64_t j = o % 8;
    alignas(16) uint8_t qs[16];
    for (int c = 0; c < 4; ++c) std::memcpy(qs + 4 * c, blk + 16 + 32 * c + 4 * j, 4);
    *ws = half_at(blk + 2 * j);
    *wm = -8.f * *ws;
    return qdot::nibbles16(qs);
  } else if constexpr (kind == qdot::Q8_0) {
    const uint8_t* w = row + b * 34;
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 2));
    *ws = half_at(w);
    *wm = 0.f;
    return _mm256_xor_si256(q, _mm256_set1_epi8(static_cast<char>(0x80)));  // q + 128
  } else if constexpr (kind == qdot::Q4_0 || kind == qdot::Q4_1) {
    const uint8_t* w = row + b * (kind == qdot::Q4_0 ? 18 : 20);
    *ws = half_at(w);
    *wm = kind == qdot::Q4_0 ? -8.f * *ws : half_at(w + 2);
    return qdot::nibbles16(w + (kind == qdot::Q4_0 ? 2 : 4));
  } else if constexpr (kind == qdot::Q5_0) {
    const uint8_t* w = row + b * 22;
    *ws = half_at(w);
    *wm = -16.f * *ws;
    return _mm256_or_si256(qdot::nibbles16(w + 6), qdot::high_bits32(w + 2));
  } else {  // Q4_K: block b is sub-block b % 8 of super-block b / 8
    const uint8_t* w = row + (b / 8) * 144;
    const int j = static_cast<int>(b % 8);
    __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 16 + 32 * (j / 2)));
    if (j % 2) q = _mm256_srli_epi16(q, 4);
    int sc, mn;
    qdot::scale_min_k4(j, w + 4, &sc, &mn);
    *ws = half_at(w) * static_cast<float>(sc);
    *wm = -half_at(w + 2) * static_cast<float>(mn);
    return _mm256_and_si256(q, _mm256_set1_epi8(0x0F));
  }
}

// 8 rows of 8 dwords (r[i]: row i) transposed in place: r[g] becomes dword g of rows 0..7.
inline void transpose8x8(__m256i (&r)[8]) {
  __m256i t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h) {  // rows 0-3 (t[0..3]), rows 4-7 (t[4..7])
    const __m256i* a = t + 4 * h;
    u[4 * h + 0] = _mm256_unpacklo_epi64(a[0], a[2]);
    u[4 * h + 1] = _mm256_unpackhi_epi64(a[0], a[2]);
    u[4 * h + 2] = _mm256_unpacklo_epi64(a[1], a[3]);
    u[4 * h + 3] = _mm256_unpackhi_epi64(a[1], a[3]);
  }
  for (int g = 0; g < 4; ++g) {
    r[g] = _mm256_permute2x128_si256(u[g], u[4 + g], 0x20);
    r[g + 4] = _mm256_permute2x128_si256(u[g], u[4 + g], 0x31);
  }
}

// Weight rows o0..o0+n-1 (n <= 16; the missing rows zero) into t: for each block, the 16 rows'
// 32 bytes as 8 registers, register g holding bytes 4g..4g+3 of each row (a transpose of 16 x
// 8 dwords, in two 8 x 8 halves).
template <int64_t kind>
void pack_tile(const uint8_t* w, int64_t row_bytes, int64_t o0, int64_t n, int64_t nb, Tile& t) {
  t.q.resize(nb * 512);  // every byte written below
  t.ws.resize(nb * TILE);
  t.wm.resize(nb * TILE);
  for (int64_t b = 0; b < nb; ++b) {
    __m256i lo[8], hi[8];
    float* ws = &t.ws[b * TILE];
    float* wm = &t.wm[b * TILE];
    for (int64_t o = 0; o < TILE; ++o) {
      __m256i v = _mm256_setzero_si256();
      ws[o] = wm[o] = 0.f;
      if (o < n) v = unpack_block<kind>(w, row_bytes, o0 + o, b, ws + o, wm + o);
      (o < 8 ? lo : hi)[o % 8] = v;
    }
    transpose8x8(lo);
    transpose8x8(hi);
    __m512i* dst = reinterpret_cast<__m512i*>(t.q.data() + b * 512);
    for (int g = 0; g < 8; ++g)
      _mm512_storeu_si512(dst + g, _mm512_inserti64x4(_mm512_castsi256_si512(lo[g]), hi[g], 1));
  }
}

// The activation rows as the GEMM reads them: quant_dot.h's int8 blocks (the same rounding),
// plus, for Q8_0, 128 x each block's integer sum.
struct Rows {
  qdot::Act a;
  std::vector<int32_t> z;  // rows * nb
};

// Rows [r0, r1) of x (rows, in) into `a` (sized already): quant_dot.h's quantize_act, its
// bits, vectorized (round half to even of x * (127 / max|x|)).
inline void quantize_rows(const float* x, int64_t r0, int64_t r1, Rows& rw) {
  qdot::Act& a = rw.a;
  const int64_t in = a.in, nb = a.nb;
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t b = 0; b < nb; ++b) {
      const float* xb = x + r * in + b * 32;
      __m512 v0 = _mm512_loadu_ps(xb), v1 = _mm512_loadu_ps(xb + 16);
      __m512 m = _mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1));
      const float amax = _mm512_reduce_max_ps(m);
      const float d = amax / 127.f, id = amax > 0.f ? 127.f / amax : 0.f;
      const __m512 vid = _mm512_set1_ps(id);
      constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
      __m512i q0 = _mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_mul_ps(v0, vid), kRound));
      __m512i q1 = _mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_mul_ps(v1, vid), kRound));
      int8_t* qb = a.q.data() + r * in + b * 32;
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qb), _mm512_cvtepi32_epi8(q0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qb + 16), _mm512_cvtepi32_epi8(q1));
      const int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
      a.d[r * nb + b] = d;
      a.s[r * nb + b] = d * static_cast<float>(sum);
      if (!rw.z.empty()) rw.z[r * nb + b] = 128 * sum;
    }
  }
}

// R activation rows (from r0) x one tile: out[r * 16 + lane] = the tile's 16 outputs.
template <int R, bool Q8>
void tile_rows(const Tile& t, const Rows& rw, int64_t r0, float* out) {
  const qdot::Act& a = rw.a;
  const int64_t nb = a.nb, in = a.in;
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t b = 0; b < nb; ++b) {
    const __m512i* wq = reinterpret_cast<const __m512i*>(t.q.data() + b * 512);
    __m512i w[8];
    for (int g = 0; g < 8; ++g) w[g] = _mm512_loadu_si512(wq + g);
    const __m512 ws = _mm512_loadu_ps(t.ws.data() + b * TILE);
    const __m512 wm = _mm512_loadu_ps(t.wm.data() + b * TILE);
    for (int r = 0; r < R; ++r) {
      const int64_t row = r0 + r;
      const int32_t* xb = reinterpret_cast<const int32_t*>(a.q.data() + row * in + b * 32);
      // two integer sums (even and odd groups) so that the dot products overlap; exact
      __m512i i0 = _mm512_dpbusd_epi32(zero, w[0], _mm512_set1_epi32(xb[0]));
      __m512i i1 = _mm512_dpbusd_epi32(zero, w[1], _mm512_set1_epi32(xb[1]));
      for (int g = 2; g < 8; g += 2) {
        i0 = _mm512_dpbusd_epi32(i0, w[g], _mm512_set1_epi32(xb[g]));
        i1 = _mm512_dpbusd_epi32(i1, w[g + 1], _mm512_set1_epi32(xb[g + 1]));
      }
      __m512i i = _mm512_add_epi32(i0, i1);
      if constexpr (Q8) i = _mm512_sub_epi32(i, _mm512_set1_epi32(rw.z[row * nb + b]));
      const __m512 scale = _mm512_mul_ps(ws, _mm512_set1_ps(a.d[row * nb + b]));
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), scale, acc[r]);
      if constexpr (!Q8) acc[r] = _mm512_fmadd_ps(wm, _mm512_set1_ps(a.s[row * nb + b]), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) _mm512_storeu_ps(out + r * TILE, acc[r]);
}

// Outputs [o0, o0 + n) (n <= 16, packed in t) for every row: y[r * y_stride + o] = dot + bias.
template <bool Q8>
void tile_all_rows(const Tile& t, const Rows& rw, int64_t rows, int64_t o0, int64_t n,
                   const float* bias, float* y, int64_t y_stride) {
  float res[ROWS * TILE];
  for (int64_t r0 = 0; r0 < rows; r0 += ROWS) {
    const int64_t m = std::min<int64_t>(ROWS, rows - r0);
    switch (m) {
      case 1: tile_rows<1, Q8>(t, rw, r0, res); break;
      case 2: tile_rows<2, Q8>(t, rw, r0, res); break;
      case 3: tile_rows<3, Q8>(t, rw, r0, res); break;
      default: tile_rows<ROWS, Q8>(t, rw, r0, res); break;
    }
    for (int64_t r = 0; r < m; ++r)
      for (int64_t j = 0; j < n; ++j)
        y[(r0 + r) * y_stride + o0 + j] = res[r * TILE + j] + (bias ? bias[o0 + j] : 0.f);
  }
}

template <int64_t kind>
void gemm_of(const Rows& rw, int64_t rows, const uint8_t* w, int64_t row_bytes, int64_t out_f,
             const float* bias, float* y) {
  const int64_t tiles = (out_f + TILE - 1) / TILE;
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    Tile t;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t o0 = i * TILE, n = std::min<int64_t>(TILE, out_f - o0);
      pack_tile<kind>(w, row_bytes, o0, n, rw.a.nb, t);
      tile_all_rows<kind == qdot::Q8_0>(t, rw, rows, o0, n, bias, y, out_f);
    }
  });
}

// y (rows, out_f) = x (rows, in) @ W.T + bias, W the blocks of `kind` (out_f rows of
// row_bytes); `in` a multiple of 32 (of 256 for Q4_K).
inline void gemm(const float* x, int64_t rows, int64_t in, int64_t kind, const uint8_t* w,
                 int64_t row_bytes, int64_t out_f, const float* bias, float* y) {
  Rows rw;
  rw.a.in = in;
  rw.a.nb = in / 32;
  rw.a.q.resize(rows * in);
  rw.a.d.resize(rows * rw.a.nb);
  rw.a.s.resize(rows * rw.a.nb);
  if (kind == qdot::Q8_0) rw.z.resize(rows * rw.a.nb);
  at::parallel_for(0, rows, 8, [&](int64_t r0, int64_t r1) { quantize_rows(x, r0, r1, rw); });
  switch (kind) {
    case qdot::Q8_0: return gemm_of<qdot::Q8_0>(rw, rows, w, row_bytes, out_f, bias, y);
    case qdot::Q4_0: return gemm_of<qdot::Q4_0>(rw, rows, w, row_bytes, out_f, bias, y);
    case qdot::Q4_1: return gemm_of<qdot::Q4_1>(rw, rows, w, row_bytes, out_f, bias, y);
    case qdot::Q5_0: return gemm_of<qdot::Q5_0>(rw, rows, w, row_bytes, out_f, bias, y);
    case qdot::Q4_0X8: return gemm_of<qdot::Q4_0X8>(rw, rows, w, row_bytes, out_f, bias, y);
    default: return gemm_of<qdot::Q4_K>(rw, rows, w, row_bytes, out_f, bias, y);
  }
}

}  // namespace qgemm
}  // namespace

#endif  // LMGEN_VNNI512
