/* normonnx native CPU kernels: an onnxruntime custom-op library for the "normonnx.kernels" domain.
 *
 * Registers float32 CPU kernels for GroupNorm, InstanceNorm and BatchNorm (each optionally followed
 * by a fused SiLU or ReLU), LayerNorm (trailing axes or channels_first) and RMSNorm, with the node
 * attributes and inputs that normonnx/lowering/function.py defines for the portable "normonnx" ops:
 * inputs (X, weight?, bias? [, mean, var]), absent optional inputs are empty names; attributes
 * epsilon, channels, normalized_shape, num_groups, channels_first, running_stats, activation.
 *
 * Fused forms of the trailing-axes LayerNorm (inputs X, weight?, bias?, residual?, scale?, shift?,
 * gate?) and RMSNorm (X, weight?, residual?, gate?): attribute has_residual=1 normalises S = X + R
 * (R of X's shape), S written to the optional second output when the node has one; has_gate=1
 * makes it S = X + fl(gate·R) (AdaLN-Zero); modulation=1 (LayerNorm without γ/β) gives
 * N(x)·(1 + scale) + shift. gate, scale and shift are [N or 1, 1, ..., C], or with sample_operands=1
 * [N or 1, C] (aligned to X's axis 0: the same row per sample, only the shape check differs).
 *
 * Why a domain of its own: once a library registers an op, onnxruntime (1.31, measured) binds
 * every node of that (domain, op) to the library's schema and no longer to the model-local
 * function, so a node whose element type has no kernel here fails to load instead of running its
 * function body. The "native_kernel" lowering therefore emits float32 nodes in this domain, each
 * with a model-local function of the same (domain, op, overload): without the library onnxruntime
 * inlines the body, with it the kernel below runs. "normonnx"-domain nodes are never touched.
 *
 * Loaded with SessionOptions.register_custom_ops_library(path): onnxruntime calls
 * RegisterCustomOps(options, api_base). We need API version NX_ORT_API_VERSION (17, onnxruntime
 * 1.17) and say so if GetApi returns NULL. Work is split with KernelContext_ParallelFor so the
 * session's intra-op thread setting is respected.
 *
 * Every kernel reads its input once for the statistics (float64 accumulation of shifted sums, see
 * norm_math.h) and once more, usually from cache, to write the output.
 */
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if !defined(_WIN32)
#include <unistd.h>
#endif

#include "norm_math.h"
#include "ort_abi.h"

#define NX_ABI 5 /* bump when the Python side must notice an incompatible library (2: residual, modulation; 3: gate;
                  * 4: relu; 5: activations on InstanceNorm/BatchNorm, sample_operands) */
#define NX_DOMAIN "normonnx.kernels"
#define NX_MAX_RANK 16

static const OrtApi* g_api;
static const NxMath* g_math = &nx_math_generic;
static size_t g_ncpu = 1; /* online processors, an upper bound on onnxruntime's intra-op threads */

/* -- small helpers around the OrtApi table ------------------------------------------------------ */
#define API(type, slot) NX_API(g_api, type, slot)

