/* The part of the onnxruntime C ABI that normonnx's kernels use, declared here.
 *
 * The onnxruntime Python wheel ships no C headers, so this file declares, from the documented and
 * versioned C API (include/onnxruntime/core/session/onnxruntime_c_api.h), exactly what we call:
 *
 * - OrtApiBase: { GetApi(version), GetVersionString() }, returned to RegisterCustomOps.
 * - OrtApi: a table of function pointers that only ever grows: a function keeps its slot forever
 *   (onnxruntime static_asserts this, e.g. ReleaseCustomOpDomain is slot 101 since version 1).
 *   We address the table by slot number, so we need not declare the ~270 entries we do not use.
 *   GetApi(v) returns NULL when the running onnxruntime is older than API version v, which is how
 *   we refuse to run against a table that lacks a slot we call.
 * - OrtCustomOp: the struct a custom op library fills; its layout is versioned by its `version`
 *   field (onnxruntime reads the V2 callbacks and start/end versions only when version >= 16).
 *
 * Slot numbers, with the API version that introduced the function:
 *   0 CreateStatus, 1 GetErrorCode, 2 GetErrorMessage                                (v1)
 *  26 CreateCustomOpDomain, 27 CustomOpDomain_Add, 28 AddCustomOpDomain              (v1)
 *  51 GetTensorMutableData                                                           (v1)
 *  60 GetTensorElementType, 61 GetDimensionsCount, 62 GetDimensions                 (v1)
 *  64 GetTensorShapeElementCount, 65 GetTensorTypeAndShape                          (v1)
 *  85 KernelInfoGetAttribute_float, 86 _int64, 87 _string                            (v1)
 *  88 KernelContext_GetInputCount, 89 _GetOutputCount, 90 _GetInput, 91 _GetOutput  (v1)
 *  93 ReleaseStatus, 99 ReleaseTensorTypeAndShapeInfo, 101 ReleaseCustomOpDomain    (v1)
 * 163 KernelInfoGetAttributeArray_int64                                              (v8)
 * 249 KernelInfoGetConstantInput_tensor                                              (v15)
 * 274 KernelContext_ParallelFor  (runs a callback on the session's intra-op pool)    (v17)
 */
#ifndef NORMONNX_ORT_ABI_H
#define NORMONNX_ORT_ABI_H

#include <stddef.h>
#include <stdint.h>

#ifdef _WIN32
#define NX_CALL __stdcall
#define NX_EXPORT __declspec(dllexport)
#else
#define NX_CALL
#define NX_EXPORT __attribute__((visibility("default")))
#endif

/* The API version we request: the highest "since" of the slots above (ParallelFor, 1.17). */
#define NX_ORT_API_VERSION 17

typedef struct OrtStatus OrtStatus;
typedef struct OrtApi OrtApi; /* opaque here: used as a table of pointers */
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtValue OrtValue;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;
typedef struct OrtShapeInferContext OrtShapeInferContext;

/* ONNX TensorProto.DataType numbering (the same numbers as onnx.TensorProto). */
typedef enum {
  NX_TYPE_UNDEFINED = 0,
  NX_TYPE_FLOAT = 1,
  NX_TYPE_FLOAT16 = 10,
  NX_TYPE_DOUBLE = 11,
  NX_TYPE_BFLOAT16 = 16
} NxElemType;

typedef enum { NX_ORT_OK = 0, NX_ORT_FAIL = 1, NX_ORT_INVALID_ARGUMENT = 2 } NxErrorCode;
typedef enum { NX_INPUT_OUTPUT_REQUIRED = 0, NX_INPUT_OUTPUT_OPTIONAL = 1 } NxCharacteristic;
typedef enum { NX_MEM_TYPE_DEFAULT = 0 } NxMemType;

typedef struct OrtApiBase {
  const OrtApi*(NX_CALL* GetApi)(uint32_t version);
  const char*(NX_CALL* GetVersionString)(void);
} OrtApiBase;

