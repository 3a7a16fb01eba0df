/* The inner loops of the normonnx kernels: statistics and the normalising affine map, float32 I/O.
 *
 * Statistics (one read): over a span x[0..n), with a shift k (a sample of the span),
 *     s1 = Σ (x − k),   s2 = Σ (x − k)²        accumulated in float64, 16 independent lanes
 * so mean = k + s1/n and σ² = s2/n − (s1/n)². The shift keeps the cancellation in σ² bounded by
 * (mean − k)²/σ², a few units for any sample k, and float64 leaves ~10 digits after it; a
 * zero-variance span gives s1 = s2 = 0 exactly.
 *
 * Normalisation: the mean is split into float hi + lo parts (mh = float(mean), ml = float(mean − mh))
 * and y = ((x − mh) − ml)·a + b. For x near the mean, x − mh is exact (Sterbenz), so an input at
 * offset 1e3 keeps its full float precision instead of losing 1e3·2⁻²⁴ in a folded x·a + (b − mean·a).
 *
 * This header is compiled once per instruction set (NX_ISA_SUFFIX): the loops are written so that
 * the compiler vectorises them (lane arrays for the reductions, no cross-iteration dependences).
 */
#ifndef NORMONNX_NORM_MATH_H
#define NORMONNX_NORM_MATH_H

#include <stddef.h>

/* the activation fused after a channel norm's affine (the node's "activation" attribute) */
enum { NX_ACT_NONE = 0, NX_ACT_SILU = 1, NX_ACT_RELU = 2 };

typedef struct NxMath {
  const char* isa;
  /* *s1 += Σ(x−k), *s2 += Σ(x−k)² over x[0..n) */
  void (*sums)(const float* x, size_t n, double k, double* s1, double* s2);
  /* *s2 += Σ x² over x[0..n) */
  void (*sumsq)(const float* x, size_t n, double* s2);
  /* The write passes prefetch pf[0..n) into L2 meanwhile (the next segment; NULL: nothing). */
  /* y = ((x − mh) − ml)·a + b, optionally followed by the activation `act` (NX_ACT_*: SiLU y·σ(y), ReLU) */
  void (*affine)(const float* x, float* y, size_t n, float mh, float ml, float a, float b, int act, const float* pf);
  /* affine over `nch` consecutive channels of `block` elements, channel c with a[c], b[c]: one call
   * instead of one per channel (small maps: an 8x8 channel is 64 elements, call overhead doubled
   * the pass, measured) */
  void (*affine_channels)(const float* x, float* y, size_t block, size_t nch, float mh, float ml, const float* a,
                          const float* b, int act);
  /* affine(x → y) over [0, n) fused with sums(xn[0..n), k): normalise this segment while reading
   * the next one for its statistics, so that reads and writes stream together as in a copy.
   * y and *s1, *s2 come out bitwise equal to affine(...) followed by sums(xn, n, k, s1, s2). */
  void (*affine_sums)(const float* x, float* y, size_t n, float mh, float ml, float a, float b, int act,
                      const float* xn, double k, double* s1, double* s2);
  /* y[i] = ((x[i] − mh) − ml)·r·w[i] + b[i]; w or b may be NULL (1 / 0) */
  void (*row)(const float* x, float* y, size_t n, float mh, float ml, float r, const float* w, const float* b,
              const float* pf);
  /* y[i] = x[i]·r·w[i]; w may be NULL */
  void (*rms_row)(const float* x, float* y, size_t n, float r, const float* w, const float* pf);
  /* s[i] = x[i] + r[i] (a residual norm's sum, rounded as the Add it replaces) */
  void (*add)(const float* x, const float* r, float* s, size_t n);
  /* s = x + r as `add` (gated, g non-NULL: s = x + fl(g·r), the product rounded before the sum
   * as the Mul and Add it replaces; never contracted to an fma), and in the same loop
   * *s1 += Σ(s − k), *s2 += Σ(s − k)² as `sums` (bitwise those of sums over s) */
  void (*add_sums)(const float* x, const float* r, const float* g, float* s, size_t n, double k, double* s1,
                   double* s2);
  /* s as in add_sums, and *s2 += Σ s² as `sumsq` */
  void (*add_sumsq)(const float* x, const float* r, const float* g, float* s, size_t n, double* s2);
  /* the fused forms' write pass, s may be y itself (in place):
   * without modulation y[i] = ((s[i] − mh) − ml)·r·w[i] + b[i] in float (w, b may be NULL; rms: mh = ml = 0),
   * with it (sc, sh non-NULL; no w/b) y[i] = (((s[i] − mh) − ml)·r)·(1 + sc[i]) + sh[i] in float64 */
  void (*row_ext)(const float* s, float* y, size_t n, float mh, float ml, double r, const float* w, const float* b,
                  const float* sc, const float* sh);
  /* column statistics over rows r < `rows` (≤ 8) of x (row stride `stride`):
   * s1[p] += Σ_r x[r][p] − k[p], s2[p] += Σ_r (x[r][p] − k[p])², in float64 */
  void (*col_sums)(const float* x, size_t stride, size_t rows, size_t n, const float* k, double* s1, double* s2);
  /* per position p, in place: s1[p] ← mean = k[p] + s1[p]/count, s2[p] ← 1/√(max(s2/count − (s1/count)², 0) + ε) */
  void (*col_finish)(size_t n, const float* k, double* s1, double* s2, double count, double eps);
  /* column normalisation: y[p] = (x[p] − mean[p])·(rstd[p]·a) + b, evaluated in float64 */
  void (*col_affine)(const float* x, float* y, size_t n, const double* mean, const double* rstd, float a, float b);
  /* Short rows, whole: `m` rows of `len` contiguous elements (len a multiple of 8, at most
   * NX_SHORT_MAX_LEN), each normalised as a layer row (rms = 0: statistics as `sums` with k = the
   * row's first element, then `row`) or an rms row (Σx², then `rms_row`): one call per task instead
   * of two per row. With a residual r (non-NULL) the rows are x + r, stored to `sum` as `add_sums`
   * does (sum may be y itself). NULL in an ISA without it (the caller goes row by row). */
  void (*short_rows)(const float* x, const float* r, float* sum, float* y, size_t m, size_t len, const float* w,
                     const float* b, double eps, int rms);
} NxMath;

#define NX_SHORT_MAX_LEN ((size_t)256)

/* fl(a·b) as a separate rounding: an empty asm hides the product from the compiler, which may
 * otherwise contract a·b + c into an fma (GCC's default -ffp-contract=fast) */
static inline float nx_mul_rounded(float a, float b) {
  float p = a * b;
#if defined(__GNUC__) && defined(__x86_64__)
  __asm__("" : "+x"(p));
#elif defined(__GNUC__) && defined(__aarch64__)
  __asm__("" : "+w"(p));
#else
  volatile float v = p;
  p = v;
#endif
  return p;
}

extern const NxMath nx_math_generic;
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define NX_HAVE_AVX2_BUILD 1
extern const NxMath nx_math_avx2;
#endif

#endif