#ifdef __GNUC__
static OrtStatus* nx_error(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
#endif
static OrtStatus* nx_error(const char* fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return API(NxCreateStatus, NX_SLOT_CreateStatus)(NX_ORT_INVALID_ARGUMENT, msg);
}

static void nx_release(OrtStatus* st) {
  if (st) API(NxReleaseStatus, NX_SLOT_ReleaseStatus)(st);
}

#define TRY(expr)                 \
  do {                            \
    OrtStatus* nx_st_ = (expr);   \
    if (nx_st_) return nx_st_;    \
  } while (0)

/* -- kinds and kernels --------------------------------------------------------------------------- */
typedef enum { NX_GROUP, NX_LAYER, NX_RMS, NX_INSTANCE, NX_BATCH } NxKind;

typedef struct NxOp {
  OrtCustomOp base; /* first member: onnxruntime hands us &base */
  const char* name;
  NxKind kind;
  size_t n_inputs;
  size_t n_outputs; /* outputs after the first are optional */
} NxOp;

typedef struct NxKernel {
  NxKind kind;
  const char* op;
  double eps;
  int64_t channels; /* -1: not given */
  int64_t groups;
  int channels_first;
  int running_stats;
  int act;
  int residual;
  int gate;
  int modulation;
  int sample_operands; /* scale/shift/gate are [N or 1, *normalized_shape] */
  size_t ns_len;
  int64_t ns[NX_MAX_RANK];
  /* weight (input 1) and bias (input 2) when they are constant initializers, read once here: reading
   * an input through the API costs ~0.4 us per call in a model (GetTensorTypeAndShape allocates), a
   * third of a small node's fixed cost. NULL: read it in compute, as every other input. */
  const float* param[2];
  size_t param_count[2];
} NxKernel;

static OrtStatus* get_int(const OrtKernelInfo* info, const char* name, int64_t dflt, int64_t* out) {
  OrtStatus* st = API(NxKernelInfoGetAttributeInt64, NX_SLOT_KernelInfoGetAttribute_int64)(info, name, out);
  if (st) { /* absent attribute */
    nx_release(st);
    *out = dflt;
  }
  return NULL;
}

/* -- tensors ------------------------------------------------------------------------------------ */
typedef struct NxTensor {
  const float* data; /* NULL: input absent */
  size_t count;
  size_t rank;
  int64_t dims[NX_MAX_RANK];
} NxTensor;

/* no tensor (an absent optional input): only these fields are read then. Not a memset of the whole
 * struct: with its 16 dims that was a `rep stos` per tensor, ~80 % of compute's own time (perf) */
static void nx_absent(NxTensor* t) {
  t->data = NULL;
  t->count = 0;
  t->rank = 0;
}

/* the float32 tensor `v` (input `index`, for messages) into t */
static OrtStatus* read_value(const NxKernel* k, size_t index, const OrtValue* v, NxTensor* t) {
  OrtTensorTypeAndShapeInfo* info = NULL;
  TRY(API(NxGetTensorTypeAndShape, NX_SLOT_GetTensorTypeAndShape)(v, &info));
  int type = 0;
  OrtStatus* st = API(NxGetTensorElementType, NX_SLOT_GetTensorElementType)(info, &type);
  if (!st) st = API(NxGetDimensionsCount, NX_SLOT_GetDimensionsCount)(info, &t->rank);
  if (!st && t->rank > NX_MAX_RANK)
    st = nx_error("normonnx.%s: input %zu has rank %zu, at most %d is supported", k->op, index, t->rank, NX_MAX_RANK);
  if (!st) st = API(NxGetDimensions, NX_SLOT_GetDimensions)(info, t->dims, t->rank);
  if (!st) st = API(NxGetTensorShapeElementCount, NX_SLOT_GetTensorShapeElementCount)(info, &t->count);
  API(NxReleaseTensorTypeAndShapeInfo, NX_SLOT_ReleaseTensorTypeAndShapeInfo)(info);
  if (st) return st;
  if (type != NX_TYPE_FLOAT)
    return nx_error("normonnx.%s: input %zu has element type %d, this kernel takes float32 (1)", k->op, index, type);
  void* data = NULL;
  TRY(API(NxGetTensorMutableData, NX_SLOT_GetTensorMutableData)((OrtValue*)v, &data));
  t->data = (const float*)data;
  return NULL;
}

static OrtStatus* read_input(OrtKernelContext* ctx, const NxKernel* k, size_t index, size_t n_inputs, NxTensor* t) {
  nx_absent(t);
  if (index >= n_inputs) return NULL;
  const OrtValue* v = NULL;
  TRY(API(NxKernelContextGetInput, NX_SLOT_KernelContext_GetInput)(ctx, index, &v));
  if (!v) return NULL; /* optional input given as "" */
  return read_value(k, index, v, t);
}

/* input `index` when the session holds it as a constant initializer of float32 type: its data (owned by
 * the session, which outlives its kernels) and element count; anything else leaves *data NULL and
 * compute reads (and reports) it at every run */
static void constant_param(const OrtKernelInfo* info, const NxKernel* k, size_t index, const float** data,
                           size_t* count) {
  *data = NULL, *count = 0;
  int is_constant = 0;
  const OrtValue* v = NULL;
  OrtStatus* st = API(NxKernelInfoGetConstantInputTensor, NX_SLOT_KernelInfoGetConstantInput_tensor)(
      info, index, &is_constant, &v);
  NxTensor t;
  nx_absent(&t);
  if (!st && is_constant && v) st = read_value(k, index, v, &t);
  if (st) {
    nx_release(st);
    return;
  }
  *data = t.data, *count = t.count;
}

static OrtStatus* NX_CALL create_kernel(const OrtCustomOp* base, const OrtApi* api, const OrtKernelInfo* info,
                                        void** out) {
  (void)api;
  const NxOp* op = (const NxOp*)base;
  NxKernel* k = (NxKernel*)calloc(1, sizeof *k);
  if (!k) return nx_error("normonnx.%s: out of memory", op->name);
  k->kind = op->kind;
  k->op = op->name;
  float eps = 1e-5f;
  OrtStatus* st = API(NxKernelInfoGetAttributeFloat, NX_SLOT_KernelInfoGetAttribute_float)(info, "epsilon", &eps);
  if (st) nx_release(st);
  k->eps = (double)eps;
  int64_t v;
  get_int(info, "channels", -1, &k->channels);
  get_int(info, "num_groups", -1, &k->groups);
  get_int(info, "channels_first", 0, &v);
  k->channels_first = v != 0;
  get_int(info, "running_stats", 0, &v);
  k->running_stats = v != 0;
  get_int(info, "has_residual", 0, &v);
  k->residual = v != 0;
  get_int(info, "modulation", 0, &v);
  k->modulation = v != 0;
  get_int(info, "has_gate", 0, &v);
  k->gate = v != 0;
  get_int(info, "sample_operands", 0, &v);
  k->sample_operands = v != 0;

  size_t len = 0;
  st = API(NxKernelInfoGetAttributeArrayInt64, NX_SLOT_KernelInfoGetAttributeArray_int64)(info, "normalized_shape",
                                                                                          NULL, &len);
  if (st) {
    nx_release(st);
    len = 0;
  } else if (len > NX_MAX_RANK) {
    free(k);
    return nx_error("normonnx.%s: normalized_shape has %zu axes, at most %d are supported", op->name, len,
                    NX_MAX_RANK);
  } else if (len) {
    st = API(NxKernelInfoGetAttributeArrayInt64, NX_SLOT_KernelInfoGetAttributeArray_int64)(info, "normalized_shape",
                                                                                            k->ns, &len);
    if (st) {
      free(k);
      return st;
    }
  }
  k->ns_len = len;

  char act[32] = {0};
  size_t act_len = sizeof act;
  st = API(NxKernelInfoGetAttributeString, NX_SLOT_KernelInfoGetAttribute_string)(info, "activation", act, &act_len);
  if (st) {
    nx_release(st);
    act[0] = 0;
  }
  if (act[0] && strcmp(act, "silu") != 0 && strcmp(act, "relu") != 0) {
    free(k);
    return nx_error("normonnx.%s: unknown fused activation '%s' (valid: '', 'silu' or 'relu')", op->name, act);
  }
  k->act = !act[0] ? NX_ACT_NONE : strcmp(act, "silu") == 0 ? NX_ACT_SILU : NX_ACT_RELU;

  if (k->act != NX_ACT_NONE && (k->kind == NX_LAYER || k->kind == NX_RMS)) {
    free(k);
    return nx_error("normonnx.%s: a fused activation is for the channel norms (GroupNorm, InstanceNorm, BatchNorm)",
                    op->name);
  }
  if (k->kind == NX_GROUP && k->groups < 1) {
    free(k);
    return nx_error("normonnx.GroupNorm: attribute num_groups must be a positive integer");
  }
  if ((k->kind == NX_LAYER || k->kind == NX_RMS) && k->ns_len == 0) {
    free(k);
    return nx_error("normonnx.%s: attribute normalized_shape is required", op->name);
  }
  if ((k->residual && k->kind != NX_LAYER && k->kind != NX_RMS) || (k->modulation && k->kind != NX_LAYER) ||
      ((k->residual || k->modulation) && k->channels_first)) {
    free(k);
    return nx_error("normonnx.%s: has_residual=1 is for trailing LayerNorm/RMSNorm, modulation=1 for trailing LayerNorm",
                    op->name);
  }
  if (k->gate && !k->residual) {
    free(k);
    return nx_error("normonnx.%s: has_gate=1 gates the residual input and needs has_residual=1", op->name);
  }
  if (k->sample_operands && !k->modulation && !k->gate) {
    free(k);
    return nx_error("normonnx.%s: sample_operands=1 describes scale/shift/gate and needs modulation=1 or has_gate=1",
                    op->name);
  }
  if (k->kind == NX_LAYER && k->channels_first && k->ns_len != 1) {
    free(k);
    return nx_error("normonnx.LayerNorm: channels_first=1 normalises axis 1 only, normalized_shape must be (C,)");
  }
  for (size_t i = 0; i < (k->kind == NX_RMS ? 1u : 2u); ++i) /* RMSNorm has no bias */
    constant_param(info, k, i + 1, &k->param[i], &k->param_count[i]);
  *out = k;
  return NULL;
}

static void NX_CALL destroy_kernel(void* k) { free(k); }

static OrtStatus* check_param(const NxKernel* k, const NxTensor* p, const char* what, size_t expected) {
  if (p->data && p->count != expected)
    return nx_error("normonnx.%s: %s has %zu elements, expected %zu", k->op, what, p->count, expected);
  return NULL;
}

/* -- parallel-for over onnxruntime's intra-op pool ---------------------------------------------- */
static void run_parallel(OrtKernelContext* ctx, void (*fn)(void*, size_t), size_t total, void* job) {
  if (total == 0) return;
  if (total > 1) {
    /* num_batch = 0: onnxruntime hands out the `total` tasks dynamically over its threads */
    OrtStatus* st = API(NxKernelContextParallelFor, NX_SLOT_KernelContext_ParallelFor)(ctx, fn, total, 0, job);
    if (!st) return;
    nx_release(st); /* e.g. a minimal build without the kernel-context API: run serially */
  }
  for (size_t i = 0; i < total; ++i) fn(job, i);
}

/* mean and 1/√(σ² + ε) from shifted sums; σ² clamped at 0 (rounding can make it slightly negative) */
static void finish_moments(double k, double s1, double s2, double n, double eps, float* mh, float* ml, double* rstd) {
  double m1 = s1 / n;
  double var = s2 / n - m1 * m1;
  if (var < 0.0) var = 0.0;
  double mean = k + m1;
  *mh = (float)mean;
  *ml = (float)(mean - (double)*mh);
  *rstd = 1.0 / sqrt(var + eps);
}

/* -- contiguous-segment norms: group, instance (input statistics), layer (trailing), rms ----------
 * The input is `segs` contiguous segments of `len` elements, each normalised with its own
 * statistics. The affine parameters are per channel-block of `block` elements (group/instance:
 * channel c of segment s is (s % cps)·cpb + i/block) or per element (layer/rms: index i).
 * Small segments: one task handles whole segments (statistics, then the affine pass over the
 * same, now cached, data). Few large segments: two phases over chunks (partial sums per chunk,
 * combined per segment, then the affine pass per chunk) so both threads stay busy. */
typedef enum { NX_AFFINE_CHANNEL, NX_AFFINE_ELEMENT, NX_AFFINE_RMS } NxAffineMode;

typedef struct NxSegJob {
  const float* x;
  float* y;
  const float* w;
  const float* b;
  size_t segs, len;
  NxAffineMode mode;
  size_t block;  /* channel mode: elements per channel */
  size_t cps;    /* channel mode: segments per sample (groups), to find the first channel */
  size_t cpseg;  /* channel mode: channels per segment */
  double eps;
  int act;
  /* fused forms (layer / rms rows): r residual (x + r normalised, the sum in `sum` or, when nobody
   * reads it, in y itself), msc/msh modulation scale/shift with their floats per sample (0: shared),
   * `segs_per_sample` rows per sample */
  const float* r;
  float* sum;
  const float *msc, *msh, *gate; /* gate: S = X + gate·R */
  size_t msc_stride, msh_stride, gate_stride, segs_per_sample;
  size_t segs_per_task;
  int prefetch; /* prefetch segment s+1 while writing segment s */
  /* two-phase mode */
  size_t chunk, chunks_per_seg;
  double* part; /* [segs][chunks][2] partial sums */
  float* stat;  /* [segs][3]: mh, ml, rstd */
} NxSegJob;

static int seg_ext(const NxSegJob* j) { return j->r != NULL || j->msc != NULL; }
static float* seg_sum_buf(const NxSegJob* j, size_t s) { return (j->sum ? j->sum : j->y) + s * j->len; }

/* the shift k of segment s's statistics: its first element (of the sum for a residual norm) */
static double seg_shift(const NxSegJob* j, size_t s) {
  if (j->mode == NX_AFFINE_RMS) return 0.0;
  size_t o = s * j->len;
  if (!j->r) return (double)j->x[o];
  if (!j->gate) return (double)(j->x[o] + j->r[o]);
  return (double)(j->x[o] + nx_mul_rounded(j->gate[(s / j->segs_per_sample) * j->gate_stride], j->r[o]));
}

/* pf: the same range of the next segment, to prefetch while writing (NULL: none) */
static void seg_affine(const NxSegJob* j, size_t s, size_t lo, size_t hi, float mh, float ml, double rstd,
                       const float* pf) {
  const float* x = j->x + s * j->len;
  float* y = j->y + s * j->len;
  if (seg_ext(j)) {
    const float* src = j->r ? seg_sum_buf(j, s) : x; /* the sum, in place when it is y */
    size_t n = j->msc ? s / j->segs_per_sample : 0;
    (void)pf;
    g_math->row_ext(src + lo, y + lo, hi - lo, mh, ml, rstd, j->w ? j->w + lo : NULL, j->b ? j->b + lo : NULL,
                    j->msc ? j->msc + n * j->msc_stride + lo : NULL, j->msh ? j->msh + n * j->msh_stride + lo : NULL);
    return;
  }
  if (j->mode == NX_AFFINE_ELEMENT) {
    g_math->row(x + lo, y + lo, hi - lo, mh, ml, (float)rstd, j->w ? j->w + lo : NULL, j->b ? j->b + lo : NULL,
                pf ? pf + lo : NULL);
    return;
  }
  if (j->mode == NX_AFFINE_RMS) {
    g_math->rms_row(x + lo, y + lo, hi - lo, (float)rstd, j->w ? j->w + lo : NULL, pf ? pf + lo : NULL);
    return;
  }
  size_t c0 = (s % j->cps) * j->cpseg;
  if (!pf && lo % j->block == 0 && hi % j->block == 0) { /* whole channels: one call per 64 of them */
    float a[64], b[64];
    for (size_t ci = lo / j->block, ce = hi / j->block; ci < ce;) {
      size_t m = ce - ci < 64 ? ce - ci : 64;
      for (size_t q = 0; q < m; ++q) {
        size_t c = c0 + ci + q;
        a[q] = (float)(rstd * (j->w ? (double)j->w[c] : 1.0));
        b[q] = j->b ? j->b[c] : 0.0f;
      }
      g_math->affine_channels(x + ci * j->block, y + ci * j->block, j->block, m, mh, ml, a, b, j->act);
      ci += m;
    }
    return;
  }
  while (lo < hi) {
    size_t ci = lo / j->block;
    size_t end = (ci + 1) * j->block;
    if (end > hi) end = hi;
    size_t c = c0 + ci;
    double a = rstd * (j->w ? (double)j->w[c] : 1.0);
    float b = j->b ? j->b[c] : 0.0f;
    g_math->affine(x + lo, y + lo, end - lo, mh, ml, (float)a, b, j->act, pf ? pf + lo : NULL);
    lo = end;
  }
}

/* Channel mode with channels of at least NX_PIPE_MIN_BLOCK elements: statistics are summed per
 * channel span (the spans of the affine pass), so that the pipelined pass below, which reads the
 * next segment span by span, gives bitwise the same statistics as this one, whatever the task
 * split. Shorter channels are summed over the whole segment and not pipelined (cache-resident). */
#define NX_PIPE_MIN_BLOCK ((size_t)256)

static int seg_pipelined(const NxSegJob* j) { return j->mode == NX_AFFINE_CHANNEL && j->block >= NX_PIPE_MIN_BLOCK; }

static void seg_stats(const NxSegJob* j, size_t s, size_t lo, size_t hi, double k, double* s1, double* s2) {
  const float* x = j->x + s * j->len;
  if (j->r) { /* the sum is written once, summed in the same loop, and normalised from cache */
    float* buf = seg_sum_buf(j, s);
    const float* r = j->r + s * j->len;
    const float* g = j->gate ? j->gate + (s / j->segs_per_sample) * j->gate_stride + lo : NULL;
    if (j->mode == NX_AFFINE_RMS)
      g_math->add_sumsq(x + lo, r + lo, g, buf + lo, hi - lo, s2);
    else
      g_math->add_sums(x + lo, r + lo, g, buf + lo, hi - lo, k, s1, s2);
    return;
  }
  if (j->mode == NX_AFFINE_RMS) {
    g_math->sumsq(x + lo, hi - lo, s2);
  } else if (seg_pipelined(j)) {
    while (lo < hi) {
      size_t end = (lo / j->block + 1) * j->block;
      if (end > hi) end = hi;
      g_math->sums(x + lo, end - lo, k, s1, s2);
      lo = end;
    }
  } else {
    g_math->sums(x + lo, hi - lo, k, s1, s2);
  }
}

/* seg_affine of the whole segment s fused with seg_stats of segment s + 1 (shift kn): the write
 * stream of this segment and the read stream of the next one run together, as in a copy,
 * instead of a read-only statistics pass followed by a write pass. Channel mode only. */
static void seg_affine_next_stats(const NxSegJob* j, size_t s, float mh, float ml, double rstd, double kn, double* s1,
                                  double* s2) {
  const float* x = j->x + s * j->len;
  const float* xn = x + j->len;
  float* y = j->y + s * j->len;
  size_t c0 = (s % j->cps) * j->cpseg;
  for (size_t ci = 0; ci < j->cpseg; ++ci) {
    size_t lo = ci * j->block, c = c0 + ci;
    double a = rstd * (j->w ? (double)j->w[c] : 1.0);
    float b = j->b ? j->b[c] : 0.0f;
    g_math->affine_sums(x + lo, y + lo, j->block, mh, ml, (float)a, b, j->act, xn + lo, kn, s1, s2);
  }
}

static void seg_finish(const NxSegJob* j, size_t s, double k, double s1, double s2, float* mh, float* ml,
                       double* rstd) {
  if (j->mode == NX_AFFINE_RMS) {
    *mh = *ml = 0.0f;
    *rstd = 1.0 / sqrt(s2 / (double)j->len + j->eps);
  } else {
    finish_moments(k, s1, s2, (double)j->len, j->eps, mh, ml, rstd);
  }
  (void)s;
}

/* Short segments (transformer rows of a few hundred elements) in tiles of NX_TILE: the statistics
 * of all the tile's rows, then their 1/√(σ² + ε) together, then the writes. Row by row, each row's
 * write waited for its own statistics' reduction, square root and division (~100 cycles of
 * latency for 128 elements of work, measured: the divide alone was a third of seg_task); in a
 * tile the rows' independent chains overlap. The same per-row arithmetic as the row-by-row loop. */
#define NX_TILE 8
#define NX_TILE_MAX_LEN ((size_t)4096)

static void seg_task_tiled(const NxSegJob* j, size_t s0, size_t s1e) {
  double k[NX_TILE], a1[NX_TILE], a2[NX_TILE], rstd[NX_TILE];
  float mh[NX_TILE], ml[NX_TILE];
  const double n = (double)j->len;
  const int rms = j->mode == NX_AFFINE_RMS;
  for (size_t s = s0; s < s1e; s += NX_TILE) {
    size_t m = s1e - s < NX_TILE ? s1e - s : NX_TILE;
    for (size_t q = 0; q < m; ++q) {
      k[q] = seg_shift(j, s + q);
      a1[q] = a2[q] = 0.0;
      seg_stats(j, s + q, 0, j->len, k[q], &a1[q], &a2[q]);
    }
    if (rms) {
      for (size_t q = 0; q < m; ++q) rstd[q] = 1.0 / sqrt(a2[q] / n + j->eps);
      for (size_t q = 0; q < m; ++q) mh[q] = ml[q] = 0.0f;
    } else {
      for (size_t q = 0; q < m; ++q) finish_moments(k[q], a1[q], a2[q], n, j->eps, &mh[q], &ml[q], &rstd[q]);
    }
    for (size_t q = 0; q < m; ++q) seg_affine(j, s + q, 0, j->len, mh[q], ml[q], rstd[q], NULL);
  }
}

/* layer / rms rows, plain or with an ungated residual, that the ISA's short_rows takes whole */
static int seg_short(const NxSegJob* j) {
  return g_math->short_rows && j->mode != NX_AFFINE_CHANNEL && !j->msc && !j->gate && !j->prefetch &&
         j->len % 8 == 0 && j->len <= NX_SHORT_MAX_LEN;
}

static void seg_task(void* p, size_t t) {
  const NxSegJob* j = (const NxSegJob*)p;
  size_t s0 = t * j->segs_per_task, s1e = s0 + j->segs_per_task;
  if (s1e > j->segs) s1e = j->segs;
  if (seg_pipelined(j)) {
    double k = (double)j->x[s0 * j->len], a1 = 0.0, a2 = 0.0, rstd;
    float mh, ml;
    seg_stats(j, s0, 0, j->len, k, &a1, &a2);
    for (size_t s = s0; s < s1e; ++s) {
      seg_finish(j, s, k, a1, a2, &mh, &ml, &rstd);
      if (s + 1 == s1e) {
        seg_affine(j, s, 0, j->len, mh, ml, rstd, NULL);
        break;
      }
      k = (double)j->x[(s + 1) * j->len];
      a1 = a2 = 0.0;
      seg_affine_next_stats(j, s, mh, ml, rstd, k, &a1, &a2);
    }
    return;
  }
  if (seg_short(j)) {
    g_math->short_rows(j->x + s0 * j->len, j->r ? j->r + s0 * j->len : NULL, j->r ? seg_sum_buf(j, s0) : NULL,
                       j->y + s0 * j->len, s1e - s0, j->len, j->w, j->b, j->eps, j->mode == NX_AFFINE_RMS);
    return;
  }
  if (j->len <= NX_TILE_MAX_LEN && !j->prefetch) {
    seg_task_tiled(j, s0, s1e);
    return;
  }
  for (size_t s = s0; s < s1e; ++s) {
    double k = seg_shift(j, s);
    double a1 = 0.0, a2 = 0.0, rstd;
    float mh, ml;
    seg_stats(j, s, 0, j->len, k, &a1, &a2);
    seg_finish(j, s, k, a1, a2, &mh, &ml, &rstd);
    seg_affine(j, s, 0, j->len, mh, ml, rstd, j->prefetch && s + 1 < s1e ? j->x + (s + 1) * j->len : NULL);
  }
}

static void seg_phase1(void* p, size_t t) {
  const NxSegJob* j = (const NxSegJob*)p;
  size_t s = t / j->chunks_per_seg, c = t % j->chunks_per_seg;
  size_t lo = c * j->chunk, hi = lo + j->chunk > j->len ? j->len : lo + j->chunk;
  double k = seg_shift(j, s);
  double* out = j->part + 2 * t;
  out[0] = out[1] = 0.0;
  seg_stats(j, s, lo, hi, k, &out[0], &out[1]);
}

static void seg_phase2(void* p, size_t t) {
  const NxSegJob* j = (const NxSegJob*)p;
  size_t s = t / j->chunks_per_seg, c = t % j->chunks_per_seg;
  size_t lo = c * j->chunk, hi = lo + j->chunk > j->len ? j->len : lo + j->chunk;
  const float* st = j->stat + 3 * s;
  seg_affine(j, s, lo, hi, st[0], st[1], (double)st[2], NULL);
}

#define NX_TASK_ELEMS ((size_t)32768)  /* ~128 KiB of input per task: L2-resident between the passes */
/* Short segments are compute-bound: a row costs ~33 ns + 0.2 ns per element on the AVX2 loops
 * (the statistics' reduction and finish, two calls into the loops; measured for rows of 32-256),
 * so 256 rows of 32 took 10 us in one task (fewer than NX_TASK_ELEMS elements) while the other
 * thread idled. Such an input is split into one balanced task per processor when its estimated
 * time exceeds NX_SPLIT_NS, about three times what handing a task to another thread costs.
 * The estimate is the row-by-row loop's; the ISA's short_rows is 1.3-2x faster on the same rows but
 * keeps this estimate: re-estimated with its own cost, fewer inputs are split and chains of 40
 * kernel nodes measured 0.87-1.02x (256 rows of 32, left on one thread: 0.90x); a lower
 * NX_SPLIT_NS (2 us) was 0.79-0.91x. */
#define NX_ROW_NS(len) (33.0 + 0.2 * (double)(len))
#define NX_SPLIT_NS 6000.0
#define NX_SPLIT_ELEMS ((size_t)65536) /* segments longer than this are split when there are few */
/* Prefetching the next segment while writing this one overlaps the next statistics read with the
 * writes, as a copy does: measured 1.76x -> 1.35x of memcpy for 16.8 MB of 1024-element rows, but
 * worse for 160 KB GroupNorm segments (L2 thrash) and for cache-resident tensors. */
#define NX_PREFETCH_MAX_LEN ((size_t)16384)
#define NX_TASKS_PER_CPU ((size_t)4)
#define NX_PREFETCH_MIN_BYTES ((size_t)4 << 20)

/* segments per task of run_segments' whole-segment tasks */
static size_t seg_task_size(const NxSegJob* j) {
  size_t per = j->len >= NX_TASK_ELEMS ? 1 : NX_TASK_ELEMS / j->len;
  if (per >= j->segs && g_ncpu > 1 && j->segs > 1 && (double)j->segs * NX_ROW_NS(j->len) >= NX_SPLIT_NS) {
    size_t n = g_ncpu < j->segs ? g_ncpu : j->segs; /* short rows: one balanced task per processor */
    per = (j->segs + n - 1) / n;
  }
  if (seg_pipelined(j)) {
    /* the first segment of a task is read twice, the others once: longer tasks, but still about
     * NX_TASKS_PER_CPU per processor so that the pool's threads stay balanced */
    size_t even = j->segs / (NX_TASKS_PER_CPU * g_ncpu);
    if (even > per) per = even;
  }
  size_t tasks = (j->segs + per - 1) / per;
  if (tasks > 1 && tasks < 8 * g_ncpu && tasks % g_ncpu) {
    /* a few tasks that do not divide evenly over the processors (32 GroupNorm segments in tasks of
     * 12: 24 on one thread, 8 on the other): a multiple of the processors instead, the next one up */
    tasks += g_ncpu - tasks % g_ncpu;
    per = (j->segs + tasks - 1) / tasks;
  }
  return per;
}

static OrtStatus* run_segments(OrtKernelContext* ctx, NxSegJob* j) {
  if (j->segs == 0 || j->len == 0) return NULL;
  if (j->segs >= 4 || j->len <= 2 * NX_SPLIT_ELEMS) {
    j->segs_per_task = seg_task_size(j);
    j->prefetch = !seg_ext(j) && j->len <= NX_PREFETCH_MAX_LEN && j->segs * j->len * sizeof(float) >= NX_PREFETCH_MIN_BYTES;
    run_parallel(ctx, seg_task, (j->segs + j->segs_per_task - 1) / j->segs_per_task, j);
    return NULL;
  }
  j->chunk = NX_SPLIT_ELEMS;
  j->chunks_per_seg = (j->len + j->chunk - 1) / j->chunk;
  size_t tasks = j->segs * j->chunks_per_seg;
  j->part = (double*)malloc(sizeof(double) * 2 * tasks);
  j->stat = (float*)malloc(sizeof(float) * 3 * j->segs);
  if (!j->part || !j->stat) {
    free(j->part);
    free(j->stat);
    return nx_error("normonnx: out of memory for %zu partial sums", tasks);
  }
  run_parallel(ctx, seg_phase1, tasks, j);
  for (size_t s = 0; s < j->segs; ++s) {
    double a1 = 0.0, a2 = 0.0, rstd;
    double k = seg_shift(j, s);
    for (size_t c = 0; c < j->chunks_per_seg; ++c) { /* fixed order: deterministic result */
      a1 += j->part[2 * (s * j->chunks_per_seg + c)];
      a2 += j->part[2 * (s * j->chunks_per_seg + c) + 1];
    }
    seg_finish(j, s, k, a1, a2, &j->stat[3 * s], &j->stat[3 * s + 1], &rstd);
    j->stat[3 * s + 2] = (float)rstd;
  }
  run_parallel(ctx, seg_phase2, tasks, j);
  free(j->part);
  free(j->stat);
  return NULL;
}

/* -- per-channel norms with statistics across axis 0 or given: batch, instance(running) --------- */
typedef struct NxChanJob {
  const float* x;
  float* y;
  const float *w, *b, *mean, *var;
  size_t n, c, s; /* x is [n, c, s] */
  double eps;
  int act; /* NX_ACT_*, applied in the affine pass */
} NxChanJob;

/* per channel c: statistics over (n, s) unless running mean/var are given; then the affine map */
static void chan_task(void* p, size_t c) {
  const NxChanJob* j = (const NxChanJob*)p;
  float mh, ml;
  double rstd;
  if (j->mean) {
    double mean = (double)j->mean[c];
    mh = (float)mean;
    ml = (float)(mean - (double)mh);
    rstd = 1.0 / sqrt((double)j->var[c] + j->eps);
  } else {
    double k = (double)j->x[c * j->s], s1 = 0.0, s2 = 0.0;
    for (size_t i = 0; i < j->n; ++i) g_math->sums(j->x + (i * j->c + c) * j->s, j->s, k, &s1, &s2);
    finish_moments(k, s1, s2, (double)(j->n * j->s), j->eps, &mh, &ml, &rstd);
  }
  float a = (float)(rstd * (j->w ? (double)j->w[c] : 1.0));
  float b = j->b ? j->b[c] : 0.0f;
  for (size_t i = 0; i < j->n; ++i) {
    size_t off = (i * j->c + c) * j->s;
    g_math->affine(j->x + off, j->y + off, j->s, mh, ml, a, b, j->act, NULL);
  }
}

/* -- channels-first layer norm: statistics over axis 1 of [n, c, s] at each (n, position) --------
 * A task takes a tile of `cols` (≤ NX_COLS) positions of one sample: accumulates per-position sums
 * over the c rows of the tile (each a contiguous run of `cols` floats), then writes the tile. */
#define NX_COLS 256

typedef struct NxColJob {
  const float* x;
  float* y;
  const float *w, *b;
  size_t n, c, s, tiles_per_sample, cols;
  double eps;
} NxColJob;

static void col_task(void* p, size_t t) {
  const NxColJob* j = (const NxColJob*)p;
  size_t i = t / j->tiles_per_sample, p0 = (t % j->tiles_per_sample) * j->cols;
  size_t np = j->s - p0 < j->cols ? j->s - p0 : j->cols;
  const float* x = j->x + i * j->c * j->s + p0;
  float* y = j->y + i * j->c * j->s + p0;
  float k[NX_COLS];
  double s1[NX_COLS], s2[NX_COLS]; /* the sums, then in place the mean and 1/σ */
  memcpy(k, x, np * sizeof(float));
  memset(s1, 0, np * sizeof(double));
  memset(s2, 0, np * sizeof(double));
  for (size_t c = 0; c < j->c; c += 8)
    g_math->col_sums(x + c * j->s, j->s, j->c - c < 8 ? j->c - c : 8, np, k, s1, s2);
  g_math->col_finish(np, k, s1, s2, (double)j->c, j->eps);
  for (size_t c = 0; c < j->c; ++c)
    g_math->col_affine(x + c * j->s, y + c * j->s, np, s1, s2, j->w ? j->w[c] : 1.0f, j->b ? j->b[c] : 0.0f);
}

/* -- fused forms -------------------------------------------------------------------------------- */
/* residual R of exactly X's shape; the sum goes to output 1 when the node has it */
static OrtStatus* setup_residual(OrtKernelContext* ctx, const NxKernel* k, const NxTensor* X, const NxTensor* R,
                                 NxSegJob* j) {
  if (!R->data) return nx_error("normonnx.%s: has_residual=1 needs the residual input", k->op);
  int same = R->rank == X->rank;
  for (size_t i = 0; same && i < X->rank; ++i) same = R->dims[i] == X->dims[i];
  if (!same)
    return nx_error("normonnx.%s: the residual input must have X's shape (rank %zu, %zu elements), got rank %zu, "
                    "%zu elements",
                    k->op, X->rank, X->count, R->rank, R->count);
  j->r = R->data;
  size_t n_out = 0;
  TRY(API(NxKernelContextGetOutputCount, NX_SLOT_KernelContext_GetOutputCount)(ctx, &n_out));
  if (n_out > 1) {
    OrtValue* out = NULL;
    TRY(API(NxKernelContextGetOutput, NX_SLOT_KernelContext_GetOutput)(ctx, 1, X->dims, X->rank, &out));
    if (out) {
      void* data = NULL;
      TRY(API(NxGetTensorMutableData, NX_SLOT_GetTensorMutableData)(out, &data));
      j->sum = (float*)data;
    }
  }
  return NULL;
}

/* a per-sample row (scale, shift, gate) of shape [N or 1, 1, ..., 1, *normalized_shape] (right-aligned
 * against X), or with sample_operands=1 [N or 1, *normalized_shape] (aligned to X's axis 0); the rows
 * are laid out alike either way. *stride: its floats per sample (0: one row shared by the samples) */
static OrtStatus* check_row_operand(const NxKernel* k, const NxTensor* X, const NxTensor* p, const char* what,
                                    const char* form, size_t len, size_t* stride) {
  if (!p->data) return nx_error("normonnx.%s: %s=1 needs the %s input", k->op, form, what);
  if (k->sample_operands) {
    int ok = X->rank > k->ns_len && p->rank == k->ns_len + 1 && (p->dims[0] == 1 || p->dims[0] == X->dims[0]);
    for (size_t i = 0; ok && i < k->ns_len; ++i) ok = p->dims[1 + i] == k->ns[i];
    if (!ok)
      return nx_error("normonnx.%s: with sample_operands=1, %s must be [N or 1, normalized_shape] (rank %zu, first "
                      "dim %lld or 1), got rank %zu with %zu elements",
                      k->op, what, k->ns_len + 1, X->rank ? (long long)X->dims[0] : -1LL, p->rank, p->count);
    *stride = p->count == len ? 0 : len;
    return NULL;
  }
  size_t r = X->rank, lead = r - k->ns_len, pad = r - p->rank;
  int ok = p->rank <= r && lead >= 1;
  for (size_t i = 0; ok && i < r; ++i) {
    int64_t d = i < pad ? 1 : p->dims[i - pad];
    if (i >= lead) ok = d == k->ns[i - lead];
    else if (i == 0) ok = d == 1 || d == X->dims[0];
    else ok = d == 1;
  }
  if (!ok)
    return nx_error("normonnx.%s: %s must be [N or 1, 1, ..., 1, normalized_shape] against X, got rank %zu with "
                    "%zu elements",
                    k->op, what, p->rank, p->count);
  *stride = p->count == len ? 0 : len; /* [1, ..., C] shared by the samples, else one row per sample */
  return NULL;
}

static void set_segs_per_sample(const NxTensor* X, NxSegJob* j) {
  j->segs_per_sample = X->dims[0] > 0 ? j->segs / (size_t)X->dims[0] : 1;
  if (j->segs_per_sample == 0) j->segs_per_sample = 1;
}

static OrtStatus* setup_modulation(const NxKernel* k, const NxTensor* X, const NxTensor* SC, const NxTensor* SH,
                                   size_t len, NxSegJob* j) {
  TRY(check_row_operand(k, X, SC, "scale", "modulation", len, &j->msc_stride));
  TRY(check_row_operand(k, X, SH, "shift", "modulation", len, &j->msh_stride));
  j->msc = SC->data, j->msh = SH->data;
  set_segs_per_sample(X, j);
  return NULL;
}

static OrtStatus* setup_gate(const NxKernel* k, const NxTensor* X, const NxTensor* G, size_t len, NxSegJob* j) {
  TRY(check_row_operand(k, X, G, "gate", "has_gate", len, &j->gate_stride));
  j->gate = G->data;
  set_segs_per_sample(X, j);
  return NULL;
}

/* -- compute ------------------------------------------------------------------------------------ */
static size_t prod(const int64_t* d, size_t from, size_t to) {
  size_t p = 1;
  for (size_t i = from; i < to; ++i) p *= (size_t)d[i];
  return p;
}

static OrtStatus* NX_CALL compute(void* kernel, OrtKernelContext* ctx) {
  const NxKernel* k = (const NxKernel*)kernel;
  size_t n_in = 0;
  TRY(API(NxKernelContextGetInputCount, NX_SLOT_KernelContext_GetInputCount)(ctx, &n_in));
  NxTensor X, W, B, M, V, R, SC, SH, G;
  nx_absent(&B), nx_absent(&M), nx_absent(&V), nx_absent(&R), nx_absent(&SC), nx_absent(&SH), nx_absent(&G);
  TRY(read_input(ctx, k, 0, n_in, &X));
  if (k->param[0])
    W.data = k->param[0], W.count = k->param_count[0], W.rank = 1;
  else
    TRY(read_input(ctx, k, 1, n_in, &W));
  if (k->kind != NX_RMS && k->param[1])
    B.data = k->param[1], B.count = k->param_count[1], B.rank = 1;
  else if (k->kind != NX_RMS)
    TRY(read_input(ctx, k, 2, n_in, &B));
  if (k->kind == NX_LAYER) { /* X, weight, bias, residual, scale, shift, gate */
    if (k->residual) TRY(read_input(ctx, k, 3, n_in, &R));
    if (k->modulation) TRY(read_input(ctx, k, 4, n_in, &SC));
    if (k->modulation) TRY(read_input(ctx, k, 5, n_in, &SH));
    if (k->gate) TRY(read_input(ctx, k, 6, n_in, &G));
  } else if (k->kind == NX_RMS) { /* X, weight, residual, gate */
    if (k->residual) TRY(read_input(ctx, k, 2, n_in, &R));
    if (k->gate) TRY(read_input(ctx, k, 3, n_in, &G));
  } else {
    TRY(read_input(ctx, k, 3, n_in, &M));
    TRY(read_input(ctx, k, 4, n_in, &V));
  }
  if (!X.data) return nx_error("normonnx.%s: input X is required", k->op);

  OrtValue* out = NULL;
  TRY(API(NxKernelContextGetOutput, NX_SLOT_KernelContext_GetOutput)(ctx, 0, X.dims, X.rank, &out));
  void* ydata = NULL;
  TRY(API(NxGetTensorMutableData, NX_SLOT_GetTensorMutableData)(out, &ydata));
  float* y = (float*)ydata;
  const int64_t* d = X.dims;
  size_t r = X.rank;

  if (k->kind == NX_LAYER || k->kind == NX_RMS) {
    if (k->kind == NX_LAYER && k->channels_first) {
      if (r < 2 || d[1] != k->ns[0])
        return nx_error("normonnx.LayerNorm (channels_first): input of rank %zu has %lld channels on axis 1, "
                        "normalized_shape says %lld",
                        r, r >= 2 ? (long long)d[1] : -1LL, (long long)k->ns[0]);
      size_t c = (size_t)d[1];
      TRY(check_param(k, &W, "weight", c));
      TRY(check_param(k, &B, "bias", c));
      if (X.count == 0) return NULL;
      NxColJob j = {X.data, y, W.data, B.data, (size_t)d[0], c, prod(d, 2, r), 0, 0, k->eps};
      /* tile width: C x cols floats ~ 192 KiB so the second pass reads the tile from L2, but at
       * least 64 positions (narrower tiles were dominated by per-row call overhead: 7x a copy
       * at C=768, measured) */
      j.cols = (NX_TASK_ELEMS * 3 / 2) / c;
      j.cols = j.cols < 64 ? 64 : (j.cols > NX_COLS ? NX_COLS : j.cols & ~(size_t)7);
      j.tiles_per_sample = (j.s + j.cols - 1) / j.cols;
      run_parallel(ctx, col_task, j.n * j.tiles_per_sample, &j);
      return NULL;
    }
    if (r < k->ns_len)
      return nx_error("normonnx.%s: input of rank %zu cannot be normalised over %zu trailing axes", k->op, r,
                      k->ns_len);
    for (size_t i = 0; i < k->ns_len; ++i)
      if (d[r - k->ns_len + i] != k->ns[i])
        return nx_error("normonnx.%s: input axis %zu has size %lld, normalized_shape[%zu] is %lld", k->op,
                        r - k->ns_len + i, (long long)d[r - k->ns_len + i], i, (long long)k->ns[i]);
    size_t len = prod(k->ns, 0, k->ns_len);
    TRY(check_param(k, &W, "weight", len));
    TRY(check_param(k, &B, "bias", len));
    NxSegJob j = {0};
    j.x = X.data, j.y = y, j.w = W.data, j.b = B.data;
    j.len = len, j.segs = len ? X.count / len : 0;
    j.mode = k->kind == NX_RMS ? NX_AFFINE_RMS : NX_AFFINE_ELEMENT;
    j.eps = k->eps;
    if (k->residual) TRY(setup_residual(ctx, k, &X, &R, &j));
    if (k->modulation) TRY(setup_modulation(k, &X, &SC, &SH, len, &j));
    if (k->gate) TRY(setup_gate(k, &X, &G, len, &j));
    return run_segments(ctx, &j);
  }

  /* channel kinds: X is [N, C, spatial...] */
  if (r < 2) return nx_error("normonnx.%s: input must be [N, C, ...], got rank %zu", k->op, r);
  size_t n = (size_t)d[0], c = (size_t)d[1], s = prod(d, 2, r);
  if (k->channels >= 0 && (int64_t)c != k->channels)
    return nx_error("normonnx.%s: input has %zu channels on axis 1, attribute channels is %lld", k->op, c,
                    (long long)k->channels);
  TRY(check_param(k, &W, "weight", c));
  TRY(check_param(k, &B, "bias", c));
  if (X.count == 0) return NULL;

  if (k->kind == NX_GROUP || (k->kind == NX_INSTANCE && !k->running_stats)) {
    size_t g = k->kind == NX_GROUP ? (size_t)k->groups : c;
    if (c % g != 0)
      return nx_error("normonnx.GroupNorm: num_groups=%zu does not divide the %zu channels", g, c);
    NxSegJob j = {0};
    j.x = X.data, j.y = y, j.w = W.data, j.b = B.data;
    j.segs = n * g, j.len = (c / g) * s;
    j.mode = NX_AFFINE_CHANNEL, j.block = s, j.cps = g, j.cpseg = c / g;
    j.eps = k->eps, j.act = k->act;
    return run_segments(ctx, &j);
  }
  /* batch (either statistics) and instance with running statistics */
  if (k->running_stats) {
    if (!M.data || !V.data)
      return nx_error("normonnx.%s: running_stats=1 needs the mean and var inputs", k->op);
    TRY(check_param(k, &M, "mean", c));
    TRY(check_param(k, &V, "var", c));
  }
  NxChanJob j = {X.data, y, W.data, B.data, k->running_stats ? M.data : NULL, k->running_stats ? V.data : NULL,
                 n, c, s, k->eps, k->act};
  run_parallel(ctx, chan_task, c, &j);
  return NULL;
}

/* -- the OrtCustomOp tables ---------------------------------------------------------------------- */
static const char* NX_CALL op_name(const OrtCustomOp* op) { return ((const NxOp*)op)->name; }
static const char* NX_CALL op_ep(const OrtCustomOp* op) {
  (void)op;
  return NULL; /* NULL: the CPU execution provider */
}
static int NX_CALL op_type(const OrtCustomOp* op, size_t i) {
  (void)op, (void)i;
  return NX_TYPE_FLOAT;
}
static size_t NX_CALL op_in_count(const OrtCustomOp* op) { return ((const NxOp*)op)->n_inputs; }
static size_t NX_CALL op_out_count(const OrtCustomOp* op) { return ((const NxOp*)op)->n_outputs; }
static int NX_CALL op_in_char(const OrtCustomOp* op, size_t i) {
  (void)op;
  return i == 0 ? NX_INPUT_OUTPUT_REQUIRED : NX_INPUT_OUTPUT_OPTIONAL;
}
static int NX_CALL op_out_char(const OrtCustomOp* op, size_t i) {
  (void)op;
  return i == 0 ? NX_INPUT_OUTPUT_REQUIRED : NX_INPUT_OUTPUT_OPTIONAL;
}
static int NX_CALL op_mem(const OrtCustomOp* op, size_t i) {
  (void)op, (void)i;
  return NX_MEM_TYPE_DEFAULT;
}
static int NX_CALL op_one(const OrtCustomOp* op) {
  (void)op;
  return 1;
}
static int NX_CALL op_zero(const OrtCustomOp* op) {
  (void)op;
  return 0;
}

#define NX_OP(NAME, KIND, NIN, NOUT)                                                                             \
  {                                                                                                        \
    {                                                                                                      \
      NX_ORT_API_VERSION, NULL, op_name, op_ep, op_type, op_in_count, op_type, op_out_count, NULL,       \
          destroy_kernel, op_in_char, op_out_char, op_mem, op_one, op_zero, op_one, op_zero, create_kernel, \
          compute, NULL, op_one, op_one, NULL, NULL, NULL, NULL                                            \
    }                                                                                                      \
    , NAME, KIND, NIN, NOUT                                                                                \
  }

static const NxOp g_ops[] = {
    NX_OP("GroupNorm", NX_GROUP, 3, 1),       NX_OP("LayerNorm", NX_LAYER, 7, 2), NX_OP("RMSNorm", NX_RMS, 4, 2),
    NX_OP("InstanceNorm", NX_INSTANCE, 5, 1), NX_OP("BatchNorm", NX_BATCH, 5, 1),
};

/* -- registration -------------------------------------------------------------------------------- */
static size_t nx_online_cpus(void) {
#if defined(_WIN32)
  const char* env = getenv("NUMBER_OF_PROCESSORS");
  long n = env ? atol(env) : 1;
#elif defined(_SC_NPROCESSORS_ONLN)
  long n = sysconf(_SC_NPROCESSORS_ONLN);
#else
  long n = 1;
#endif
  return n >= 1 ? (size_t)n : 1;
}

static _Atomic(OrtCustomOpDomain*) g_domain;

static const NxMath* pick_math(void) {
#ifdef NX_HAVE_AVX2_BUILD
  const char* force = getenv("NORMONNX_KERNELS_ISA");
  if (force && strcmp(force, "generic") == 0) return &nx_math_generic;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &nx_math_avx2;
#endif
  return &nx_math_generic;
}

NX_EXPORT OrtStatus* NX_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* base) {
  const OrtApi* api = base->GetApi(NX_ORT_API_VERSION);
  if (!api) {
    /* version 1 always exists, and is enough to report the problem */
    const OrtApi* api1 = base->GetApi(1);
    char msg[256];
    snprintf(msg, sizeof msg,
             "normonnx kernels need onnxruntime C API version %d (onnxruntime >= 1.%d); this onnxruntime is %s. "
             "Upgrade onnxruntime, or run without the library (the models' function bodies are used).",
             NX_ORT_API_VERSION, NX_ORT_API_VERSION, base->GetVersionString ? base->GetVersionString() : "?");
    return api1 ? NX_API(api1, NxCreateStatus, NX_SLOT_CreateStatus)(NX_ORT_FAIL, msg) : NULL;
  }
  g_api = api;
  g_math = pick_math();
  g_ncpu = nx_online_cpus();
  OrtCustomOpDomain* domain = atomic_load(&g_domain);
  if (!domain) {
    /* one domain for every session: its ops are immutable; created once even under a race */
    OrtCustomOpDomain* fresh = NULL;
    TRY(API(NxCreateCustomOpDomain, NX_SLOT_CreateCustomOpDomain)(NX_DOMAIN, &fresh));
    for (size_t i = 0; i < sizeof g_ops / sizeof g_ops[0]; ++i) {
      OrtStatus* st = API(NxCustomOpDomainAdd, NX_SLOT_CustomOpDomain_Add)(fresh, &g_ops[i].base);
      if (st) {
        API(NxReleaseCustomOpDomain, NX_SLOT_ReleaseCustomOpDomain)(fresh);
        return st;
      }
    }
    OrtCustomOpDomain* expected = NULL;
    if (atomic_compare_exchange_strong(&g_domain, &expected, fresh)) {
      domain = fresh;
    } else {
      API(NxReleaseCustomOpDomain, NX_SLOT_ReleaseCustomOpDomain)(fresh);
      domain = expected;
    }
  }
  return API(NxAddCustomOpDomain, NX_SLOT_AddCustomOpDomain)(options, domain);
}

/* What this build is, for normonnx.kernels (ctypes): "abi=1;ort_api=17;domain=...;isa=avx2+fma;ops=...". */
NX_EXPORT const char* normonnx_kernels_info(void) {
  static char info[256];
  const NxMath* m = pick_math();
  snprintf(info, sizeof info,
           "abi=%d;ort_api=%d;domain=%s;isa=%s;ops=GroupNorm,LayerNorm,RMSNorm,InstanceNorm,BatchNorm", NX_ABI,
           NX_ORT_API_VERSION, NX_DOMAIN, m->isa);
  return info;
}
