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
// x (rows, in) is read as float32 and the result (rows, out) is returned in x's dtype; any
// number of rows, each weight read from memory once per call for all of them (below).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <omp.h>
#include <torch/library.h>

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "quant_dot.h"

namespace {

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
inline float to_float(at::Half v) { return _cvtsh_ss(v.x); }
inline float to_float(at::BFloat16 v) { return static_cast<float>(v); }
inline float to_float(int8_t v) { return static_cast<float>(v); }

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The products' vectors: 8 lanes (__m256) and, where the CPU has AVX-512, 16 (__m512: Zen 4
// runs a 512-bit FMA as two 256-bit halves, at the same rate, but one load converts twice the
// elements and the 32 registers hold twice the accumulators). `vsum` adds the lanes in a fixed
// order: lanes j and j + 8 first, then the 8 as hsum adds them.
inline __m256 vzero(__m256) { return _mm256_setzero_ps(); }
template <typename T>
inline __m256 vload(__m256, const T* p) { return load8(p); }
inline __m256 vfma(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }
inline __m256 vadd(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }
inline float vsum(__m256 v) { return hsum(v); }
#ifdef __AVX512F__
inline __m512 vzero(__m512) { return _mm512_setzero_ps(); }
inline __m512 vload(__m512, const float* p) { return _mm512_loadu_ps(p); }
inline __m512 vload(__m512, const at::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline __m512 vload(__m512, const at::BFloat16* p) {
  __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
inline __m512 vload(__m512, const int8_t* p) {
  return _mm512_cvtepi32_ps(
      _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline __m512 vfma(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }
inline __m512 vadd(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
inline float vsum(__m512 v) {
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
  return hsum(_mm256_add_ps(_mm512_castps512_ps256(v), hi));
}
// The vector a weight type's products take: float32 keeps 8 lanes (16 measured 5-9% slower at
// one row and at 16 rows), narrower types 16 (bfloat16 and int8 at 16 rows 1.2-1.3x faster).
template <typename W>
using VecOf = std::conditional_t<sizeof(W) == 4, __m256, __m512>;
#else
template <typename W>
using VecOf = __m256;
#endif

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

// ---- bfloat16 weights: products of bfloat16 pairs ------------------------------------------
// A bfloat16 weight multiplies x rounded to bfloat16 (nearest even, as torch's bfloat16 linear
// and llama.cpp's bf16 products do; the residual stream around the products stays float32).
// The product of two bfloat16 values is exact in float32, so a lane can take two of them per
// step: lane l of a chunk of 2 x lanes elements adds x[2l+1] w[2l+1], then x[2l] w[2l], each
// add rounded to nearest. That is AVX512-BF16's vdpbf16ps (Intel's definition; this CPU's
// results matched it on 3.2 million random lanes), which does a 16-lane zmm of it at the rate
// of one float32 FMA: twice the float32 rate a 16-row step is bound by. Without the
// instruction the same two adds are two FMAs, on the pair's halves of each 32-bit word (odd
// element: the high half, as is; even: shifted up): the same bits, at the float32 rate.
// (vdpbf16ps also flushes values below float32's normal range, ~1e-38, to zero; the FMAs keep
// them. No activation or weight of a model comes near.)
template <typename W>
using XOf = std::conditional_t<std::is_same_v<W, at::BFloat16>, at::BFloat16, float>;
// Elements of W one vector of products covers: a lane each, or a pair each for bfloat16.
template <typename W>
constexpr int per_lane() { return std::is_same_v<W, at::BFloat16> ? 2 : 1; }

// x's n floats as bfloat16, rounded to nearest even as c10::BFloat16 rounds (a NaN as 0x7FC0).
inline void to_bf16(const float* x, int64_t n, at::BFloat16* out) {
  const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7FFF),
                nan = _mm256_set1_epi32(0x7FC0);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, bias)), 16);
    r = _mm256_blendv_epi8(r, nan, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
    const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), packed);
  }
  for (; i < n; ++i) out[i] = static_cast<at::BFloat16>(x[i]);
}

// A vector's worth of bfloat16 pairs (2 x lanes elements) as the pair product takes them:
// loaded as they are for vdpbf16ps, or split into each word's odd and even element as floats.
#ifdef __AVX512F__
#ifdef LMGEN_BF16DOT
struct Pairs512 {
  __m512bh v;
};
inline Pairs512 pload(__m512, const at::BFloat16* p) {
  return {(__m512bh)_mm512_loadu_si512(p)};
}
inline __m512 pfma(const Pairs512& w, const Pairs512& x, __m512 acc) {
  return _mm512_dpbf16_ps(acc, w.v, x.v);
}
#else
struct Pairs512 {
  __m512 odd, even;
};
inline Pairs512 pload(__m512, const at::BFloat16* p) {
  const __m512i v = _mm512_loadu_si512(p);
  return {_mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u)))),
          _mm512_castsi512_ps(_mm512_slli_epi32(v, 16))};
}
inline __m512 pfma(const Pairs512& w, const Pairs512& x, __m512 acc) {
  return _mm512_fmadd_ps(w.even, x.even, _mm512_fmadd_ps(w.odd, x.odd, acc));
}
#endif
#endif
// (8 lanes: builds without AVX-512, which never have the instruction)
struct Pairs256 {
  __m256 odd, even;
};
inline Pairs256 pload(__m256, const at::BFloat16* p) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return {_mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u)))),
          _mm256_castsi256_ps(_mm256_slli_epi32(v, 16))};
}
inline __m256 pfma(const Pairs256& w, const Pairs256& x, __m256 acc) {
  return _mm256_fmadd_ps(w.even, x.even, _mm256_fmadd_ps(w.odd, x.odd, acc));
}

inline void store(float* p, float v) { *p = v; }
inline void store(at::Half* p, float v) {  // F16C, not c10's conversion in software
  *p = at::Half(static_cast<uint16_t>(_cvtss_sh(v, _MM_FROUND_TO_NEAREST_INT)),
                at::Half::from_bits());
}
inline void store(at::BFloat16* p, float v) { *p = static_cast<at::BFloat16>(v); }

// ---- y = x W^T for any number of rows of x: register tiles over blocks of W ---------------
// Each dot product (row r of x with row o of W) has K = chains<W>() accumulators of its own,
// vectors of 8 or 16 lanes (VecOf): accumulator k sums x[r, i] W[o, i] over the vector-wide
// chunks c with c mod K = k, in increasing c, one FMA at a time; then the accumulators are
// added pairwise ((0 + 1) + (2 + 3)),
// their lanes summed in a fixed order (vsum) and the elements past the last whole vector added
// one by one (the build has -ffp-contract=off, so no instantiation fuses them differently).
// Nothing else touches a product, so its bits are the same whatever tile computed it, how many
// rows the call has and where the row sits (the server's batch invariance; tested).
//
// Why more than one chain: one chain waits on the FMA latency (4 cycles per 8 elements), below
// the rate at which narrow weights arrive (bfloat16 at the 14M shape, two threads: 30 GB/s
// with one chain, 47 with two; docs/PERFORMANCE.md). The tiles only decide which products
// share a load of W or of x, and in which order the chains are computed:
//
// - one row of x (batch-1 decode) takes one row of W at a time with its K chains interleaved:
//   W streams front to back as one run (four rows of W read side by side ran at 0.5-0.8x the
//   bandwidth on this kind of CPU), and the chains hide the FMA latency;
// - more rows take a register tile of O rows of W by R rows of x, and compute the K chains one
//   after the other, each a pass over every K-th chunk with all O x R accumulators in
//   registers (per chunk: R vectors of x, then one vector of W at a time for R FMAs),
//   kept aside between passes. A step of 16 rows is 16x the FLOPs of one row, so this is what
//   makes it cost FLOPs at near the FMA rate rather than 16 passes over W; the K chains
//   interleaved would leave 1/K of the registers to each (int8 at 16 rows: 7% slower);
// - a block is BLOCK_BYTES of W's rows, which every tile of x passes over while it sits in L2,
//   so W streams from memory once per call;
// - with more than one tile of x, each tile prefetches one line of the next block into L2 per
//   8 elements, so its DRAM reads overlap this block's FMAs instead of waiting after them.
//   One tile of x (up to X_TILE_ROWS rows) is bound by memory, where the hardware's own
//   prefetcher does better on its own (measured).
//
// With AVX512VL the same 256-bit code has 32 registers, not 16: bigger tiles, the same bits.
#ifdef __AVX512VL__
constexpr int VREGS = 32;
#else
constexpr int VREGS = 16;
#endif
constexpr int64_t X_TILE_ROWS = VREGS == 32 ? 6 : 3;
// Bytes of W a block: this one and the next well inside L2 (48 KiB measured best for float32 at
// 16 and 64 rows, 1.14-1.16x against 128 KiB; bfloat16 and int8 the same within noise)
constexpr int64_t BLOCK_BYTES = 48 << 10;
// A product's lanes by W's type, fixed (so that its bits do not depend on the batch), in K
// chains of its vector: float32 one vector (with 8 lanes, a second chain bought nothing at one
// row and cost 30% at 16 rows), float16 16 lanes, int8 32 (bench A/B, docs/PERFORMANCE.md);
// bfloat16 16 lanes of pairs, one chain (two chains ran a 16-row tile over 768 inputs at 135
// GFLOP/s on one thread against 176 with one, and a one-row product no faster).
template <typename W>
constexpr int lanes() { return sizeof(VecOf<W>) / 4; }
template <typename W>
constexpr int chains() {
  if constexpr (per_lane<W>() == 2) return 32 / (2 * lanes<W>());
  return (sizeof(W) == 4 ? lanes<W>() : sizeof(W) == 2 ? 16 : 32) / lanes<W>();
}

