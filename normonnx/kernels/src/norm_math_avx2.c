/* Inner loops compiled for AVX2 + FMA (x86 with GCC/Clang); chosen at run time when the CPU has them.
 *
 * The statistics loops are written with intrinsics: 8 register accumulators (4 for Σd, 4 for Σd²)
 * over blocks of 256 elements in float, i.e. 8 terms per float lane, then each block is widened and
 * added to float64 accumulators. Auto-vectorised lane arrays (the generic version) went through
 * the stack and cost ~100 cycles per call, which dominated 384-element LayerNorm rows.
 */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#pragma GCC target("avx2,fma")
#include <immintrin.h>
#include <stddef.h>

#include "norm_math.h"

#define NX_ISA_SUFFIX _avx2
#define NX_ISA_NAME "avx2+fma"
#define NX_HAVE_ISA_SUMS 1
#define NX_HAVE_ISA_AFFINE_SUMS 1
#define NX_HAVE_ISA_ADD_SUMS 1
#define NX_HAVE_ISA_SHORT_ROWS 1

static inline __m256d nx_widen_sum(__m256d acc, __m256 v) {
  acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
  return _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

static inline double nx_hsum(__m256d v) {
  __m128d lo = _mm256_castpd256_pd128(v), hi = _mm256_extractf128_pd(v, 1);
  lo = _mm_add_pd(lo, hi);
  return _mm_cvtsd_f64(_mm_add_sd(lo, _mm_unpackhi_pd(lo, lo)));
}

/* One step of the statistics loop: 32 elements of src − kv into the 4 + 4 float accumulators. */
#define NX_STATS32(src)                                         \
  do {                                                          \
    __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps((src)), kv);      \
    __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps((src) + 8), kv);  \
    __m256 d2 = _mm256_sub_ps(_mm256_loadu_ps((src) + 16), kv); \
    __m256 d3 = _mm256_sub_ps(_mm256_loadu_ps((src) + 24), kv); \
    p0 = _mm256_add_ps(p0, d0);                                 \
    p1 = _mm256_add_ps(p1, d1);                                 \
    p2 = _mm256_add_ps(p2, d2);                                 \
    p3 = _mm256_add_ps(p3, d3);                                 \
    q0 = _mm256_fmadd_ps(d0, d0, q0);                           \
    q1 = _mm256_fmadd_ps(d1, d1, q1);                           \
    q2 = _mm256_fmadd_ps(d2, d2, q2);                           \
    q3 = _mm256_fmadd_ps(d3, d3, q3);                           \
  } while (0)

static void sums_avx2(const float* restrict x, size_t n, double k, double* s1, double* s2) {
  const __m256 kv = _mm256_set1_ps((float)k); /* k is a sample of x: exact in float */
  __m256d a1 = _mm256_setzero_pd(), a2 = _mm256_setzero_pd();
  size_t i = 0;
  while (i + 32 <= n) {
    size_t end = i + 256 <= n ? i + 256 : i + ((n - i) & ~(size_t)31);
    __m256 p0 = _mm256_setzero_ps(), p1 = p0, p2 = p0, p3 = p0, q0 = p0, q1 = p0, q2 = p0, q3 = p0;
    for (; i < end; i += 32) NX_STATS32(x + i);
    a1 = nx_widen_sum(nx_widen_sum(nx_widen_sum(nx_widen_sum(a1, p0), p1), p2), p3);
    a2 = nx_widen_sum(nx_widen_sum(nx_widen_sum(nx_widen_sum(a2, q0), q1), q2), q3);
  }
  double t1 = nx_hsum(a1), t2 = nx_hsum(a2);
  for (; i < n; ++i) {
    double d = (double)x[i] - k;
    t1 += d;
    t2 += d * d;
  }
  *s1 += t1;
  *s2 += t2;
}

