/* Body of the inner loops; included by norm_math_<isa>.c with NX_ISA_SUFFIX / NX_ISA_NAME defined.
 * See norm_math.h for the math. No -ffast-math: the hi/lo mean split and NaN propagation rely on
 * IEEE semantics; only a·b + c contraction (fma) is allowed, which never loses accuracy.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "norm_math.h"

#define NX_CAT2(a, b) a##b
#define NX_CAT(a, b) NX_CAT2(a, b)
#define NX_FN(name) NX_CAT(name, NX_ISA_SUFFIX)

#define NX_LANES 32 /* independent accumulators: enough to hide add/fma latency with AVX2 */
#define NX_BLOCK 256 /* elements per float block: NX_BLOCK / NX_LANES = 8 terms per float partial sum */

#ifdef NX_HAVE_ISA_AFFINE_SUMS /* defined by the ISA file after this header */
static void NX_FN(affine_sums)(const float* x, float* y, size_t n, float mh, float ml, float a, float b, int act,
                               const float* xn, double k, double* s1, double* s2);
#endif

#ifdef NX_HAVE_ISA_SHORT_ROWS
static void NX_FN(short_rows)(const float* x, const float* r, float* sum, float* y, size_t m, size_t len,
                              const float* restrict w, const float* restrict b, double eps, int rms);
#define NX_SHORT_ROWS_FN NX_FN(short_rows)
#else
#define NX_SHORT_ROWS_FN NULL /* the caller goes row by row */
#endif

#ifndef NX_HAVE_ISA_SUMS /* an ISA file may supply hand-written sums/sumsq instead */
/* Σ(x − k), Σ(x − k)²: each block of NX_BLOCK elements is summed per lane in float (8 terms of
 * (x − k), rounding ≤ 8·2⁻²⁴ relative per partial sum, unbiased), then added to float64 lanes,
 * which carry the long sums. This halves the work of converting every element to double and
 * keeps the result within ~1e-7 relative of the exact sums whatever the length. */
static void NX_FN(sums)(const float* restrict x, size_t n, double k, double* s1, double* s2) {
  const float kf = (float)k; /* k is a sample of x: exact in float */
  double a1[NX_LANES] = {0}, a2[NX_LANES] = {0};
  size_t i = 0;
  for (; i + NX_BLOCK <= n; i += NX_BLOCK) {
    float b1[NX_LANES] = {0}, b2[NX_LANES] = {0};
    for (size_t u = 0; u < NX_BLOCK; u += NX_LANES) {
      for (int j = 0; j < NX_LANES; ++j) {
        float d = x[i + u + j] - kf;
        b1[j] += d;
        b2[j] += d * d;
      }
    }
    for (int j = 0; j < NX_LANES; ++j) {
      a1[j] += (double)b1[j];
      a2[j] += (double)b2[j];
    }
  }
  if (i + NX_LANES <= n) { /* partial block: whole lane groups, still ≤ 8 terms per float sum */
    float b1[NX_LANES] = {0}, b2[NX_LANES] = {0};
    for (; i + NX_LANES <= n; i += NX_LANES) {
      for (int j = 0; j < NX_LANES; ++j) {
        float d = x[i + j] - kf;
        b1[j] += d;
        b2[j] += d * d;
      }
    }
    for (int j = 0; j < NX_LANES; ++j) {
      a1[j] += (double)b1[j];
      a2[j] += (double)b2[j];
    }
  }
  double t1 = 0.0, t2 = 0.0;
  for (; i < n; ++i) {
    double d = (double)x[i] - k;
    t1 += d;
    t2 += d * d;
  }
  for (int j = 0; j < NX_LANES; ++j) {
    t1 += a1[j];
    t2 += a2[j];
  }
  *s1 += t1;
  *s2 += t2;
}

/* Σ x², blocked the same way */
static void NX_FN(sumsq)(const float* restrict x, size_t n, double* s2) {
  double a2[NX_LANES] = {0};
  size_t i = 0;
  for (; i + NX_BLOCK <= n; i += NX_BLOCK) {
    float b2[NX_LANES] = {0};
    for (size_t u = 0; u < NX_BLOCK; u += NX_LANES) {
      for (int j = 0; j < NX_LANES; ++j) b2[j] += x[i + u + j] * x[i + u + j];
    }
    for (int j = 0; j < NX_LANES; ++j) a2[j] += (double)b2[j];
  }
  if (i + NX_LANES <= n) {
    float b2[NX_LANES] = {0};
    for (; i + NX_LANES <= n; i += NX_LANES) {
      for (int j = 0; j < NX_LANES; ++j) b2[j] += x[i + j] * x[i + j];
    }
    for (int j = 0; j < NX_LANES; ++j) a2[j] += (double)b2[j];
  }
  double t2 = 0.0;
  for (; i < n; ++i) t2 += (double)x[i] * (double)x[i];
  for (int j = 0; j < NX_LANES; ++j) t2 += a2[j];
  *s2 += t2;
}
#endif /* NX_HAVE_ISA_SUMS */