// Rows of W in a register tile with R rows of x: the O x R accumulators, R vectors of x and one
// of W within the registers, at most 4; one row of x takes one row of W (above).
constexpr int w_tile_rows(int R) {
  return R == 1 ? 1 : std::max(1, std::min(4, (VREGS - 1 - R) / R));
}

// O x R products of rows of W at w (stride in) and of x at x (stride in), written to y (stride
// out) as acc * scale + bias. With `PF`, one line of the next block (from pf, up to pf_end) is
// prefetched into L2 per 8 float32 or 16 narrower elements of W, while this block sits in cache.
template <typename W, typename Y, int O, int R, bool PF>
inline void tile(const W* w, const XOf<W>* x, int64_t in, const float* scale, const float* bias,
                 Y* y, int64_t out, const char*& pf, const char* pf_end) {
  using Vec = VecOf<W>;
  constexpr int K = chains<W>(), L = lanes<W>() * per_lane<W>();  // L: elements a vector
  const Vec z = Vec{};
  // chunk i .. i + L into the accumulators A (one chain of each product)
  auto chunk = [&](Vec (&A)[O][R], int64_t i) {
    if constexpr (PF) {
      for (int p = 0; p < per_lane<W>(); ++p) {  // a line per 8 float32 / 16 narrower W
        _mm_prefetch(pf, _MM_HINT_T1);
        pf = std::min(pf + 64, pf_end);
      }
    }
    if constexpr (per_lane<W>() == 2) {
      using Pairs = decltype(pload(z, x));
      Pairs xv[R];
      for (int r = 0; r < R; ++r) xv[r] = pload(z, x + r * in + i);
      for (int o = 0; o < O; ++o) {
        const Pairs wv = pload(z, w + o * in + i);
        for (int r = 0; r < R; ++r) A[o][r] = pfma(wv, xv[r], A[o][r]);
      }
    } else {
      Vec xv[R];
      for (int r = 0; r < R; ++r) xv[r] = vload(z, x + r * in + i);
      for (int o = 0; o < O; ++o) {
        const Vec wv = vload(z, w + o * in + i);
        for (int r = 0; r < R; ++r) A[o][r] = vfma(wv, xv[r], A[o][r]);
      }
    }
  };
  const int64_t nL = in / L * L;
  Vec a[K][O][R];
  for (int k = 0; k < K; ++k)
    for (int o = 0; o < O; ++o)
      for (int r = 0; r < R; ++r) a[k][o][r] = vzero(z);
  if constexpr (O * R == 1) {  // the K chains interleaved
    const int64_t nK = in / (L * K) * (L * K);
    for (int64_t i = 0; i < nK; i += L * K) {
      chunk(a[0], i);
      if constexpr (K > 1) chunk(a[1], i + L);
      if constexpr (K > 2) chunk(a[2], i + 2 * L);
      if constexpr (K > 3) chunk(a[3], i + 3 * L);
    }
    if (nK < nL) chunk(a[0], nK);  // the chunks left (fewer than K): chunk j into chain j
    if constexpr (K > 2)
      if (nK + L < nL) chunk(a[1], nK + L);
    if constexpr (K > 3)
      if (nK + 2 * L < nL) chunk(a[2], nK + 2 * L);
  } else {  // one chain after the other, the tile's accumulators in registers for each
    for (int k = 0; k < K; ++k) {
      Vec c[O][R];
      for (int o = 0; o < O; ++o)
        for (int r = 0; r < R; ++r) c[o][r] = vzero(z);
      for (int64_t i = L * k; i < nL; i += L * K) chunk(c, i);
      for (int o = 0; o < O; ++o)
        for (int r = 0; r < R; ++r) a[k][o][r] = c[o][r];
    }
  }
  for (int o = 0; o < O; ++o)  // the chains added pairwise: (0 + 1) + (2 + 3)
    for (int r = 0; r < R; ++r) {
      if constexpr (K > 2) a[2][o][r] = vadd(a[2][o][r], a[3][o][r]);
      if constexpr (K > 1) a[0][o][r] = vadd(a[0][o][r], a[1][o][r]);
      if constexpr (K > 2) a[0][o][r] = vadd(a[0][o][r], a[2][o][r]);
    }
  for (int o = 0; o < O; ++o) {
    const float s = scale ? scale[o] : 1.0f;
    const float b = bias ? bias[o] : 0.0f;
    for (int r = 0; r < R; ++r) {
      float d = vsum(a[0][o][r]);
      for (int64_t j = nL; j < in; ++j) d += to_float(w[o * in + j]) * to_float(x[r * in + j]);
      store(y + r * out + o, d * s + b);
    }
  }
}

// Rows [o0, o1) of W times R rows of x from row r0.
template <typename W, typename Y, int R, bool PF>
void tile_rows(const W* w, const XOf<W>* x, int64_t in, const float* scale, const float* bias,
               Y* y, int64_t out, int64_t r0, int64_t o0, int64_t o1, const char*& pf,
               const char* pf_end) {
  constexpr int O = w_tile_rows(R);
  const XOf<W>* xr = x + r0 * in;
  Y* yr = y + r0 * out;
  auto sc = [&](int64_t o) { return scale ? scale + o : nullptr; };
  auto bi = [&](int64_t o) { return bias ? bias + o : nullptr; };
  int64_t o = o0;
  for (; o + O <= o1; o += O)
    tile<W, Y, O, R, PF>(w + o * in, xr, in, sc(o), bi(o), yr + o, out, pf, pf_end);
  for (; o < o1; ++o)
    tile<W, Y, 1, R, PF>(w + o * in, xr, in, sc(o), bi(o), yr + o, out, pf, pf_end);
}

template <typename W, typename Y, bool PF>
void tiles(const W* w, const XOf<W>* x, int64_t in, const float* scale, const float* bias, Y* y,
           int64_t out, int64_t rows, int64_t o0, int64_t o1, const char* pf, const char* pf_end) {
  for (int64_t r0 = 0; r0 < rows; r0 += X_TILE_ROWS) {
#define LMGEN_TILE_ROWS(R) \
  tile_rows<W, Y, R, PF>(w, x, in, scale, bias, y, out, r0, o0, o1, pf, pf_end); break;
    switch (std::min<int64_t>(X_TILE_ROWS, rows - r0)) {
      case 1: LMGEN_TILE_ROWS(1)
      case 2: LMGEN_TILE_ROWS(2)
      case 3: LMGEN_TILE_ROWS(3)
      case 4: LMGEN_TILE_ROWS(4)
      case 5: LMGEN_TILE_ROWS(5)
      default: LMGEN_TILE_ROWS(6)
    }
#undef LMGEN_TILE_ROWS
  }
}

// Rows [begin, end) of y = x W^T (times a scale per output row, plus a bias) for any number of
// rows of x, y's rows `ys` apart, on the calling thread: block by block; with more than one
// tile of x, the next block is prefetched while every tile of x passes over this one.
template <typename W, typename Y>
void gemv_part(int64_t rows, const W* w, const float* xf, const float* scale, const float* bias,
               Y* y, int64_t ys, int64_t in, int64_t begin, int64_t end) {
  const XOf<W>* x = nullptr;
  if constexpr (per_lane<W>() == 2) {  // x rounded to bfloat16 once a call (above)
    thread_local std::vector<at::BFloat16> xb;
    xb.resize(rows * in);
    to_bf16(xf, rows * in, xb.data());
    x = xb.data();
  } else {
    x = xf;
  }
  const int64_t row_bytes = in * sizeof(W);
  const int64_t block = std::max<int64_t>(8, BLOCK_BYTES / std::max<int64_t>(1, row_bytes));
  const bool prefetch = rows > X_TILE_ROWS;
  for (int64_t o0 = begin; o0 < end; o0 += block) {
    const int64_t o1 = std::min(end, o0 + block), o2 = std::min(end, o1 + block);
    const char* pf = reinterpret_cast<const char*>(w + o1 * in);
    const char* pf_end = reinterpret_cast<const char*>(w + o2 * in);
    if (prefetch) tiles<W, Y, true>(w, x, in, scale, bias, y, ys, rows, o0, o1, pf, pf_end);
    else tiles<W, Y, false>(w, x, in, scale, bias, y, ys, rows, o0, o1, pf, pf_end);
  }
}

// Whether the kernel takes weights of w's dtype (float32, float16, bfloat16, int8).
bool known_weight(const at::Tensor& w) {
  const at::ScalarType t = w.scalar_type();
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kChar;
}