static void sumsq_avx2(const float* restrict x, size_t n, double* s2) {
  __m256d a2 = _mm256_setzero_pd();
  size_t i = 0;
  while (i + 32 <= n) {
    size_t end = i + 256 <= n ? i + 256 : i + ((n - i) & ~(size_t)31);
    __m256 q0 = _mm256_setzero_ps(), q1 = q0, q2 = q0, q3 = q0;
    for (; i < end; i += 32) {
      __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
      __m256 v2 = _mm256_loadu_ps(x + i + 16), v3 = _mm256_loadu_ps(x + i + 24);
      q0 = _mm256_fmadd_ps(v0, v0, q0);
      q1 = _mm256_fmadd_ps(v1, v1, q1);
      q2 = _mm256_fmadd_ps(v2, v2, q2);
      q3 = _mm256_fmadd_ps(v3, v3, q3);
    }
    a2 = nx_widen_sum(nx_widen_sum(nx_widen_sum(nx_widen_sum(a2, q0), q1), q2), q3);
  }
  double t2 = nx_hsum(a2);
  for (; i < n; ++i) t2 += (double)x[i] * (double)x[i];
  *s2 += t2;
}

/* r (or fl(g·r), the product kept apart from the sum: see nx_mul_rounded) at x + i */
static inline __m256 nx_res8(const float* restrict r, const float* restrict g, size_t i) {
  __m256 v = _mm256_loadu_ps(r + i);
  if (g) {
    v = _mm256_mul_ps(_mm256_loadu_ps(g + i), v);
    __asm__("" : "+x"(v));
  }
  return v;
}

/* v[k] = x + r (or x + fl(g·r)) at i + 8k, the 32 sums stored to s (kept in v for the statistics) */
static inline void nx_add_store32(const float* restrict x, const float* restrict r, const float* restrict g,
                                  float* restrict s, size_t i, __m256 v[4]) {
  v[0] = _mm256_add_ps(_mm256_loadu_ps(x + i), nx_res8(r, g, i));
  v[1] = _mm256_add_ps(_mm256_loadu_ps(x + i + 8), nx_res8(r, g, i + 8));
  v[2] = _mm256_add_ps(_mm256_loadu_ps(x + i + 16), nx_res8(r, g, i + 16));
  v[3] = _mm256_add_ps(_mm256_loadu_ps(x + i + 24), nx_res8(r, g, i + 24));
  _mm256_storeu_ps(s + i, v[0]);
  _mm256_storeu_ps(s + i + 8, v[1]);
  _mm256_storeu_ps(s + i + 16, v[2]);
  _mm256_storeu_ps(s + i + 24, v[3]);
}

/* add + sums_avx2 in one loop: the same blocks, accumulators and order as sums_avx2 over s */
static void add_sums_avx2(const float* restrict x, const float* restrict r, const float* restrict g,
                          float* restrict s, size_t n, double k, double* s1, double* s2) {
  const __m256 kv = _mm256_set1_ps((float)k);
  __m256d a1 = _mm256_setzero_pd(), a2 = _mm256_setzero_pd();
  size_t i = 0;
  while (i + 32 <= n) {
    size_t end = i + 256 <= n ? i + 256 : i + ((n - i) & ~(size_t)31);
    __m256 p0 = _mm256_setzero_ps(), p1 = p0, p2 = p0, p3 = p0, q0 = p0, q1 = p0, q2 = p0, q3 = p0;
    for (; i < end; i += 32) {
      __m256 v[4];
      nx_add_store32(x, r, g, s, i, v);
      __m256 d0 = _mm256_sub_ps(v[0], kv), d1 = _mm256_sub_ps(v[1], kv), d2 = _mm256_sub_ps(v[2], kv);
      __m256 d3 = _mm256_sub_ps(v[3], kv);
      p0 = _mm256_add_ps(p0, d0);
      p1 = _mm256_add_ps(p1, d1);
      p2 = _mm256_add_ps(p2, d2);
      p3 = _mm256_add_ps(p3, d3);
      q0 = _mm256_fmadd_ps(d0, d0, q0);
      q1 = _mm256_fmadd_ps(d1, d1, q1);
      q2 = _mm256_fmadd_ps(d2, d2, q2);
      q3 = _mm256_fmadd_ps(d3, d3, q3);
    }
    a1 = nx_widen_sum(nx_widen_sum(nx_widen_sum(nx_widen_sum(a1, p0), p1), p2), p3);
    a2 = nx_widen_sum(nx_widen_sum(nx_widen_sum(nx_widen_sum(a2, q0), q1), q2), q3);
  }
  double t1 = nx_hsum(a1), t2 = nx_hsum(a2);
  for (; i < n; ++i) {
    s[i] = x[i] + (g ? nx_mul_rounded(g[i], r[i]) : r[i]);
    double d = (double)s[i] - k;
    t1 += d;
    t2 += d * d;
  }
  *s1 += t1;
  *s2 += t2;
}