/* OrtCustomOp, all fields through API version 20 (later fields are read only when version says so). */
typedef struct OrtCustomOp {
  uint32_t version;
  void*(NX_CALL* CreateKernel)(const struct OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info);
  const char*(NX_CALL* GetName)(const struct OrtCustomOp* op);
  const char*(NX_CALL* GetExecutionProviderType)(const struct OrtCustomOp* op);
  int(NX_CALL* GetInputType)(const struct OrtCustomOp* op, size_t index);
  size_t(NX_CALL* GetInputTypeCount)(const struct OrtCustomOp* op);
  int(NX_CALL* GetOutputType)(const struct OrtCustomOp* op, size_t index);
  size_t(NX_CALL* GetOutputTypeCount)(const struct OrtCustomOp* op);
  void(NX_CALL* KernelCompute)(void* kernel, OrtKernelContext* context);
  void(NX_CALL* KernelDestroy)(void* kernel);
  int(NX_CALL* GetInputCharacteristic)(const struct OrtCustomOp* op, size_t index);
  int(NX_CALL* GetOutputCharacteristic)(const struct OrtCustomOp* op, size_t index);
  int(NX_CALL* GetInputMemoryType)(const struct OrtCustomOp* op, size_t index);
  int(NX_CALL* GetVariadicInputMinArity)(const struct OrtCustomOp* op);
  int(NX_CALL* GetVariadicInputHomogeneity)(const struct OrtCustomOp* op);
  int(NX_CALL* GetVariadicOutputMinArity)(const struct OrtCustomOp* op);
  int(NX_CALL* GetVariadicOutputHomogeneity)(const struct OrtCustomOp* op);
  OrtStatus*(NX_CALL* CreateKernelV2)(const struct OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info,
                                      void** kernel);
  OrtStatus*(NX_CALL* KernelComputeV2)(void* kernel, OrtKernelContext* context);
  OrtStatus*(NX_CALL* InferOutputShapeFn)(const struct OrtCustomOp* op, OrtShapeInferContext* ctx);
  int(NX_CALL* GetStartVersion)(const struct OrtCustomOp* op);
  int(NX_CALL* GetEndVersion)(const struct OrtCustomOp* op);
  size_t(NX_CALL* GetMayInplace)(int** input_index, int** output_index);
  void(NX_CALL* ReleaseMayInplace)(int* input_index, int* output_index);
  size_t(NX_CALL* GetAliasMap)(int** input_index, int** output_index);
  void(NX_CALL* ReleaseAliasMap)(int* input_index, int* output_index);
} OrtCustomOp;

/* -- the OrtApi slots we call, with their signatures -------------------------------------------- */
typedef OrtStatus*(NX_CALL* NxCreateStatus)(int code, const char* msg);
typedef const char*(NX_CALL* NxGetErrorMessage)(const OrtStatus* status);
typedef OrtStatus*(NX_CALL* NxCreateCustomOpDomain)(const char* domain, OrtCustomOpDomain** out);
typedef OrtStatus*(NX_CALL* NxCustomOpDomainAdd)(OrtCustomOpDomain* domain, const OrtCustomOp* op);
typedef OrtStatus*(NX_CALL* NxAddCustomOpDomain)(OrtSessionOptions* options, OrtCustomOpDomain* domain);
typedef OrtStatus*(NX_CALL* NxGetTensorMutableData)(OrtValue* value, void** out);
typedef OrtStatus*(NX_CALL* NxGetTensorElementType)(const OrtTensorTypeAndShapeInfo* info, int* out);
typedef OrtStatus*(NX_CALL* NxGetDimensionsCount)(const OrtTensorTypeAndShapeInfo* info, size_t* out);
typedef OrtStatus*(NX_CALL* NxGetDimensions)(const OrtTensorTypeAndShapeInfo* info, int64_t* dims, size_t n);
typedef OrtStatus*(NX_CALL* NxGetTensorShapeElementCount)(const OrtTensorTypeAndShapeInfo* info, size_t* out);
typedef OrtStatus*(NX_CALL* NxGetTensorTypeAndShape)(const OrtValue* value, OrtTensorTypeAndShapeInfo** out);
typedef OrtStatus*(NX_CALL* NxKernelInfoGetAttributeFloat)(const OrtKernelInfo* info, const char* name, float* out);
typedef OrtStatus*(NX_CALL* NxKernelInfoGetAttributeInt64)(const OrtKernelInfo* info, const char* name, int64_t* out);
typedef OrtStatus*(NX_CALL* NxKernelInfoGetAttributeString)(const OrtKernelInfo* info, const char* name, char* out,
                                                            size_t* size);