// Calls f(p) with p w's data as its element type; w of a known_weight dtype.
template <typename F>
void with_weight(const at::Tensor& w, F f) {
  switch (w.scalar_type()) {
    case at::kFloat: return f(w.data_ptr<float>());
    case at::kHalf: return f(w.data_ptr<at::Half>());
    case at::kBFloat16: return f(w.data_ptr<at::BFloat16>());
    default: return f(w.data_ptr<int8_t>());
  }
}

// The step's barrier, spinning: a step meets at ~5 barriers a layer, and OpenMP's own barrier
// follows OMP_WAIT_POLICY, which a server may set to passive so that idle worker threads leave
// the cores to its event loop between steps (a futex wake per barrier would cost more than the
// step's arithmetic at small models). A waiter that has spun SPIN_YIELD times yields its core
// now and then, so that with more runnable threads than cores it lets the thread it waits for
// run rather than burning that thread's turn.
struct SpinBarrier {
  static constexpr int SPIN_YIELD = 4096;
  std::atomic<int> arrived{0};
  std::atomic<int> phase{0};
  int n;

  explicit SpinBarrier(int threads) : n(threads) {}

  void wait(int& my_phase) {
    my_phase ^= 1;
    if (arrived.fetch_add(1, std::memory_order_acq_rel) == n - 1) {  // the last to arrive
      arrived.store(0, std::memory_order_relaxed);
      phase.store(my_phase, std::memory_order_release);
      return;
    }
    for (int spins = 0; phase.load(std::memory_order_acquire) != my_phase; ++spins) {
      _mm_pause();
      if (spins >= SPIN_YIELD && spins % 256 == 0) sched_yield();
    }
  }
};

struct Team {
  int t, n;  // this thread, threads
  SpinBarrier* barrier;
  int phase = 0;

  // This thread's contiguous share of `items`, its bounds on multiples of `align`.
  std::pair<int64_t, int64_t> share(int64_t items, int64_t align = 1) const {
    const int64_t units = (items + align - 1) / align;
    return {std::min(items, units * t / n * align), std::min(items, units * (t + 1) / n * align)};
  }

  // Every thread's writes before this are seen by every thread after it.
  void sync() {
    if (n > 1) barrier->wait(phase);
  }
};

// Runs f(Team&) on torch's thread count, in one parallel region (one thread when called from
// inside a parallel region). f must not throw: the step checks its inputs before.
template <typename F>
void run_team(F f) {
  const int nt = omp_in_parallel() ? 1 : std::max(1, at::get_num_threads());
  if (nt == 1) {
    Team team{0, 1, nullptr};
    return f(team);
  }
  SpinBarrier barrier(nt);
#pragma omp parallel num_threads(nt)
  {
    Team team{omp_get_thread_num(), omp_get_num_threads(), &barrier};
    if (team.n != nt) {  // fewer threads than asked (OMP_THREAD_LIMIT, ...): a barrier of those
      team.t = 0;
      team.n = 1;
#pragma omp single
      f(team);
    } else {
      f(team);
      team.sync();  // so that OpenMP's own join at the region's end finds every thread there
    }
  }
}

// y = x W^T (times a scale per output row, plus a bias) for any number of rows of x, each
// thread a range of W's rows.
template <typename Y>
void dispatch_weight(const at::Tensor& w, int64_t rows, const float* x, const float* scale,
                     const float* bias, Y* y) {
  TORCH_CHECK(known_weight(w), "decode_gemv: w must be float32, float16, bfloat16 or int8");
  const int64_t out = w.size(0), in = w.size(1);
  with_weight(w, [&](auto* p) {
    run_team([&](Team& tm) {
      const auto [begin, end] = tm.share(out, 16);
      gemv_part(rows, p, x, scale, bias, y, out, in, begin, end);
    });
  });
}

// A small tensor (x, a scale, a bias) as float32, converted here rather than by a dispatched
// `.to()`: a decode step makes ~50 of these calls, and each ATen op costs microseconds.
const float* as_float(const at::Tensor& t, std::vector<float>& buf) {
  if (t.scalar_type() == at::kFloat) return t.data_ptr<float>();
  const int64_t n = t.numel();
  buf.resize(n);
  auto convert = [&](auto* p) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(buf.data() + i, load8(p + i));
    for (; i < n; ++i) buf[i] = to_float(p[i]);
  };
  switch (t.scalar_type()) {
    case at::kHalf: convert(t.data_ptr<at::Half>()); break;
    case at::kBFloat16: convert(t.data_ptr<at::BFloat16>()); break;
    default: TORCH_CHECK(false, "decode_gemv: x, scale and bias must be float32, float16 or bfloat16");
  }
  return buf.data();
}

at::Tensor decode_gemv(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& scale,
                       const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "decode_gemv: CPU tensors only");
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2, "decode_gemv: x (rows, in) and w (out, in)");
  TORCH_CHECK(x.size(1) == w.size(1), "decode_gemv: x and w disagree on in_features");
  TORCH_CHECK(x.size(0) >= 1, "decode_gemv: at least one row");
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

// Lanes 0 .. min(n, 8) - 1 set: the mask of a loop's last, partial vector.
inline __m256i first_lanes(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::min<int64_t>(8, n))),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// e^x for 8 floats, for the attention's softmax and the MLP's activation: the usual range
// reduction, e^x = 2^n e^r with n = round(x / ln 2), r = x - n ln 2 in two parts
// (|r| <= ln 2 / 2), e^r by its series to r^7 (truncation below 1e-7 relative), x clamped to
// [-87, 88] so that 2^n stays a normal float. Within ~2 ulp of the correctly rounded value; the
// same instructions in every lane and in a masked tail, so an element's bits do not depend on
// where it sits (batch invariance).
inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  // ln 2's high part, exact
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);      // and its low part
  __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
  for (float c : {1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f, 0.5f, 1.0f, 1.0f})
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
  const __m256i two_n = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(two_n));
}

// One query against L cached keys and values, no mask: scores = q.k * scale, softmax in
// float32, out = sum p v. q is float32 (D); a key or value row l is at kb + l * ks (D contiguous).
template <typename T>
void attend_ptr(const float* q, const T* kb, int64_t ks, const T* vb, int64_t vs, int64_t L,
                int64_t D, float scale, float* out, std::vector<float>& p) {
  p.resize(L);
  float m = -INFINITY;
  for (int64_t l = 0; l < L; ++l) {
    float dot[1];
    dot_rows<T, 1>(kb + l * ks, q, D, dot);
    p[l] = dot[0] * scale;
    m = std::max(m, p[l]);
  }
  // the exponentials 8 at a time (exp8, below: glibc's expf was a third of a 16-row step's
  // attention), summed in 8 lanes
  __m256 acc = _mm256_setzero_ps();
  const __m256 mv = _mm256_set1_ps(m);
  for (int64_t l = 0; l < L; l += 8) {
    const __m256i mask = first_lanes(L - l);
    const __m256 e = exp8(_mm256_sub_ps(_mm256_maskload_ps(p.data() + l, mask), mv));
    _mm256_maskstore_ps(p.data() + l, mask, e);
    acc = _mm256_add_ps(acc, _mm256_and_ps(e, _mm256_castsi256_ps(mask)));
  }
  const float inv = 1.0f / hsum(acc);
  std::fill(out, out + D, 0.0f);
  for (int64_t l = 0; l < L; ++l) {
    const float pl = p[l] * inv;
    const __m256 pv = _mm256_set1_ps(pl);
    const T* vr = vb + l * vs;
    int64_t d = 0;
    for (; d + 8 <= D; d += 8)
      _mm256_storeu_ps(out + d, _mm256_fmadd_ps(pv, load8(vr + d), _mm256_loadu_ps(out + d)));
    for (; d < D; ++d) out[d] += pl * to_float(vr[d]);
  }
}

// The attention of a decode step for q (B, H, 1, D) against views k, v (B, H, L, D) of the KV
// cache, D contiguous; one task per (row, head).
template <typename T>
void attend_one(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out,
                float scale) {
  const int64_t B = q.size(0), H = q.size(1), L = k.size(2), D = q.size(3);
  const T* qp = q.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(D), p, acc(D);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const T* qr = qp + b * q.stride(0) + h * q.stride(1);
      for (int64_t d = 0; d < D; ++d) qf[d] = to_float(qr[d]);
      attend_ptr<T>(qf.data(), kp + b * k.stride(0) + h * k.stride(1), k.stride(2),
                    vp + b * v.stride(0) + h * v.stride(1), v.stride(2), L, D, scale, acc.data(), p);
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

// ---- A whole decode step through the blocks, in one call --------------------------------
// Each block of a decode step is ~30 small operations; dispatched one by one from Python they
// cost more than the arithmetic for small models (docs/PERFORMANCE.md). Here the blocks run in
// one call, activations in float32 (the weights and the KV cache keep the model's dtype).

// The norms, 8 lanes at a time: a row's sums are 8 partial sums added by hsum, the last
// elements loaded under a mask. At 16 rows every thread normalizes every row twice a layer, and
// the serial sums (the mean and variance in double) were about a tenth of the 124M step.
void layer_norm(const float* x, float* out, int64_t rows, int64_t C, const float* w,
                const float* b, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * C;
    float* o = out + r * C;
    __m256 s = _mm256_setzero_ps();
    for (int64_t i = 0; i < C; i += 8)
      s = _mm256_add_ps(s, _mm256_maskload_ps(xr + i, first_lanes(C - i)));
    const __m256 mean = _mm256_set1_ps(hsum(s) / C);
    __m256 q = _mm256_setzero_ps();
    for (int64_t i = 0; i < C; i += 8) {
      const __m256i m = first_lanes(C - i);
      const __m256 d = _mm256_and_ps(_mm256_sub_ps(_mm256_maskload_ps(xr + i, m), mean),
                                     _mm256_castsi256_ps(m));
      q = _mm256_add_ps(q, _mm256_mul_ps(d, d));
    }
    const __m256 inv = _mm256_set1_ps(1.0f / std::sqrt(hsum(q) / C + eps));
    for (int64_t i = 0; i < C; i += 8) {
      const __m256i m = first_lanes(C - i);
      const __m256 h = _mm256_mul_ps(_mm256_sub_ps(_mm256_maskload_ps(xr + i, m), mean), inv);
      _mm256_maskstore_ps(o + i, m, _mm256_fmadd_ps(h, _mm256_maskload_ps(w + i, m),
                                                    _mm256_maskload_ps(b + i, m)));
    }
  }
}