static void add_sumsq_avx2(const float* restrict x, const float* restrict r, const float* restrict g,
                           float* restrict s, size_t n, double* s2) {
  __m256d a2 = _mm256_setzero_pd();
  size_t i = 0;
  while (i + 32 <= n) {
    size_t end = i + 256 <= n ? i + 256 : i + ((n - i) & ~(size_t)31);
    __m256 q0 = _mm256_setzero_ps(), q1 = q0, q2 = q0, q3 = q0;
    for (; i < end; i += 32) {
      __m256 v[4];
      nx_add_store32(x, r, g, s, i, v);
      q0 = _mm256_fmadd_ps(v[0], v[0], q0);
      q1 = _mm256_fmadd_ps(v[1], v[1], q1);
      q2 = _mm256_fmadd_ps(v[2], v[2], q2);
      q3 = _mm256_fmadd_ps(v[3], v[3], q3);
    }
    a2 = nx_widen_sum(nx_widen_sum(nx_widen_sum(nx_widen_sum(a2, q0), q1), q2), q3);
  }
  double t2 = nx_hsum(a2);
  for (; i < n; ++i) {
    s[i] = x[i] + (g ? nx_mul_rounded(g[i], r[i]) : r[i]);
    t2 += (double)s[i] * (double)s[i];
  }
  *s2 += t2;
}

#include "norm_math_impl.h"

/* -- short rows, whole (layer / rms rows of ≤ NX_SHORT_MAX_LEN elements, a multiple of 8) ----------
 * For a tile of NX_SHORT_TILE rows: the statistics of sums_avx2 (shift k = the row's first element;
 * four float accumulator pairs, 32 elements per step, ≤ 8 terms per lane), then the rows' finishes
 * four at a time in vector registers, then the writes of row_span / rms_span. Row by row
 * (seg_task_tiled) a 32-element row cost ~30 ns where the arithmetic is a few: two indirect calls
 * per row, sixteen float64 widen-adds in two serial chains, a scalar finish. Rows whose length is a
 * multiple of 32 come out bitwise as before (the float64 sums of their float partials are exact
 * unless the values span more than 2^29; measured equal on rows of 32-256); others differ in the
 * last bits (sums_avx2 sums the < 32 last elements in float64, here they go to the float lanes). */
#define NX_SHORT_TILE 8

/* the eight floats of v as four float64 pair sums */
static inline __m256d nx_widen(__m256 v) {
  return _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v)), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

/* float accumulators p[0..3] → one float64 vector: each widened and added in a tree (the serial
 * chain of sums_avx2 was latency-bound). Pre-adding them in float instead, as long as the sums kept
 * ≤ 8 terms per lane, was 10 % faster but doubled the output error on rows of 32 (1.4x torch's, from
 * 0.8x, tests/test_kernels.py layer_short) */
static inline __m256d nx_short_reduce(__m256 a, __m256 b, __m256 c, __m256 d) {
  return _mm256_add_pd(_mm256_add_pd(nx_widen(a), nx_widen(b)), _mm256_add_pd(nx_widen(c), nx_widen(d)));
}

/* one step of short_rows' statistics: 8 elements of the row (x + r with a residual, stored to the sum)
 * minus the shift kv into the accumulators P (Σd) and S (Σd²); named registers, not an array the
 * compiler keeps on the stack (indexed accumulators were spilled: 1.5x slower on residual rows, measured) */
#define NX_SHORT_STEP(P, S, I)                                 \
  do {                                                         \
    __m256 v_ = _mm256_loadu_ps(xr + (I));                     \
    if (r) {                                                   \
      v_ = _mm256_add_ps(v_, _mm256_loadu_ps(r + o + (I)));    \
      _mm256_storeu_ps(sum + o + (I), v_);                     \
    }                                                          \
    __m256 d_ = _mm256_sub_ps(v_, kv);                         \
    P = _mm256_add_ps(P, d_);                                  \
    S = _mm256_fmadd_ps(d_, d_, S);                            \
  } while (0)

