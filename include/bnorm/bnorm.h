/* bnorm's C API (C99): the engine API for engines that are not C++. Plans are opaque handles;
 * every call returns a status code, with the message, when asked, in a bnorm_status. Nothing
 * crosses the boundary as an exception.
 *
 *   bnorm_problem prob;
 *   bnorm_problem_init(&prob);                 // defaults, and prob.struct_size
 *   prob.rank = 4;  prob.shape[0] = 32;  prob.shape[1] = 64;  prob.shape[2] = prob.shape[3] = 56;
 *   bnorm_plan_options opts;
 *   bnorm_plan_options_init(&opts);
 *   bnorm_plan plan = NULL;
 *   bnorm_status status;
 *   if (bnorm_plan_create(&plan, &prob, &opts, &status) != BNORM_OK) {
 *     puts(status.message);                    // plan stays NULL
 *     return 1;
 *   }
 *   bnorm_inference_args args;
 *   bnorm_inference_args_init(&args);
 *   args.src = x;  args.dst = y;
 *   args.mean.data = running_mean;  args.mean.size = 64;  ...
 *   bnorm_forward_inference(plan, &args, &status);
 *   bnorm_plan_destroy(plan);
 *
 * The semantics are the C++ engine API's (bnorm/plan.hpp): the same buffer contract, the same
 * checks before anything is written, the same results. Structs that may grow carry their own
 * size (struct_size, set by their _init function): a library older than the header refuses a
 * struct larger than it knows, naming it.
 */
#ifndef BNORM_BNORM_H
#define BNORM_BNORM_H

#include <stddef.h>
#include <stdint.h>

#include "bnorm/export.h"