// The MLP's activation, 8 lanes at a time: at 16 rows of the 124M shape the scalar tanh GELU
// (glibc's tanhf, ~70 cycles an element) was a fifth of the step (29.5 -> 23.2 ms without it,
// measured). Tanh GELU and SiLU are both x * sigmoid(z) (GELU: tanh(u) = 2 sigmoid(2u) - 1),
// one exp8 each; sigmoid's saturation is 1e-38 from its limit.
inline __m256 times_sigmoid(__m256 x, __m256 z) {
  const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), z));
  return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

void activation(float* x, int64_t n, int64_t kind) {
  if (kind == 0 || kind == 3) {  // tanh GELU (gelu_new, gelu_pytorch_tanh); SiLU (SwiGLU)
    for (int64_t i = 0; i < n; i += 8) {
      const __m256i mask = first_lanes(n - i);
      const __m256 v = _mm256_maskload_ps(x + i, mask);
      __m256 z = v;  // SiLU: v sigmoid(v)
      if (kind == 0) {  // GELU: v sigmoid(2 sqrt(2/pi) (v + 0.044715 v^3))
        const __m256 v3 = _mm256_mul_ps(_mm256_mul_ps(v, v), v);
        z = _mm256_mul_ps(_mm256_set1_ps(2.0f * 0.7978845608028654f),
                          _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), v3, v));
      }
      _mm256_maskstore_ps(x + i, mask, times_sigmoid(v, z));
    }
    return;
  }
  if (kind == 1) {  // exact (erf) GELU
    for (int64_t i = 0; i < n; ++i) x[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * 0.7071067811865476f));
    return;
  }
  for (int64_t i = 0; i < n; ++i) x[i] = std::max(x[i], 0.0f);  // relu
}

// One part of a weight held as ggml blocks (lmgen.quantize.QuantLinear): `rows` output rows
// of `kind` blocks (row_bytes each), or, kind 0, a float weight (a part whose type is not kept).
struct BlockPart {
  at::Tensor w;
  int64_t kind, rows, row_bytes;
};

// A linear layer of the step: a float or int8 weight `w` (with a scale per output row for
// int8), or, where `parts` is not empty, ggml blocks in parts stacked by output rows.
struct Linear {
  at::Tensor w;
  const float* scale;
  const float* bias;
  std::vector<BlockPart> parts = {};
  int64_t out = 0, in = 0;  // output rows, inputs
};

// ---- One parallel region a step ------------------------------------------------------------
// A fused step runs in one OpenMP parallel region, not one per operation: at the 14M shape a
// step is ~30 small products and attentions, and a fork/join per operation cost more than a
// barrier. Each thread takes its share of every matrix's output rows and of the (row, head)
// attention units, and the threads meet at a barrier only where the next operation needs all
// of the last one's outputs. The small elementwise work (norms, residual adds, the activation
// quantized for block products) every thread does for itself, on its own copy of the residual
// stream: cheaper than a barrier, and the same bits in each copy. Scratch buffers live per
// thread and per calling thread and only grow, so a step allocates nothing once warm. Which
// thread computes a product does not change its bits (each product is its own sum), so the
// results are those of the operation-by-operation kernels, whatever the thread count.
// A thread's own buffers in a fused step: its copy of the residual stream, a norm's output, the
// attention's scores, the activations quantized for block products.
struct ThreadScratch {
  std::vector<float> x, h, p;
  qdot::Act act;
};

ThreadScratch& thread_scratch() {
  thread_local ThreadScratch s;
  return s;
}

// The buffers a step's threads share (products' outputs), one set per calling thread.
struct StepBuffers {
  std::vector<float> qkv, att, u, g, y;
};

StepBuffers& step_buffers() {
  thread_local StepBuffers s;
  return s;
}

inline void add_to(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

// Output columns [o0, o1) of y (rows, L.out) = x (rows, L.in) L^T + bias, on this thread. Block
// parts take x quantized to int8 once (into `act`; `quantized` says whether it already holds
// this x) and compute each product as lmgen.kernels.quant's quant_gemv does (quant_dot.h), bias
// added last as QuantLinear adds it: the same bits as the op-by-op layer for the same x.
void linear_rows(const Linear& L, int64_t rows, const float* x, float* y, qdot::Act& act,
                 bool& quantized, int64_t o0, int64_t o1) {
  if (o0 >= o1) return;
  if (L.parts.empty()) {
    with_weight(L.w, [&](auto* w) {
      gemv_part(rows, w, x, L.scale, L.bias, y, L.out, L.in, o0, o1);
    });
    return;
  }
  int64_t off = 0;
  for (const BlockPart& p : L.parts) {
    const int64_t a = std::max(o0, off) - off, b = std::min(o1, off + p.rows) - off;
    const float* bias = L.bias ? L.bias + off : nullptr;
    if (a < b && p.kind) {
      if (!quantized) qdot::quantize_act(x, rows, L.in, act);
      quantized = true;
      qdot::gemv_range(act, rows, p.kind, p.w.data_ptr<uint8_t>(), p.row_bytes, a, b, bias,
                       y + off, L.out);
    } else if (a < b) {
      with_weight(p.w, [&](auto* w) {
        gemv_part(rows, w, x, nullptr, nullptr, y + off, L.out, L.in, a, b);
      });
      if (bias)
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t o = a; o < b; ++o) y[r * L.out + off + o] += bias[o];
    }
    off += p.rows;
  }
}

// linear_rows for x's first use
void linear_rows(const Linear& L, int64_t rows, const float* x, float* y, qdot::Act& act,
                 std::pair<int64_t, int64_t> cols) {
  bool quantized = false;
  linear_rows(L, rows, x, y, act, quantized, cols.first, cols.second);
}

// The ggml-block layers of a step's parameters: `blocks` their parts in order, `parts` per
// linear layer (in the order of the parameter list) the count of its parts and then each
// part's ggml type (0: a float part); a count of 0 means the layer's weight is in the
// parameter list. Empty lists: no layer holds blocks.
struct BlockReader {
  const char* op;
  const std::vector<at::Tensor>& blocks;
  at::IntArrayRef parts;
  size_t p = 0, b = 0;

  // The next linear layer, of `in` inputs and `out` outputs (-1: any number): its weight `w`
  // from the parameter list, or (w undefined) its ggml parts. Scale and bias are left unset.
  Linear next(const at::Tensor& w_plain, int64_t out, int64_t in) {
    const int64_t n = parts.empty() ? 0 : take();
    TORCH_CHECK((n == 0) == w_plain.defined(), op,
                ": a linear layer needs a weight or ggml parts, not both");
    Linear L{w_plain, nullptr, nullptr};
    L.in = in;
    if (n == 0) {
      TORCH_CHECK(known_weight(w_plain), op,
                  ": weights must be float32, float16, bfloat16 or int8");
      L.out = w_plain.size(0);
      return L;
    }
    int64_t rows = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int64_t kind = take();
      TORCH_CHECK(b < blocks.size(), op, ": fewer ggml parts than `parts` lists");
      const at::Tensor& w = blocks[b++];
      TORCH_CHECK(w.device().is_cpu() && w.dim() == 2, op, ": a ggml part must be 2-d on CPU");
      if (kind) {
        TORCH_CHECK(qdot::known_kind(kind), op, ": unknown ggml type ", kind);
        qdot::check_blocks(w, kind, in);
      } else {
        TORCH_CHECK(w.is_contiguous() && w.size(1) == in && known_weight(w), op,
                    ": a float part must be a contiguous (rows, ", in, ") matrix of float32, "
                    "float16, bfloat16 or int8");
      }
      L.parts.push_back({w, kind, w.size(0), w.size(1)});
      rows += w.size(0);
    }
    TORCH_CHECK(out < 0 || rows == out, op, ": ggml parts of ", rows, " rows for a layer of ",
                out);
    L.out = rows;
    return L;
  }

  void done() const {
    TORCH_CHECK(p == parts.size() && b == blocks.size(), op,
                ": more ggml parts than linear layers");
  }

 private:
  int64_t take() {
    TORCH_CHECK(p < parts.size(), op, ": `parts` ends early");
    return parts[p++];
  }
};