/* the horizontal sums of four rows' float64 vectors, as one vector [row 0, row 1, row 2, row 3] */
static inline __m256d nx_hsum4(__m256d a, __m256d b, __m256d c, __m256d d) {
  __m256d ab = _mm256_hadd_pd(a, b); /* a01 b01 a23 b23 */
  __m256d cd = _mm256_hadd_pd(c, d); /* c01 d01 c23 d23 */
  return _mm256_add_pd(_mm256_permute2f128_pd(ab, cd, 0x20), _mm256_permute2f128_pd(ab, cd, 0x31));
}

static void short_rows_avx2(const float* x, const float* r, float* sum, float* y, size_t m, size_t len,
                            const float* restrict w, const float* restrict b, double eps, int rms) {
  const __m256d inv = _mm256_set1_pd(1.0 / (double)len), epsv = _mm256_set1_pd(eps), one = _mm256_set1_pd(1.0);
  const __m256d zero = _mm256_setzero_pd();
  for (size_t t0 = 0; t0 < m; t0 += NX_SHORT_TILE) {
    size_t mt = m - t0 < NX_SHORT_TILE ? m - t0 : NX_SHORT_TILE;
    __m256d A1[NX_SHORT_TILE], A2[NX_SHORT_TILE];
    double kd[NX_SHORT_TILE];
    float mh[NX_SHORT_TILE], ml[NX_SHORT_TILE], rs[NX_SHORT_TILE];
    for (size_t q = 0; q < NX_SHORT_TILE; ++q) {
      if (q >= mt) {
        A1[q] = A2[q] = zero, kd[q] = 0.0;
        continue;
      }
      const size_t o = (t0 + q) * len;
      const float* xr = x + o;
      const float k = rms ? 0.0f : (r ? xr[0] + r[o] : xr[0]); /* the first element of the row normalised */
      const __m256 kv = _mm256_set1_ps(k);
      kd[q] = (double)k;
      __m256 p0 = _mm256_setzero_ps(), p1 = p0, p2 = p0, p3 = p0, s0 = p0, s1 = p0, s2 = p0, s3 = p0;
      size_t i = 0; /* 32 elements per round into accumulators 0-3, as sums_avx2; the rest 8 at a time into 0, 1, 2 */
      for (; i + 32 <= len; i += 32) {
        NX_SHORT_STEP(p0, s0, i);
        NX_SHORT_STEP(p1, s1, i + 8);
        NX_SHORT_STEP(p2, s2, i + 16);
        NX_SHORT_STEP(p3, s3, i + 24);
      }
      if (i < len) {
        NX_SHORT_STEP(p0, s0, i);
        i += 8;
      }
      if (i < len) {
        NX_SHORT_STEP(p1, s1, i);
        i += 8;
      }
      if (i < len) NX_SHORT_STEP(p2, s2, i);
      A1[q] = rms ? zero : nx_short_reduce(p0, p1, p2, p3);
      A2[q] = nx_short_reduce(s0, s1, s2, s3);
    }
    for (size_t q = 0; q < mt; q += 4) { /* finish_moments of four rows at once */
      __m256d s1 = nx_hsum4(A1[q], A1[q + 1], A1[q + 2], A1[q + 3]);
      __m256d s2 = nx_hsum4(A2[q], A2[q + 1], A2[q + 2], A2[q + 3]);
      __m256d var, mean;
      if (rms) {
        var = _mm256_mul_pd(s2, inv), mean = zero;
      } else {
        __m256d m1 = _mm256_mul_pd(s1, inv);
        var = _mm256_sub_pd(_mm256_mul_pd(s2, inv), _mm256_mul_pd(m1, m1));
        var = _mm256_max_pd(zero, var); /* clamped at 0; NaN stays NaN (max returns its second operand) */
        mean = _mm256_add_pd(_mm256_loadu_pd(kd + q), m1);
      }
      __m128 hi = _mm256_cvtpd_ps(mean);
      __m128 lo = _mm256_cvtpd_ps(_mm256_sub_pd(mean, _mm256_cvtps_pd(hi)));
      __m128 rstd = _mm256_cvtpd_ps(_mm256_div_pd(one, _mm256_sqrt_pd(_mm256_add_pd(var, epsv))));
      _mm_storeu_ps(mh + q, hi), _mm_storeu_ps(ml + q, lo), _mm_storeu_ps(rs + q, rstd);
    }
    for (size_t q = 0; q < mt; ++q) { /* row_span / rms_span, inline: the same operations */
      const float* xr = r ? sum + (t0 + q) * len : x + (t0 + q) * len; /* may be yr itself: read before written */
      float* yr = y + (t0 + q) * len;
      const __m256 rv = _mm256_set1_ps(rs[q]);
      if (rms) {
        for (size_t i = 0; i < len; i += 8) {
          __m256 u = _mm256_mul_ps(_mm256_loadu_ps(xr + i), rv);
          _mm256_storeu_ps(yr + i, w ? _mm256_mul_ps(u, _mm256_loadu_ps(w + i)) : u);
        }
        continue;
      }
      const __m256 mhv = _mm256_set1_ps(mh[q]), mlv = _mm256_set1_ps(ml[q]);
      for (size_t i = 0; i < len; i += 8) {
        __m256 t = _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(xr + i), mhv), mlv);
        __m256 v;
        if (w && b)
          v = _mm256_fmadd_ps(_mm256_mul_ps(t, rv), _mm256_loadu_ps(w + i), _mm256_loadu_ps(b + i));
        else if (w)
          v = _mm256_mul_ps(_mm256_mul_ps(t, rv), _mm256_loadu_ps(w + i));
        else if (b)
          v = _mm256_fmadd_ps(t, rv, _mm256_loadu_ps(b + i));
        else
          v = _mm256_mul_ps(t, rv);
        _mm256_storeu_ps(yr + i, v);
      }
    }
  }
}