typedef OrtStatus*(NX_CALL* NxKernelContextGetInputCount)(const OrtKernelContext* ctx, size_t* out);
typedef OrtStatus*(NX_CALL* NxKernelContextGetOutputCount)(const OrtKernelContext* ctx, size_t* out);
typedef OrtStatus*(NX_CALL* NxKernelContextGetInput)(const OrtKernelContext* ctx, size_t index, const OrtValue** out);
typedef OrtStatus*(NX_CALL* NxKernelContextGetOutput)(OrtKernelContext* ctx, size_t index, const int64_t* dims,
                                                      size_t n, OrtValue** out);
typedef void(NX_CALL* NxReleaseStatus)(OrtStatus* status);
typedef void(NX_CALL* NxReleaseTensorTypeAndShapeInfo)(OrtTensorTypeAndShapeInfo* info);
typedef void(NX_CALL* NxReleaseCustomOpDomain)(OrtCustomOpDomain* domain);
typedef OrtStatus*(NX_CALL* NxKernelInfoGetAttributeArrayInt64)(const OrtKernelInfo* info, const char* name,
                                                                int64_t* out, size_t* size);
typedef OrtStatus*(NX_CALL* NxKernelInfoGetConstantInputTensor)(const OrtKernelInfo* info, size_t index,
                                                                int* is_constant, const OrtValue** out);
typedef OrtStatus*(NX_CALL* NxKernelContextParallelFor)(const OrtKernelContext* ctx, void (*fn)(void*, size_t),
                                                        size_t total, size_t num_batch, void* user_data);

enum {
  NX_SLOT_CreateStatus = 0,
  NX_SLOT_GetErrorMessage = 2,
  NX_SLOT_CreateCustomOpDomain = 26,
  NX_SLOT_CustomOpDomain_Add = 27,
  NX_SLOT_AddCustomOpDomain = 28,
  NX_SLOT_GetTensorMutableData = 51,
  NX_SLOT_GetTensorElementType = 60,
  NX_SLOT_GetDimensionsCount = 61,
  NX_SLOT_GetDimensions = 62,
  NX_SLOT_GetTensorShapeElementCount = 64,
  NX_SLOT_GetTensorTypeAndShape = 65,
  NX_SLOT_KernelInfoGetAttribute_float = 85,
  NX_SLOT_KernelInfoGetAttribute_int64 = 86,
  NX_SLOT_KernelInfoGetAttribute_string = 87,
  NX_SLOT_KernelContext_GetInputCount = 88,
  NX_SLOT_KernelContext_GetOutputCount = 89,
  NX_SLOT_KernelContext_GetInput = 90,
  NX_SLOT_KernelContext_GetOutput = 91,
  NX_SLOT_ReleaseStatus = 93,
  NX_SLOT_ReleaseTensorTypeAndShapeInfo = 99,
  NX_SLOT_ReleaseCustomOpDomain = 101,
  NX_SLOT_KernelInfoGetAttributeArray_int64 = 163,
  NX_SLOT_KernelInfoGetConstantInput_tensor = 249,
  NX_SLOT_KernelContext_ParallelFor = 274
};

/* NX_API(api, NxType, NX_SLOT_Name): the function in that slot of the table, typed. The table is
 * read as an array of generic function pointers (function-to-function pointer casts are ISO C). */
typedef void (*NxAnyFn)(void);
#define NX_API(api, type, slot) ((type)(((const NxAnyFn*)(const void*)(api))[slot]))

#endif