// Where one row's keys and values are: layer l, head h, position p at k (or v) + l * layer +
// h * head + p * step; `pos` is the position this step writes, so the row attends to pos + 1
// keys. generate's batch shares one cache and one position (`shared_cache`); the server's rows
// each have a cache of their own, filled to their own length (`row_caches`).
template <typename T>
struct RowKV {
  T* k;
  T* v;
  int64_t layer, head, step, pos;
};

// The checks both kinds of cache share: (n_layer, rows, heads, max_length, head_dim), k and v of
// one shape, strides and dtype, head_dim contiguous.
void check_cache(const char* op, const at::Tensor& k, const at::Tensor& v, int64_t n_layer,
                 int64_t rows, int64_t heads, int64_t D) {
  TORCH_CHECK(k.dim() == 5 && k.sizes() == v.sizes() && k.strides() == v.strides() &&
                  k.size(0) == n_layer && k.size(1) == rows && k.size(2) == heads &&
                  k.size(4) == D && k.stride(4) == 1 && k.device().is_cpu(),
              op, ": the KV cache must be (n_layer, rows, heads, max_length, head_dim) with k and v "
              "alike");
  TORCH_CHECK(k.scalar_type() == v.scalar_type(), op, ": k and v of one dtype");
}

template <typename T>
std::vector<RowKV<T>> shared_cache(const at::Tensor& k, const at::Tensor& v, int64_t pos) {
  std::vector<RowKV<T>> out;
  for (int64_t b = 0; b < k.size(1); ++b)
    out.push_back({k.data_ptr<T>() + b * k.stride(1), v.data_ptr<T>() + b * v.stride(1),
                   k.stride(0), k.stride(2), k.stride(3), pos});
  return out;
}

template <typename T>
std::vector<RowKV<T>> row_caches(const std::vector<at::Tensor>& k, const std::vector<at::Tensor>& v,
                                 at::IntArrayRef pos) {
  std::vector<RowKV<T>> out;
  for (size_t b = 0; b < k.size(); ++b)
    out.push_back({k[b].data_ptr<T>(), v[b].data_ptr<T>(), k[b].stride(0), k[b].stride(2),
                   k[b].stride(3), pos[b]});
  return out;
}

// Checks a cache per row (each (n_layer, 1, heads, max_length, head_dim), all of one dtype) and
// each row's position; returns their dtype.
at::ScalarType check_row_caches(const char* op, const std::vector<at::Tensor>& k,
                                const std::vector<at::Tensor>& v, at::IntArrayRef pos,
                                int64_t rows, int64_t n_layer, int64_t heads, int64_t D) {
  TORCH_CHECK(static_cast<int64_t>(k.size()) == rows && static_cast<int64_t>(v.size()) == rows &&
                  static_cast<int64_t>(pos.size()) == rows,
              op, ": one k cache, one v cache and one position per row");
  for (int64_t b = 0; b < rows; ++b) {
    check_cache(op, k[b], v[b], n_layer, 1, heads, D);
    TORCH_CHECK(k[b].scalar_type() == k[0].scalar_type(), op, ": every row's cache of one dtype");
    TORCH_CHECK(pos[b] >= 0 && pos[b] < k[b].size(3), op, ": row ", b,
                "'s position is outside its KV cache");
  }
  return k[0].scalar_type();
}

// Calls f(T{}) with T the KV cache's element type.
template <typename F>
void with_cache_type(const char* op, at::ScalarType t, F f) {
  switch (t) {
    case at::kFloat: return f(float{});
    case at::kHalf: return f(at::Half{});
    case at::kBFloat16: return f(at::BFloat16{});
    default: TORCH_CHECK(false, op, ": the KV cache must be float32, float16 or bfloat16");
  }
}

// Row c's key and value head h of layer l (k, v: D floats each) into its cache at its position.
template <typename T>
void write_kv_head(const float* k, const float* v, int64_t D, int64_t l, int64_t h,
                   const RowKV<T>& c) {
  T* kd = c.k + l * c.layer + h * c.head + c.pos * c.step;
  T* vd = c.v + l * c.layer + h * c.head + c.pos * c.step;
  for (int64_t d = 0; d < D; ++d) {
    store(kd + d, k[d]);
    store(vd + d, v[d]);
  }
}

// Query head q (D floats) of row c against key/value head kvh of layer l, from position
// `start` to the row's own; out: D floats.
template <typename T>
void attend_head(const float* q, int64_t D, int64_t l, int64_t kvh, const RowKV<T>& c,
                 int64_t start, float scale, float* out, std::vector<float>& p) {
  const int64_t off = l * c.layer + kvh * c.head + start * c.step;
  attend_ptr<T>(q, c.k + off, c.step, c.v + off, c.step, c.pos + 1 - start, D, scale, out, p);
}

template <typename T>
void run_blocks(float* x, int64_t rows, int64_t C, int64_t H, int64_t n_layer,
                const std::vector<const float*>& norms, const std::vector<Linear>& lin,
                const std::vector<RowKV<T>>& kv, float eps, int64_t act) {
  const int64_t D = C / H, inner = lin[2].out, n = rows * C;
  const float scale = 1.0f / std::sqrt(static_cast<float>(D));
  StepBuffers& s = step_buffers();
  s.qkv.resize(rows * 3 * C);
  s.att.resize(n);
  s.u.resize(rows * inner);
  s.y.resize(n);
  float *qkv = s.qkv.data(), *att = s.att.data(), *u = s.u.data(), *y = s.y.data();
  run_team([&](Team& tm) {
    ThreadScratch& ts = thread_scratch();
    ts.x.assign(x, x + n);
    ts.h.resize(n);
    float *xp = ts.x.data(), *h = ts.h.data();
    const auto qkv_cols = tm.share(3 * C, 16), c_cols = tm.share(C, 16);
    const auto fc_cols = tm.share(inner, 16), heads = tm.share(rows * H);
    for (int64_t l = 0; l < n_layer; ++l) {
      const float* const* nrm = norms.data() + 4 * l;
      const Linear* ln = lin.data() + 4 * l;
      layer_norm(xp, h, rows, C, nrm[0], nrm[1], eps);
      linear_rows(ln[0], rows, h, qkv, ts.act, qkv_cols);
      tm.sync();
      for (int64_t bh = heads.first; bh < heads.second; ++bh) {  // each head its own K and V
        const int64_t b = bh / H, hh = bh % H;
        const float* q = qkv + b * 3 * C + hh * D;
        write_kv_head<T>(q + C, q + 2 * C, D, l, hh, kv[b]);
        attend_head<T>(q, D, l, hh, kv[b], 0, scale, att + b * C + hh * D, ts.p);
      }
      tm.sync();
      linear_rows(ln[1], rows, att, y, ts.act, c_cols);
      tm.sync();
      add_to(xp, y, n);
      layer_norm(xp, h, rows, C, nrm[2], nrm[3], eps);
      linear_rows(ln[2], rows, h, u, ts.act, fc_cols);
      for (int64_t b = 0; b < rows; ++b)
        activation(u + b * inner + fc_cols.first, fc_cols.second - fc_cols.first, act);
      tm.sync();
      linear_rows(ln[3], rows, u, y, ts.act, c_cols);
      tm.sync();
      add_to(xp, y, n);
    }
    if (tm.t == 0 && n_layer > 0) std::copy(xp, xp + n, x);
  });
}

// The residual stream (rows x C, float32) returned in x's dtype.
at::Tensor residual_out(const std::vector<float>& xs, const at::Tensor& x) {
  at::Tensor out = at::empty(x.sizes(), x.options());
  const int64_t n = static_cast<int64_t>(xs.size());
  switch (x.scalar_type()) {
    case at::kFloat: std::copy(xs.begin(), xs.end(), out.data_ptr<float>()); break;
    case at::kHalf:
      for (int64_t i = 0; i < n; ++i) store(out.data_ptr<at::Half>() + i, xs[i]);
      break;
    default:
      for (int64_t i = 0; i < n; ++i) store(out.data_ptr<at::BFloat16>() + i, xs[i]);
  }
  return out;
}

// x (rows, C) as float32 activations.
std::vector<float> residual_in(const at::Tensor& x) {
  std::vector<float> xbuf;
  at::Tensor xc = x.contiguous();
  const float* xin = as_float(xc, xbuf);
  return std::vector<float>(xin, xin + x.numel());
}

// GPT-2 blocks' tensors, checked and viewed as float32 where small (norms, scales, biases);
// `keep` holds the contiguous copies alive for the call.
struct Gpt2Params {
  std::vector<at::Tensor> keep;
  std::vector<std::vector<float>> bufs;
  std::vector<const float*> norms;
  std::vector<Linear> lin;
};

