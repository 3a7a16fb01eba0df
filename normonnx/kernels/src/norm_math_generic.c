/* Inner loops for the baseline instruction set of the target (SSE2 on x86-64, NEON on arm64). */
#define NX_ISA_SUFFIX _generic
#define NX_ISA_NAME "generic"
#include "norm_math_impl.h"