/* affine_span(x → y) and sums_avx2(xn) in one loop: the same blocks of 256, the same accumulators
 * in the same order as sums_avx2 (so the statistics are bitwise those of sums_avx2(xn, n)), with
 * 32 elements of the affine map written per 32 read for the statistics (ReLU applied in the same
 * loop). With SiLU the affine part of each block is affine_span's own loop (compute-bound; the
 * reads of the next block still stream meanwhile). */
static void affine_sums_avx2(const float* restrict x, float* restrict y, size_t n, float mh, float ml, float a,
                             float b, int act, const float* restrict xn, double k, double* s1, double* s2) {
  const __m256 kv = _mm256_set1_ps((float)k);
  const __m256 mhv = _mm256_set1_ps(mh), mlv = _mm256_set1_ps(ml), av = _mm256_set1_ps(a), bv = _mm256_set1_ps(b);
  __m256d a1 = _mm256_setzero_pd(), a2 = _mm256_setzero_pd();
  size_t i = 0;
  while (i + 32 <= n) {
    size_t end = i + 256 <= n ? i + 256 : i + ((n - i) & ~(size_t)31);
    if (act == NX_ACT_SILU) affine_span_avx2(x + i, y + i, end - i, mh, ml, a, b, act);
    __m256 p0 = _mm256_setzero_ps(), p1 = p0, p2 = p0, p3 = p0, q0 = p0, q1 = p0, q2 = p0, q3 = p0;
    for (; i < end; i += 32) {
      NX_STATS32(xn + i);
      if (act == NX_ACT_NONE) {
        for (int u = 0; u < 32; u += 8) {
          __m256 v = _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i + u), mhv), mlv);
          _mm256_storeu_ps(y + i + u, _mm256_fmadd_ps(v, av, bv));
        }
      } else if (act == NX_ACT_RELU) { /* max(0, v) returns v when v is NaN, as affine_span's v < 0 ? 0 : v */
        for (int u = 0; u < 32; u += 8) {
          __m256 v = _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i + u), mhv), mlv);
          _mm256_storeu_ps(y + i + u, _mm256_max_ps(_mm256_setzero_ps(), _mm256_fmadd_ps(v, av, bv)));
        }
      }
    }
    a1 = nx_widen_sum(nx_widen_sum(nx_widen_sum(nx_widen_sum(a1, p0), p1), p2), p3);
    a2 = nx_widen_sum(nx_widen_sum(nx_widen_sum(nx_widen_sum(a2, q0), q1), q2), q3);
  }
  if (i < n) affine_span_avx2(x + i, y + i, n - i, mh, ml, a, b, act);
  double t1 = nx_hsum(a1), t2 = nx_hsum(a2);
  for (; i < n; ++i) {
    double d = (double)xn[i] - k;
    t1 += d;
    t2 += d * d;
  }
  *s1 += t1;
  *s2 += t2;
}
#else
typedef int nx_no_avx2_build; /* ISO C forbids an empty translation unit */
#endif