void gather_gpt2(const char* op, const c10::List<c10::optional<at::Tensor>>& params,
                 int64_t n_layer, int64_t C, BlockReader& R, Gpt2Params& P) {
  TORCH_CHECK(static_cast<int64_t>(params.size()) == 16 * n_layer, op,
              ": 16 parameters per layer");
  P.bufs.resize(16 * n_layer);
  auto as_f = [&](int64_t i) -> const float* {
    c10::optional<at::Tensor> t = params.get(i);
    if (!t.has_value()) return nullptr;
    P.keep.push_back(t->contiguous());
    return as_float(P.keep.back(), P.bufs[i]);
  };
  for (int64_t l = 0; l < n_layer; ++l) {
    const int64_t b = 16 * l;
    for (int64_t j : {0, 1, 8, 9}) {
      c10::optional<at::Tensor> t = params.get(b + j);
      TORCH_CHECK(t.has_value() && t->numel() == C, op,
                  ": the layer norms need a weight and a bias of n_embd values");
    }
    P.norms.push_back(as_f(b + 0));
    P.norms.push_back(as_f(b + 1));
    P.norms.push_back(as_f(b + 8));
    P.norms.push_back(as_f(b + 9));
    int64_t inner = -1;  // c_fc's outputs (any number), then c_proj's inputs
    int k = 0;
    for (int64_t j : {2, 5, 10, 13}) {
      const int64_t out = k == 0 ? 3 * C : k == 2 ? -1 : C, in = k == 3 ? inner : C;
      c10::optional<at::Tensor> w = params.get(b + j);
      TORCH_CHECK(!w.has_value() || (w->dim() == 2 && w->is_contiguous() &&
                                     (out < 0 || w->size(0) == out) && w->size(1) == in),
                  op, ": layer ", l, " weight ", k,
                  " must be a contiguous (3C, C), (C, C), (inner, C) or (C, inner) matrix");
      Linear L = R.next(w.has_value() ? *w : at::Tensor(), out, in);
      for (int64_t extra : {j + 1, j + 2}) {
        c10::optional<at::Tensor> t = params.get(b + extra);
        TORCH_CHECK(!t.has_value() || t->numel() == L.out, op,
                    ": a scale or bias per output row of each weight");
      }
      TORCH_CHECK(L.parts.empty() || !params.get(b + j + 1).has_value(), op,
                  ": a layer of ggml blocks takes no scale");
      L.scale = as_f(b + j + 1);
      L.bias = as_f(b + j + 2);
      if (k == 2) inner = L.out;
      P.lin.push_back(L);
      ++k;
    }
  }
  R.done();
}

// x (rows, C): the step's embeddings. params: 16 per layer, in order ln_1 weight, bias; c_attn
// weight, scale (None unless int8), bias; attention c_proj (3); ln_2 (2); c_fc (3); mlp c_proj
// (3). k_all, v_all: the KV cache (n_layer, rows, H, max_length, D); `pos` is the position this
// step writes. Returns the residual stream after the last block, in x's dtype.
at::Tensor decode_step(const at::Tensor& x, const c10::List<c10::optional<at::Tensor>>& params,
                       const at::Tensor& k_all, const at::Tensor& v_all, int64_t pos,
                       int64_t n_head, double eps, int64_t act,
                       const std::vector<at::Tensor>& blocks, at::IntArrayRef parts) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2, "decode_step: x (rows, n_embd) on CPU");
  const int64_t rows = x.size(0), C = x.size(1), n_layer = k_all.dim() == 5 ? k_all.size(0) : 0;
  TORCH_CHECK(rows >= 1, "decode_step: at least one row");
  TORCH_CHECK(n_head >= 1 && C % n_head == 0, "decode_step: n_head must divide n_embd");
  Gpt2Params P;
  BlockReader R{"decode_step", blocks, parts};
  gather_gpt2("decode_step", params, n_layer, C, R, P);
  check_cache("decode_step", k_all, v_all, n_layer, rows, n_head, C / n_head);
  TORCH_CHECK(pos >= 0 && pos < k_all.size(3), "decode_step: position outside the KV cache");
  std::vector<float> xs = residual_in(x);
  with_cache_type("decode_step", k_all.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    run_blocks<T>(xs.data(), rows, C, n_head, n_layer, P.norms, P.lin,
                  shared_cache<T>(k_all, v_all, pos), static_cast<float>(eps), act);
  });
  return residual_out(xs, x);
}

// decode_step for rows that each have a KV cache of their own, (n_layer, 1, H, max_length, D),
// filled to their own length: row b writes positions[b] and attends to the keys before it.
// The server's running batch: every weight streams once for all rows, and each row's
// arithmetic is the same whatever the other rows are (its products' sums are its own, its
// attention reads its own cache).
at::Tensor decode_step_rows(const at::Tensor& x, const c10::List<c10::optional<at::Tensor>>& params,
                            const std::vector<at::Tensor>& k, const std::vector<at::Tensor>& v,
                            at::IntArrayRef positions, int64_t n_head, double eps, int64_t act,
                            const std::vector<at::Tensor>& blocks, at::IntArrayRef parts) {
  const char* op = "decode_step_rows";
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2, op, ": x (rows, n_embd) on CPU");
  const int64_t rows = x.size(0), C = x.size(1);
  TORCH_CHECK(rows >= 1 && !k.empty() && k[0].dim() == 5, op, ": at least one row and its cache");
  TORCH_CHECK(n_head >= 1 && C % n_head == 0, op, ": n_head must divide n_embd");
  const int64_t n_layer = k[0].size(0);
  Gpt2Params P;
  BlockReader R{op, blocks, parts};
  gather_gpt2(op, params, n_layer, C, R, P);
  const at::ScalarType t = check_row_caches(op, k, v, positions, rows, n_layer, n_head, C / n_head);
  std::vector<float> xs = residual_in(x);
  with_cache_type(op, t, [&](auto tag) {
    using T = decltype(tag);
    run_blocks<T>(xs.data(), rows, C, n_head, n_layer, P.norms, P.lin,
                  row_caches<T>(k, v, positions), static_cast<float>(eps), act);
  });
  return residual_out(xs, x);
}


// ---- The same for rotary-position families (Llama, Mistral, Qwen2/3, Gemma 3) ---------------
// RMSNorm (Gemma: scaled by 1 + w), q/k/v with grouped-query heads, optional QK-norm, RoPE in
// the rotate-half layout on the first `rot` dimensions, a sliding window per layer, the gated
// MLP, and Gemma's norms after attention and MLP. Activations in float32, as above.

void rms_norm(const float* x, float* out, int64_t rows, int64_t n, const float* w, float eps,
              bool unit_offset) {
  const __m256 one = _mm256_set1_ps(unit_offset ? 1.0f : 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * n;
    float* o = out + r * n;
    __m256 q = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 8) {
      const __m256 v = _mm256_maskload_ps(xr + i, first_lanes(n - i));
      q = _mm256_add_ps(q, _mm256_mul_ps(v, v));  // (not fused: tests mirror it in numpy)
    }
    const __m256 inv = _mm256_set1_ps(1.0f / std::sqrt(hsum(q) / n + eps));
    for (int64_t i = 0; i < n; i += 8) {  // x inv w, or x inv (1 + w) (Gemma)
      const __m256i m = first_lanes(n - i);
      const __m256 scale = _mm256_add_ps(one, _mm256_maskload_ps(w + i, m));
      const __m256 h = _mm256_mul_ps(_mm256_maskload_ps(xr + i, m), inv);
      _mm256_maskstore_ps(o + i, m, _mm256_mul_ps(h, scale));
    }
  }
}

// rotate-half RoPE on the first `rot` dims of one head vector (cos, sin: rot values)
inline void rope_head(float* v, const float* cos, const float* sin, int64_t rot) {
  const int64_t half = rot / 2;
  for (int64_t d = 0; d < half; ++d) {
    const float a = v[d], b = v[d + half];
    v[d] = a * cos[d] - b * sin[d];
    v[d + half] = b * cos[d + half] + a * sin[d + half];
  }
}

struct RopeLayer {
  const float* ln_1;
  const float* q_norm;
  const float* k_norm;
  const float* ln_2;
  const float* post_attn;
  const float* post_mlp;
  Linear qkv, o, fc, down;
  int64_t window;  // 0: every earlier key
};

// The rotary step's shape: heads, key/value heads, head size, rotated dims, and where row b's
// cos/sin of layer l are: cos + b * row_stride + l * rot (row_stride 0: one position for all).
struct RopeShape {
  int64_t H, KV, D, rot, row_stride;
  const float* cos;
  const float* sin;
};

// x += y, y normed first where the layer has a norm after the sublayer (Gemma's after
// attention and after the MLP); h: room for the normed y.
inline void add_sublayer(float* x, const float* y, float* h, const float* post, int64_t rows,
                         int64_t C, float eps, bool unit_offset) {
  if (post) {
    rms_norm(y, h, rows, C, post, eps, unit_offset);
    add_to(x, h, rows * C);
  } else {
    add_to(x, y, rows * C);
  }
}