#ifdef __cplusplus
extern "C" {
#endif

/** The version of this C API: bumped when a struct grows or a call is added. */
/* 2: folding and the distributed steps; 3: mean residuals; 4: momentum NaN, the convention's */
#define BNORM_C_API_VERSION 4

/** The library's version, "0.1.0", and the C API version it implements. */
BNORM_API const char* bnorm_version(void);
BNORM_API int bnorm_c_api_version(void);

/** The values of bnorm::status_code. */
typedef enum bnorm_status_code {
  BNORM_OK = 0,
  BNORM_INVALID_ARGUMENT = 1, /**< a bad problem, option or buffer: the message names it */
  BNORM_UNSUPPORTED = 2,      /**< a valid request this build or CPU cannot serve */
  BNORM_OUT_OF_MEMORY = 3,
  BNORM_INTERNAL_ERROR = 4,
  BNORM_STATUS_CODE_MAX_ENUM = 0x7FFFFFFF
} bnorm_status_code;

/** A call's code and message ("" when ok). Optional everywhere: pass NULL to skip it. */
typedef struct bnorm_status {
  bnorm_status_code code;
  char message[256];
} bnorm_status;

/* Every enum spans an int (its _MAX_ENUM value): a value outside the named ones is read as it
 * is, and refused by the call with its name, not undefined behaviour. */
typedef enum bnorm_layout {
  BNORM_CHANNELS_FIRST = 0,
  BNORM_CHANNELS_LAST = 1,
  BNORM_LAYOUT_MAX_ENUM = 0x7FFFFFFF
} bnorm_layout;
/* BNORM_BF16, BNORM_F16: bfloat16 and IEEE binary16 data with float32 per-channel buffers. */
typedef enum bnorm_dtype {
  BNORM_F32 = 0,
  BNORM_F64 = 1,
  BNORM_BF16 = 2,
  BNORM_F16 = 3,
  BNORM_DTYPE_MAX_ENUM = 0x7FFFFFFF
} bnorm_dtype;
typedef enum bnorm_isa {
  BNORM_ISA_ANY = -1, /**< as max_isa: no cap */
  BNORM_ISA_SSE2 = 0,
  BNORM_ISA_AVX2 = 1,
  BNORM_ISA_AVX512F = 2,
  BNORM_ISA_NEON64 = 3,
  BNORM_ISA_AVX512BF16 = 4,
  BNORM_ISA_MAX_ENUM = 0x7FFFFFFF
} bnorm_isa;
typedef enum bnorm_momentum_convention {
  BNORM_CONVENTION_PYTORCH = 0,
  BNORM_CONVENTION_MINDSPORE = 1,
  BNORM_CONVENTION_ONNX = 2,
  BNORM_CONVENTION_MAX_ENUM = 0x7FFFFFFF
} bnorm_momentum_convention;
typedef enum bnorm_store_policy {
  BNORM_STORES_AUTOMATIC = 0,
  BNORM_STORES_CACHED = 1,
  BNORM_STORES_STREAMING = 2,
  BNORM_STORES_MAX_ENUM = 0x7FFFFFFF
} bnorm_store_policy;
typedef enum bnorm_activation {
  BNORM_ACTIVATION_NONE = 0,
  BNORM_ACTIVATION_RELU = 1,
  BNORM_ACTIVATION_CLAMP = 2,
  BNORM_ACTIVATION_ADD_RELU = 3,
  BNORM_ACTIVATION_MAX_ENUM = 0x7FFFFFFF
} bnorm_activation;

/** Shape (N, C, spatial...), layout, element type, epsilon. */
typedef struct bnorm_problem {
  size_t struct_size;
  size_t rank;
  int64_t shape[8];
  bnorm_layout layout;
  bnorm_dtype dtype;
  double epsilon;
} bnorm_problem;

/** As bnorm::plan_options; booleans are ints (0 or 1). */
typedef struct bnorm_plan_options {
  size_t struct_size;
  int update_running_stats;
  bnorm_momentum_convention convention;
  /* In the convention's meaning; NaN (bnorm_plan_options_init's value) takes the convention's
   * default, PyTorch's 0.1, MindSpore's and ONNX's 0.9, as the C++ API's unset momentum (C API 4;
   * before, init wrote 0.1). */
  double momentum;
  int cumulative_average;
  int max_threads;
  bnorm_isa max_isa;
  bnorm_store_policy stores;
  bnorm_activation activation;
  double clamp_min;
  double clamp_max;
} bnorm_plan_options;

/** Per-channel buffers: `size` values, C of them, of the plan's dtype (float32 for BNORM_BF16
 * and BNORM_F16 data); {NULL, 0} to omit. */
typedef struct bnorm_channel_input {
  const void* data;
  size_t size;
} bnorm_channel_input;
typedef struct bnorm_channel_output {
  void* data;
  size_t size;
} bnorm_channel_output;

typedef struct bnorm_training_args {
  size_t struct_size;
  const void* src;
  void* dst;
  bnorm_channel_input scale, shift;
  bnorm_channel_output batch_mean, batch_inv_std, running_mean, running_var;
  int64_t* num_batches_tracked;
  const void* residual;
  void* scratch;
  size_t scratch_size;
  /* The mean less batch_mean, for bnorm_backward_args.mean_residual (C API 3). */
  bnorm_channel_output batch_mean_residual;
} bnorm_training_args;

typedef struct bnorm_inference_args {
  size_t struct_size;
  const void* src;
  void* dst;
  bnorm_channel_input scale, shift, mean, var;
  const void* residual;
  void* scratch;
  size_t scratch_size;
} bnorm_inference_args;

typedef struct bnorm_backward_args {
  size_t struct_size;
  const void* src;
  const void* diff_dst;
  void* diff_src;
  bnorm_channel_input scale, mean, inv_std, var;
  bnorm_channel_output diff_scale, diff_shift;
  const void* dst;
  void* diff_residual;
  void* scratch;
  size_t scratch_size;
  /* The forward's batch_mean_residual: dx the gradient of the forward itself (C API 3). */
  bnorm_channel_input mean_residual;
} bnorm_backward_args;

/** Defaults of the C++ API (PyTorch convention, momentum NaN: the convention's default, so
 * that a convention set alone keeps its framework's, ...), struct_size set; a
 * problem's rank 0 and shape zeros, f32, channels-first, epsilon 1e-5; args all empty. */
BNORM_API void bnorm_problem_init(bnorm_problem* problem);
BNORM_API void bnorm_plan_options_init(bnorm_plan_options* options);
BNORM_API void bnorm_training_args_init(bnorm_training_args* args);
BNORM_API void bnorm_inference_args_init(bnorm_inference_args* args);
BNORM_API void bnorm_backward_args_init(bnorm_backward_args* args);

/** An opaque, immutable plan; safe to execute from many threads at once. */
typedef struct bnorm_plan_impl* bnorm_plan;

/** Validates the problem and options into *plan (left untouched on failure); options NULL
 * means the defaults. */
BNORM_API bnorm_status_code bnorm_plan_create(bnorm_plan* plan, const bnorm_problem* problem,
                                              const bnorm_plan_options* options,
                                              bnorm_status* status);
/** Frees a plan; NULL is a no-op. Each plan is freed once, after its last call: a freed handle,
 * like freed memory, is invalid (freeing it again is undefined behaviour, as with free). */
BNORM_API void bnorm_plan_destroy(bnorm_plan plan);

/** What a plan runs: its ISA, its one-line description (owned by the plan), and the scratch
 * its calls take from the caller (0: none). A NULL plan: BNORM_ISA_ANY, "", 0. */
BNORM_API bnorm_isa bnorm_plan_isa(bnorm_plan plan);
BNORM_API const char* bnorm_plan_describe(bnorm_plan plan);
BNORM_API size_t bnorm_plan_training_scratch_size(bnorm_plan plan);
BNORM_API size_t bnorm_plan_inference_scratch_size(bnorm_plan plan);
BNORM_API size_t bnorm_plan_backward_scratch_size(bnorm_plan plan);

/** The four calls of bnorm::plan. */
BNORM_API bnorm_status_code bnorm_forward_training(bnorm_plan plan, const bnorm_training_args* args,
                                                   bnorm_status* status);
BNORM_API bnorm_status_code bnorm_forward_inference(bnorm_plan plan,
                                                    const bnorm_inference_args* args,
                                                    bnorm_status* status);
BNORM_API bnorm_status_code bnorm_backward_training(bnorm_plan plan,
                                                    const bnorm_backward_args* args,
                                                    bnorm_status* status);
BNORM_API bnorm_status_code bnorm_backward_frozen(bnorm_plan plan, const bnorm_backward_args* args,
                                                  bnorm_status* status);

/* Distributed training without a communicator (bnorm/distributed.hpp), for an engine's own
 * transport. Forward, on every rank r of R: bnorm_local_statistics into exchange + r·S
 * (S = bnorm_statistics_exchange_size(C)), all-gather the R blocks in rank order,
 * bnorm_merge_statistics, bnorm_forward_training_merged. Backward (args.mean and args.inv_std
 * or args.var: the merged ones the forward saved): bnorm_local_gradient_sums into sums + r·G
 * (G = bnorm_gradient_exchange_size(C)), all-gather, bnorm_sum_gradient_exchanges,
 * bnorm_backward_training_merged. Blocks are float64: a rank's count of values per channel,
 * then C values of each per-channel quantity. The sizes are 0 where 1 + 2C does not fit a
 * size_t (no plan has so many channels). */
BNORM_API size_t bnorm_statistics_exchange_size(size_t channels);
BNORM_API size_t bnorm_gradient_exchange_size(size_t channels);
BNORM_API bnorm_status_code bnorm_local_statistics(bnorm_plan plan, const bnorm_training_args* args,
                                                   double* exchange, size_t exchange_size,
                                                   bnorm_status* status);
BNORM_API bnorm_status_code bnorm_merge_statistics(size_t channels, const double* blocks,
                                                   size_t ranks, double* merged, size_t merged_size,
                                                   bnorm_status* status);
BNORM_API bnorm_status_code bnorm_forward_training_merged(bnorm_plan plan,
                                                          const bnorm_training_args* args,
                                                          const double* merged, size_t merged_size,
                                                          bnorm_status* status);
BNORM_API bnorm_status_code bnorm_local_gradient_sums(bnorm_plan plan,
                                                      const bnorm_backward_args* args,
                                                      double* exchange, size_t exchange_size,
                                                      bnorm_status* status);
BNORM_API bnorm_status_code bnorm_sum_gradient_exchanges(size_t channels, const double* blocks,
                                                         size_t ranks, double* summed,
                                                         size_t summed_size, bnorm_status* status);
BNORM_API bnorm_status_code bnorm_backward_training_merged(
    bnorm_plan plan, const bnorm_backward_args* args, const double* local, const double* summed,
    size_t exchange_size, bnorm_status* status);

/* Folding an inference batch norm into the layer before it (bnorm/fold.hpp). */
typedef enum bnorm_weight_layout {
  BNORM_WEIGHT_OUTPUT_FIRST = 0, /**< linear [out, in]; OIHW, OHWI, ...; grouped, depthwise */
  BNORM_WEIGHT_OUTPUT_LAST = 1,  /**< HWIO; depthwise 1HWO */
  BNORM_WEIGHT_TRANSPOSED = 2,   /**< a transposed convolution's [I, O/groups, k...] */
  BNORM_WEIGHT_LAYOUT_MAX_ENUM = 0x7FFFFFFF
} bnorm_weight_layout;

/** As bnorm::fold_problem: the layer's weight shape (rank 2 to 8), layout, groups and dtype,
 * and the batch norm's epsilon. */
typedef struct bnorm_fold_problem {
  size_t struct_size;
  bnorm_weight_layout layout;
  size_t rank;
  int64_t weight_shape[8];
  int64_t groups;
  bnorm_dtype dtype;
  double epsilon;
} bnorm_fold_problem;

/** As bnorm::fold_args: C = the layer's output channels; the layer's bias and folded bias of
 * its dtype, the batch norm's values of its parameter type (float32 for BNORM_BF16 and
 * BNORM_F16). */
typedef struct bnorm_fold_args {
  size_t struct_size;
  const void* weight;
  void* folded_weight; /**< may equal weight (in place) */
  bnorm_channel_input bias;
  bnorm_channel_output folded_bias; /**< may equal bias (in place) */
  bnorm_channel_input scale, shift, mean, var;
} bnorm_fold_args;

/** Defaults (output_first, rank 0, groups 1, f32, epsilon 1e-5; args empty), struct_size set. */
BNORM_API void bnorm_fold_problem_init(bnorm_fold_problem* problem);
BNORM_API void bnorm_fold_args_init(bnorm_fold_args* args);
/** bnorm::fold_into_layer: the folded weight and bias, or a refusal before anything is
 * written. */
BNORM_API bnorm_status_code bnorm_fold_into_layer(const bnorm_fold_problem* problem,
                                                  const bnorm_fold_args* args,
                                                  bnorm_status* status);

#ifdef __cplusplus
}
#endif

#endif /* BNORM_BNORM_H */