/* e^x for float, |rel err| < 2e-7 on [-87, 88]: 2^n · p(r), r = x − n·ln2 in two parts, p a degree-6
 * minimax polynomial of e^r on [−ln2/2, ln2/2]. Branch-free so that it vectorises. Out of range,
 * the exponent n is clamped to [−126, 127] in the integer domain (float compare-and-blend clamps
 * made the vectorised loop ~5x slower, measured), which gives ~1e-38 / ~1e38 for e^(±large):
 * exactly what SiLU needs (x·σ(x) → x or → 0). NaN in, NaN out. */
static inline float NX_FN(nx_expf)(float x) {
  const float round_magic = 12582912.0f; /* 1.5·2^23: adding it rounds to an integer */
  float n = (x * 1.44269504088896341f + round_magic) - round_magic;
  float r = x - n * 0.693359375f; /* ln2 split: hi part exact in float */
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t i = (int32_t)n;
  i = i < -126 ? -126 : i;
  i = i > 127 ? 127 : i;
  int32_t bits = (i + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

/* The write passes take `pf`: data of the next segment to pull into L2 while this one is written,
 * so the next statistics pass reads from cache and reads overlap writes as in a copy (NULL: none).
 * One prefetch per 64-byte line, issued per chunk so that the inner loops still vectorise. */
#define NX_CHUNK 64
#if defined(__GNUC__)
#define NX_PREFETCH_LINE(p) __builtin_prefetch((p), 0, 2) /* read, into L2 */
#else
#define NX_PREFETCH_LINE(p) ((void)(p))
#endif
#define NX_PREFETCH(pf, c, e)                                                   \
  do {                                                                          \
    if (pf)                                                                     \
      for (size_t q_ = (c); q_ < (e); q_ += 16) NX_PREFETCH_LINE((pf) + q_);    \
  } while (0)

static void NX_FN(affine_span)(const float* restrict x, float* restrict y, size_t n, float mh, float ml, float a,
                               float b, int act) {
  if (act == NX_ACT_SILU) {
    for (size_t i = 0; i < n; ++i) {
      float v = ((x[i] - mh) - ml) * a + b;
      y[i] = v / (1.0f + NX_FN(nx_expf)(-v));
    }
  } else if (act == NX_ACT_RELU) {
    for (size_t i = 0; i < n; ++i) {
      float v = ((x[i] - mh) - ml) * a + b;
      y[i] = v < 0.0f ? 0.0f : v; /* NaN stays NaN, as onnx Relu */
    }
  } else {
    for (size_t i = 0; i < n; ++i) y[i] = ((x[i] - mh) - ml) * a + b;
  }
}

static void NX_FN(row_span)(const float* restrict x, float* restrict y, size_t n, float mh, float ml, float r,
                            const float* restrict w, const float* restrict b) {
  if (w && b) {
    for (size_t i = 0; i < n; ++i) y[i] = (((x[i] - mh) - ml) * r) * w[i] + b[i];
  } else if (w) {
    for (size_t i = 0; i < n; ++i) y[i] = (((x[i] - mh) - ml) * r) * w[i];
  } else if (b) {
    for (size_t i = 0; i < n; ++i) y[i] = ((x[i] - mh) - ml) * r + b[i];
  } else {
    for (size_t i = 0; i < n; ++i) y[i] = ((x[i] - mh) - ml) * r;
  }
}

static void NX_FN(rms_span)(const float* restrict x, float* restrict y, size_t n, float r, const float* restrict w) {
  if (w) {
    for (size_t i = 0; i < n; ++i) y[i] = (x[i] * r) * w[i];
  } else {
    for (size_t i = 0; i < n; ++i) y[i] = x[i] * r;
  }
}

static void NX_FN(affine_channels)(const float* restrict x, float* restrict y, size_t block, size_t nch, float mh,
                                   float ml, const float* restrict a, const float* restrict b, int act) {
  for (size_t c = 0; c < nch; ++c) NX_FN(affine_span)(x + c * block, y + c * block, block, mh, ml, a[c], b[c], act);
}

/* with a prefetch target, the span is written in chunks of NX_CHUNK, one prefetch per line each */
static void NX_FN(affine)(const float* restrict x, float* restrict y, size_t n, float mh, float ml, float a, float b,
                          int act, const float* pf) {
  if (!pf) {
    NX_FN(affine_span)(x, y, n, mh, ml, a, b, act);
    return;
  }
  for (size_t c = 0; c < n; c += NX_CHUNK) {
    size_t e = c + NX_CHUNK < n ? c + NX_CHUNK : n;
    NX_PREFETCH(pf, c, e);
    NX_FN(affine_span)(x + c, y + c, e - c, mh, ml, a, b, act);
  }
}

static void NX_FN(row)(const float* restrict x, float* restrict y, size_t n, float mh, float ml, float r,
                       const float* restrict w, const float* restrict b, const float* pf) {
  if (!pf) {
    NX_FN(row_span)(x, y, n, mh, ml, r, w, b);
    return;
  }
  for (size_t c = 0; c < n; c += NX_CHUNK) {
    size_t e = c + NX_CHUNK < n ? c + NX_CHUNK : n;
    NX_PREFETCH(pf, c, e);
    NX_FN(row_span)(x + c, y + c, e - c, mh, ml, r, w ? w + c : NULL, b ? b + c : NULL);
  }
}

static void NX_FN(rms_row)(const float* restrict x, float* restrict y, size_t n, float r, const float* restrict w,
                           const float* pf) {
  if (!pf) {
    NX_FN(rms_span)(x, y, n, r, w);
    return;
  }
  for (size_t c = 0; c < n; c += NX_CHUNK) {
    size_t e = c + NX_CHUNK < n ? c + NX_CHUNK : n;
    NX_PREFETCH(pf, c, e);
    NX_FN(rms_span)(x + c, y + c, e - c, r, w ? w + c : NULL);
  }
}

static void NX_FN(add)(const float* restrict x, const float* restrict r, float* restrict s, size_t n) {
  for (size_t i = 0; i < n; ++i) s[i] = x[i] + r[i];
}

#ifndef NX_HAVE_ISA_ADD_SUMS
/* generic: the add, then the statistics of the (cache-resident) sum */
static void NX_FN(gated_add)(const float* restrict x, const float* restrict r, const float* restrict g,
                             float* restrict s, size_t n) {
  if (!g) {
    NX_FN(add)(x, r, s, n);
    return;
  }
  for (size_t i = 0; i < n; ++i) s[i] = x[i] + nx_mul_rounded(g[i], r[i]);
}

static void NX_FN(add_sums)(const float* restrict x, const float* restrict r, const float* restrict g,
                            float* restrict s, size_t n, double k, double* s1, double* s2) {
  NX_FN(gated_add)(x, r, g, s, n);
  NX_FN(sums)(s, n, k, s1, s2);
}

static void NX_FN(add_sumsq)(const float* restrict x, const float* restrict r, const float* restrict g,
                             float* restrict s, size_t n, double* s2) {
  NX_FN(gated_add)(x, r, g, s, n);
  NX_FN(sumsq)(s, n, s2);
}
#endif

/* s and y may be the same buffer: every loop reads s[i] before writing y[i] at the same index, so
 * vectorising it is safe; the pragma tells the compiler so (no alias-check fallback loop) */
#if defined(__clang__)
#define NX_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define NX_IVDEP _Pragma("GCC ivdep")
#else
#define NX_IVDEP
#endif

static void NX_FN(row_ext)(const float* s, float* y, size_t n, float mh, float ml, double rstd,
                           const float* restrict w, const float* restrict b, const float* restrict sc,
                           const float* restrict sh) {
  const float r = (float)rstd;
  if (sc) {
    /* in float64 with one final rounding: the unfused graph rounds four times (the norm, 1 + scale,
     * the product, the sum), which puts a float32 evaluation here at torch's error, not below it */
    const double mhd = (double)mh, mld = (double)ml;
    NX_IVDEP for (size_t i = 0; i < n; ++i) {
      double v = (((double)s[i] - mhd) - mld) * rstd;
      y[i] = (float)(v * (1.0 + (double)sc[i]) + (double)sh[i]);
    }
  } else if (w && b) {
    NX_IVDEP for (size_t i = 0; i < n; ++i) y[i] = (((s[i] - mh) - ml) * r) * w[i] + b[i];
  } else if (w) {
    NX_IVDEP for (size_t i = 0; i < n; ++i) y[i] = (((s[i] - mh) - ml) * r) * w[i];
  } else if (b) {
    NX_IVDEP for (size_t i = 0; i < n; ++i) y[i] = ((s[i] - mh) - ml) * r + b[i];
  } else {
    NX_IVDEP for (size_t i = 0; i < n; ++i) y[i] = ((s[i] - mh) - ml) * r;
  }
}

#ifndef NX_HAVE_ISA_AFFINE_SUMS
/* generic: the two passes one after the other (an ISA file interleaves them) */
static void NX_FN(affine_sums)(const float* x, float* y, size_t n, float mh, float ml, float a, float b, int act,
                               const float* xn, double k, double* s1, double* s2) {
  NX_FN(affine_span)(x, y, n, mh, ml, a, b, act);
  NX_FN(sums)(xn, n, k, s1, s2);
}
#endif

/* column statistics over `rows` (≤ 8) rows of `stride` floats, in float64 throughout: channel axes
 * are short, so float partial sums (as in `sums`) would cost ~2 ulp of the output, twice torch's
 * error (tests/test_stress.py, layer_cf). Eight rows (the common case) are one loop body over
 * positions, so the partial sums stay in registers. */
static void NX_FN(col_sums)(const float* restrict x, size_t stride, size_t rows, size_t n, const float* restrict k,
                            double* restrict s1, double* restrict s2) {
  if (rows == 8) {
    const float *x0 = x, *x1 = x + stride, *x2 = x + 2 * stride, *x3 = x + 3 * stride;
    const float *x4 = x + 4 * stride, *x5 = x + 5 * stride, *x6 = x + 6 * stride, *x7 = x + 7 * stride;
    for (size_t p = 0; p < n; ++p) {
      double kp = (double)k[p];
      double d0 = x0[p] - kp, d1 = x1[p] - kp, d2 = x2[p] - kp, d3 = x3[p] - kp;
      double d4 = x4[p] - kp, d5 = x5[p] - kp, d6 = x6[p] - kp, d7 = x7[p] - kp;
      s1[p] += ((d0 + d1) + (d2 + d3)) + ((d4 + d5) + (d6 + d7));
      s2[p] += ((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)) + ((d4 * d4 + d5 * d5) + (d6 * d6 + d7 * d7));
    }
    return;
  }
  for (size_t p = 0; p < n; ++p) {
    double a = 0.0, b = 0.0;
    for (size_t r = 0; r < rows; ++r) {
      double d = (double)x[r * stride + p] - (double)k[p];
      a += d;
      b += d * d;
    }
    s1[p] += a;
    s2[p] += b;
  }
}

/* per position, in place: s1 ← mean = k + s1/count, s2 ← 1/√(max(σ², 0) + ε), both kept in float64 */
static void NX_FN(col_finish)(size_t n, const float* restrict k, double* restrict s1, double* restrict s2, double count,
                              double eps) {
  const double inv = 1.0 / count;
  for (size_t p = 0; p < n; ++p) {
    double m1 = s1[p] * inv;
    double var = s2[p] * inv - m1 * m1;
    var = var > 0.0 ? var : 0.0;
    s1[p] = (double)k[p] + m1;
    s2[p] = 1.0 / sqrt(var + eps); /* vectorised given -fno-math-errno */
  }
}

static void NX_FN(col_affine)(const float* restrict x, float* restrict y, size_t n, const double* restrict mean,
                              const double* restrict rstd, float a, float b) {
  /* in float64 with one final rounding: over a short channel axis the float form's four roundings
   * (x − mh, − ml, r·a, ·, + b) cost ~3 ulp, twice torch's error (tests/test_stress.py, layer_cf).
   * The mean and 1/σ stay float64 from col_finish: converting a float hi/lo split of them back for
   * every element made this loop conversion-bound (61 % of a 32 x 256 tile, measured) */
  const double ad = (double)a, bd = (double)b;
  for (size_t p = 0; p < n; ++p) y[p] = (float)(((double)x[p] - mean[p]) * (rstd[p] * ad) + bd);
}

const NxMath NX_FN(nx_math) = {
    NX_ISA_NAME,      NX_FN(sums),     NX_FN(sumsq),      NX_FN(affine),     NX_FN(affine_channels), NX_FN(affine_sums),
    NX_FN(row),       NX_FN(rms_row),  NX_FN(add),        NX_FN(add_sums),   NX_FN(add_sumsq), NX_FN(row_ext),    NX_FN(col_sums),
    NX_FN(col_finish), NX_FN(col_affine), NX_SHORT_ROWS_FN,
};