template <typename T>
void run_rope_blocks(float* x, int64_t rows, int64_t C, const RopeShape& S,
                     const std::vector<RopeLayer>& layers, const std::vector<RowKV<T>>& kv,
                     float eps, int64_t act, bool unit_offset, float scale) {
  const int64_t H = S.H, KV = S.KV, D = S.D, rot = S.rot, group = H / KV;
  const int64_t n_layer = static_cast<int64_t>(layers.size());
  const int64_t Q = H * D, Kd = KV * D, W = Q + 2 * Kd, n = rows * C;
  const int64_t inner = layers[0].fc.out / 2;
  StepBuffers& s = step_buffers();
  s.qkv.resize(rows * W);
  s.att.resize(rows * Q);
  s.u.resize(rows * 2 * inner);
  s.g.resize(rows * inner);
  s.y.resize(n);
  float *qkv = s.qkv.data(), *att = s.att.data(), *u = s.u.data(), *g = s.g.data(),
        *y = s.y.data();
  run_team([&](Team& tm) {
    ThreadScratch& ts = thread_scratch();
    ts.x.assign(x, x + n);
    ts.h.resize(n);
    float *xp = ts.x.data(), *h = ts.h.data();
    const auto qkv_cols = tm.share(W, 16), o_cols = tm.share(C, 16);
    const auto mlp_cols = tm.share(inner, 16);
    const auto kv_heads = tm.share(rows * KV), q_heads = tm.share(rows * H);
    for (int64_t l = 0; l < n_layer; ++l) {
      const RopeLayer& L = layers[l];
      rms_norm(xp, h, rows, C, L.ln_1, eps, unit_offset);
      linear_rows(L.qkv, rows, h, qkv, ts.act, qkv_cols);
      tm.sync();
      for (int64_t bh = kv_heads.first; bh < kv_heads.second; ++bh) {  // K: norm, RoPE, cache
        const int64_t b = bh / KV, hh = bh % KV;
        float* k = qkv + b * W + Q + hh * D;
        if (L.k_norm) rms_norm(k, k, 1, D, L.k_norm, eps, unit_offset);
        rope_head(k, S.cos + b * S.row_stride + l * rot, S.sin + b * S.row_stride + l * rot, rot);
        write_kv_head<T>(k, k + Kd, D, l, hh, kv[b]);
      }
      if (group > 1) tm.sync();  // with one query head per key head, a thread reads its own
      const int64_t window = L.window;
      for (int64_t bh = q_heads.first; bh < q_heads.second; ++bh) {  // Q: norm, RoPE, attend
        const int64_t b = bh / H, hh = bh % H;
        float* q = qkv + b * W + hh * D;
        if (L.q_norm) rms_norm(q, q, 1, D, L.q_norm, eps, unit_offset);
        rope_head(q, S.cos + b * S.row_stride + l * rot, S.sin + b * S.row_stride + l * rot, rot);
        const int64_t pos = kv[b].pos;
        const int64_t start = window > 0 ? std::max<int64_t>(0, pos + 1 - window) : 0;
        attend_head<T>(q, D, l, hh / group, kv[b], start, scale, att + b * Q + hh * D, ts.p);
      }
      tm.sync();
      linear_rows(L.o, rows, att, y, ts.act, o_cols);
      tm.sync();
      add_sublayer(xp, y, h, L.post_attn, rows, C, eps, unit_offset);
      rms_norm(xp, h, rows, C, L.ln_2, eps, unit_offset);
      bool quantized = false;  // gate and up: this thread's columns of each, one quantized h
      linear_rows(L.fc, rows, h, u, ts.act, quantized, mlp_cols.first, mlp_cols.second);
      linear_rows(L.fc, rows, h, u, ts.act, quantized, inner + mlp_cols.first,
                  inner + mlp_cols.second);
      for (int64_t b = 0; b < rows; ++b) {
        float* gate = u + b * 2 * inner;
        activation(gate + mlp_cols.first, mlp_cols.second - mlp_cols.first, act);
        for (int64_t i = mlp_cols.first; i < mlp_cols.second; ++i)
          g[b * inner + i] = gate[i] * gate[inner + i];
      }
      tm.sync();
      linear_rows(L.down, rows, g, y, ts.act, o_cols);
      tm.sync();
      add_sublayer(xp, y, h, L.post_mlp, rows, C, eps, unit_offset);
    }
    if (tm.t == 0 && n_layer > 0) std::copy(xp, xp + n, x);
  });
}

struct RopeParams {
  std::vector<at::Tensor> keep;
  std::vector<std::vector<float>> bufs;
  std::vector<RopeLayer> layers;
};

void gather_rope(const char* op, const c10::List<c10::optional<at::Tensor>>& params,
                 int64_t n_layer, int64_t C, int64_t H, int64_t KV, int64_t D,
                 at::IntArrayRef windows, BlockReader& R, RopeParams& P) {
  TORCH_CHECK(static_cast<int64_t>(params.size()) == 18 * n_layer &&
                  static_cast<int64_t>(windows.size()) == n_layer,
              op, ": 18 parameters and one window per layer");
  P.bufs.resize(18 * n_layer);
  auto as_f = [&](int64_t i, int64_t n) -> const float* {
    c10::optional<at::Tensor> t = params.get(i);
    if (!t.has_value()) return nullptr;
    TORCH_CHECK(t->numel() == n, op, ": parameter ", i % 18, " of layer ", i / 18,
                " must hold ", n, " values");
    P.keep.push_back(t->contiguous());
    return as_float(P.keep.back(), P.bufs[i]);
  };
  // a weight from the parameter list, or ggml parts from R; out -1: any number of outputs
  auto linear = [&](int64_t i, int64_t out, int64_t in) -> Linear {
    c10::optional<at::Tensor> w = params.get(i);
    TORCH_CHECK(!w.has_value() || (w->dim() == 2 && w->is_contiguous() &&
                                   (out < 0 || w->size(0) == out) && w->size(1) == in),
                op, ": layer ", i / 18, " weight ", i % 18, " must be a contiguous (", out, ", ",
                in, ") matrix");
    Linear L = R.next(w.has_value() ? *w : at::Tensor(), out, in);
    TORCH_CHECK(L.parts.empty() || !params.get(i + 1).has_value(), op,
                ": a layer of ggml blocks takes no scale");
    L.scale = as_f(i + 1, L.out);
    L.bias = as_f(i + 2, L.out);
    return L;
  };
  int64_t inner = -1;  // the MLP's width: layer 0's, and the same in every layer
  for (int64_t l = 0; l < n_layer; ++l) {
    const int64_t b = 18 * l;
    TORCH_CHECK(params.get(b).has_value() && params.get(b + 9).has_value(), op,
                ": each layer needs its two norms");
    TORCH_CHECK(windows[l] >= 0, op, ": windows must be >= 0");
    RopeLayer L{as_f(b, C), as_f(b + 7, D), as_f(b + 8, D), as_f(b + 9, C), as_f(b + 16, C),
                as_f(b + 17, C), {}, {}, {}, {}, windows[l]};
    L.qkv = linear(b + 1, (H + 2 * KV) * D, C);
    L.o = linear(b + 4, C, H * D);
    L.fc = linear(b + 10, inner < 0 ? -1 : 2 * inner, C);
    TORCH_CHECK(L.fc.out % 2 == 0, op, ": the gate and up projections stacked: an even width");
    inner = L.fc.out / 2;
    L.down = linear(b + 13, C, inner);
    P.layers.push_back(L);
  }
  R.done();
}

void check_rope_heads(const char* op, int64_t H, int64_t KV, int64_t D) {
  TORCH_CHECK(H >= 1 && KV >= 1 && H % KV == 0 && D >= 1, op, ": head counts");
}

// cos, sin: float32, contiguous, (n_layer, rot) for one position or (rows, n_layer, rot) for
// each row's own; rot even and <= head_dim.
void check_cos_sin(const char* op, const at::Tensor& cos, const at::Tensor& sin, int64_t lead,
                   int64_t n_layer, int64_t D) {
  const int64_t d = cos.dim();
  TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat &&
                  cos.is_contiguous() && sin.is_contiguous() && cos.sizes() == sin.sizes() &&
                  d == (lead ? 3 : 2) && (!lead || cos.size(0) == lead) &&
                  cos.size(d - 2) == n_layer && cos.size(d - 1) % 2 == 0 &&
                  cos.size(d - 1) <= D,
              op, ": cos, sin (", lead ? "rows, " : "",
              "n_layer, rot) float32, rot even and <= head_dim");
}

// x (rows, C): the step's embeddings. params: 18 per layer, in order ln_1 weight; qkv weight,
// scale, bias; o weight, scale, bias; q_norm, k_norm weights (or None); ln_2 weight; fc (gate
// and up stacked: 2 inner rows) weight, scale, bias; down weight, scale, bias; the norms after
// attention and after the MLP (or None). cos, sin (n_layer, rot) float32 for this position;
// windows: one per layer, 0 for none. The KV cache is (n_layer, rows, KV, max_length, D).
at::Tensor decode_step_rope(const at::Tensor& x, const c10::List<c10::optional<at::Tensor>>& params,
                            const at::Tensor& k_all, const at::Tensor& v_all, int64_t pos,
                            int64_t n_head, int64_t n_kv_head, int64_t head_dim, double eps,
                            int64_t act, const at::Tensor& cos, const at::Tensor& sin,
                            at::IntArrayRef windows, double scale, bool unit_offset,
                            const std::vector<at::Tensor>& blocks, at::IntArrayRef parts) {
  const char* op = "decode_step_rope";
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2, op, ": x (rows, n_embd) on CPU");
  const int64_t rows = x.size(0), C = x.size(1), n_layer = k_all.dim() == 5 ? k_all.size(0) : 0;
  const int64_t H = n_head, KV = n_kv_head, D = head_dim;
  TORCH_CHECK(rows >= 1, op, ": at least one row");
  check_rope_heads(op, H, KV, D);
  RopeParams P;
  BlockReader R{op, blocks, parts};
  gather_rope(op, params, n_layer, C, H, KV, D, windows, R, P);
  check_cache(op, k_all, v_all, n_layer, rows, KV, D);
  TORCH_CHECK(pos >= 0 && pos < k_all.size(3), op, ": position outside the cache");
  check_cos_sin(op, cos, sin, 0, n_layer, D);
  const RopeShape S{H, KV, D, cos.size(1), 0, cos.data_ptr<float>(), sin.data_ptr<float>()};
  std::vector<float> xs = residual_in(x);
  with_cache_type(op, k_all.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    run_rope_blocks<T>(xs.data(), rows, C, S, P.layers, shared_cache<T>(k_all, v_all, pos),
                       static_cast<float>(eps), act, unit_offset, static_cast<float>(scale));
  });
  return residual_out(xs, x);
}

// decode_step_rope for rows with a KV cache each, (n_layer, 1, KV, max_length, D), at their own
// positions; cos, sin (rows, n_layer, rot) for each row's position.
at::Tensor decode_step_rope_rows(const at::Tensor& x,
                                 const c10::List<c10::optional<at::Tensor>>& params,
                                 const std::vector<at::Tensor>& k, const std::vector<at::Tensor>& v,
                                 at::IntArrayRef positions, int64_t n_head, int64_t n_kv_head,
                                 int64_t head_dim, double eps, int64_t act, const at::Tensor& cos,
                                 const at::Tensor& sin, at::IntArrayRef windows, double scale,
                                 bool unit_offset, const std::vector<at::Tensor>& blocks,
                                 at::IntArrayRef parts) {
  const char* op = "decode_step_rope_rows";
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2, op, ": x (rows, n_embd) on CPU");
  const int64_t rows = x.size(0), C = x.size(1);
  const int64_t H = n_head, KV = n_kv_head, D = head_dim;
  TORCH_CHECK(rows >= 1 && !k.empty() && k[0].dim() == 5, op, ": at least one row and its cache");
  check_rope_heads(op, H, KV, D);
  const int64_t n_layer = k[0].size(0);
  RopeParams P;
  BlockReader R{op, blocks, parts};
  gather_rope(op, params, n_layer, C, H, KV, D, windows, R, P);
  const at::ScalarType t = check_row_caches(op, k, v, positions, rows, n_layer, KV, D);
  check_cos_sin(op, cos, sin, rows, n_layer, D);
  const int64_t rot = cos.size(2);
  const RopeShape S{H, KV, D, rot, n_layer * rot, cos.data_ptr<float>(), sin.data_ptr<float>()};
  std::vector<float> xs = residual_in(x);
  with_cache_type(op, t, [&](auto tag) {
    using T = decltype(tag);
    run_rope_blocks<T>(xs.data(), rows, C, S, P.layers, row_caches<T>(k, v, positions),
                       static_cast<float>(eps), act, unit_offset, static_cast<float>(scale));
  });
  return residual_out(xs, x);
}

// ---- The head: the final norm and the output projection -------------------------------------
// What follows a decode step (or a prompt's last position) took ~10 dispatched operations in
// Python: the norm's own several, then the head's product in a parallel region of its own
// (OpenMP's fork and join, and for ggml blocks at::parallel_for's). At SmolLM2's 49,152-token
// vocabulary the head is a fifth of the weights, and at the 14M shape the dispatch is a tenth of
// the token. Here it is one call: the norm once, then the product shared among the threads as
// in run_blocks (linear_rows: the same bits as the op-by-op head for the same normed x).
//
// x (rows, C); params: the norm's weight and bias (LayerNorm; None for none and for RMSNorm), the
// head's weight (None: ggml parts in blocks/parts, as BlockReader reads them), scale (int8) and
// bias; norm 0 LayerNorm, 1 RMSNorm, 2 RMSNorm scaled by 1 + w (Gemma). Returns the logits
// (rows, out) in x's dtype.
at::Tensor decode_head(const at::Tensor& x, const c10::List<c10::optional<at::Tensor>>& params,
                       double eps, int64_t norm, const std::vector<at::Tensor>& blocks,
                       at::IntArrayRef parts) {
  const char* op = "decode_head";
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.size(0) >= 1, op,
              ": x (rows, n_embd) on CPU, at least one row");
  TORCH_CHECK(params.size() == 5, op, ": 5 parameters (norm weight, bias; head weight, scale, bias)");
  TORCH_CHECK(norm >= 0 && norm <= 2, op, ": norm must be 0 (LayerNorm), 1 (RMSNorm) or 2 (1 + w)");
  const int64_t rows = x.size(0), C = x.size(1);
  std::vector<at::Tensor> keep;
  std::vector<std::vector<float>> bufs(5);
  auto as_f = [&](int64_t i, int64_t n) -> const float* {
    c10::optional<at::Tensor> t = params.get(i);
    if (!t.has_value()) return nullptr;
    TORCH_CHECK(t->numel() == n, op, ": parameter ", i, " must hold ", n, " values");
    keep.push_back(t->contiguous());
    return as_float(keep.back(), bufs[i]);
  };
  const float* norm_w = as_f(0, C);
  const float* norm_b = as_f(1, C);
  TORCH_CHECK(norm_w != nullptr, op, ": the final norm needs its weight");
  TORCH_CHECK(norm == 0 || norm_b == nullptr, op, ": an RMSNorm has no bias");
  c10::optional<at::Tensor> w = params.get(2);
  TORCH_CHECK(!w.has_value() || (w->dim() == 2 && w->is_contiguous() && w->size(1) == C), op,
              ": the head's weight must be a contiguous (vocab, n_embd) matrix");
  BlockReader R{op, blocks, parts};
  Linear L = R.next(w.has_value() ? *w : at::Tensor(), -1, C);
  R.done();
  TORCH_CHECK(L.parts.empty() || !params.get(3).has_value(), op,
              ": a layer of ggml blocks takes no scale");
  L.scale = as_f(3, L.out);
  L.bias = as_f(4, L.out);
  std::vector<float> xs = residual_in(x), h(rows * C);
  if (norm == 0) {
    std::vector<float> zeros;
    if (norm_b == nullptr) zeros.assign(C, 0.0f);
    layer_norm(xs.data(), h.data(), rows, C, norm_w, norm_b ? norm_b : zeros.data(),
               static_cast<float>(eps));
  } else {
    rms_norm(xs.data(), h.data(), rows, C, norm_w, static_cast<float>(eps), norm == 2);
  }
  at::Tensor y = at::empty({rows, L.out}, x.options().dtype(at::kFloat));
  float* yp = y.data_ptr<float>();
  run_team([&](Team& tm) {
    linear_rows(L, rows, h.data(), yp, thread_scratch().act, tm.share(L.out, 16));
  });
  return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
}

}  // namespace

TORCH_LIBRARY(lmgen_kernels, m) {
  m.def("decode_gemv(Tensor x, Tensor w, Tensor? scale, Tensor? bias) -> Tensor");
  m.def("decode_attention(Tensor q, Tensor k, Tensor v) -> Tensor");
  m.def(
      "decode_step(Tensor x, Tensor?[] params, Tensor(a!) k_all, Tensor(b!) v_all, int pos, "
      "int n_head, float eps, int act, Tensor[] blocks, int[] parts) -> Tensor");
  m.def(
      "decode_step_rows(Tensor x, Tensor?[] params, Tensor(a!)[] k, Tensor(b!)[] v, "
      "int[] positions, int n_head, float eps, int act, Tensor[] blocks, int[] parts) "
      "-> Tensor");
  m.def(
      "decode_step_rope(Tensor x, Tensor?[] params, Tensor(a!) k_all, Tensor(b!) v_all, int pos, "
      "int n_head, int n_kv_head, int head_dim, float eps, int act, Tensor cos, Tensor sin, "
      "int[] windows, float scale, bool unit_offset, Tensor[] blocks, int[] parts) "
      "-> Tensor");
  m.def(
      "decode_step_rope_rows(Tensor x, Tensor?[] params, Tensor(a!)[] k, Tensor(b!)[] v, "
      "int[] positions, int n_head, int n_kv_head, int head_dim, float eps, int act, Tensor cos, "
      "Tensor sin, int[] windows, float scale, bool unit_offset, Tensor[] blocks, "
      "int[] parts) -> Tensor");
  m.def(
      "decode_head(Tensor x, Tensor?[] params, float eps, int norm, Tensor[] blocks, int[] parts) "
      "-> Tensor");
}

TORCH_LIBRARY_IMPL(lmgen_kernels, CPU, m) {
  m.impl("decode_gemv", decode_gemv);
  m.impl("decode_attention", decode_attention);
  m.impl("decode_step", decode_step);
  m.impl("decode_step_rows", decode_step_rows);
  m.impl("decode_step_rope", decode_step_rope);
  m.impl("decode_step_rope_rows", decode_step_rope_rows);
  m.impl("decode_head", decode_head);
}
