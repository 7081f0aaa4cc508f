// The C API (include/bnorm/bnorm.h) over the engine API: translation of structs and enums, and
// the statuses copied out. The engine API throws nothing; creating a plan's handle may fail to
// allocate, which is reported, not thrown.
#include "bnorm/bnorm.h"

#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <limits>
#include <new>
#include <utility>

#include "bnorm/distributed.hpp"
#include "bnorm/fold.hpp"
#include "bnorm/plan.hpp"
#include "bnorm/version.hpp"

struct bnorm_plan_impl {
  bnorm::plan plan;
};

static_assert(BNORM_ISA_AVX512BF16 == static_cast<int>(bnorm::isa::avx512bf16),
              "the C ISAs are the engine's");
static_assert(BNORM_F32 == static_cast<int>(bnorm::dtype::f32) &&
                  BNORM_F64 == static_cast<int>(bnorm::dtype::f64) &&
                  BNORM_BF16 == static_cast<int>(bnorm::dtype::bf16) &&
                  BNORM_F16 == static_cast<int>(bnorm::dtype::f16),
              "the C dtypes are the engine's");
static_assert(BNORM_WEIGHT_OUTPUT_FIRST == static_cast<int>(bnorm::weight_layout::output_first) &&
                  BNORM_WEIGHT_OUTPUT_LAST == static_cast<int>(bnorm::weight_layout::output_last) &&
                  BNORM_WEIGHT_TRANSPOSED == static_cast<int>(bnorm::weight_layout::transposed),
              "the C weight layouts are the engine's");

namespace {

bnorm_status_code report(const bnorm::status& s, bnorm_status* out) noexcept {
  const auto code = static_cast<bnorm_status_code>(s.code());
  if (out != nullptr) {
    out->code = code;
    std::snprintf(out->message, sizeof(out->message), "%s", s.message());
  }
  return code;
}

bnorm_status_code refuse(const char* message, bnorm_status* out) noexcept {
  return report(bnorm::status(bnorm::status_code::invalid_argument, message), out);
}

/// A struct the caller's header sized: this library knows `known` bytes of it, and reads
/// `older` bytes (an earlier C API's size) too where that is not 0.
bool size_fits(const char* name, std::size_t given, std::size_t known, bnorm_status* out,
               bnorm_status_code* code, std::size_t older = 0) noexcept {
  if (given == known || (older != 0 && given == older)) return true;
  char sizes[48];
  std::snprintf(sizes, sizeof sizes, older != 0 ? "%zu or %zu (C API 2's)" : "%zu", known, older);
  *code = report(bnorm::status::failure(bnorm::status_code::invalid_argument,
                                        "%s.struct_size: expected %s (this library's %s, as "
                                        "its _init function sets it), got %zu",
                                        name, sizes, name, given),
                 out);
  return false;
}

/// The engine's enum E of a C enum field, read as the int the C caller stored: C++ gives the C
/// enums without negative enumerators the range [0, 2^31), and loading another value through
/// their type (a -1 from C) would be undefined behaviour; E (an enum class over int) holds any.
template <class E, class CEnum>
E enum_of(const CEnum& field) noexcept {
  static_assert(sizeof(CEnum) == sizeof(int), "a C enum spans an int (its _MAX_ENUM value)");
  int value = 0;
  std::memcpy(&value, &field, sizeof value);
  return static_cast<E>(value);
}

/// A C shape: `rank` dimensions of the array `shape_name` of `capacity`; more are refused,
/// with the ranks the call takes (`expected`: the engine's own rule, which refuses the others
/// below the capacity in the same words).
bool rank_fits(const char* shape_name, std::size_t rank, std::size_t capacity, const char* expected,
               bnorm_status* out, bnorm_status_code* code) noexcept {
  if (rank <= capacity) return true;
  *code = report(bnorm::status::failure(bnorm::status_code::invalid_argument,
                                        "problem.rank: expected %s dimensions in problem.%s, got "
                                        "%zu",
                                        expected, shape_name, rank),
                 out);
  return false;
}

bnorm::channel_input in(const bnorm_channel_input& b) noexcept {
  return {b.data, b.size};
}
bnorm::channel_output out(const bnorm_channel_output& b) noexcept {
  return {b.data, b.size};
}

/// The size an args struct had in C API 2, before version 3 added fields at its end; its own
/// size for the structs that have not grown.
template <class Args>
std::size_t version_2_size() noexcept {
  return sizeof(Args);
}
template <>
std::size_t version_2_size<bnorm_training_args>() noexcept {
  return offsetof(bnorm_training_args, batch_mean_residual);
}
template <>
std::size_t version_2_size<bnorm_backward_args>() noexcept {
  return offsetof(bnorm_backward_args, mean_residual);
}

/// Runs `call` on the plan's C++ object and the caller's args once the handle and the args'
/// size are checked. Args of C API 2's size (code built against that header) are read as far
/// as they go, the fields added since then empty: nothing is read past the caller's struct.
template <class Args, class Call>
bnorm_status_code run(bnorm_plan plan, const Args* args, const char* name, bnorm_status* status,
                      const Call& call) noexcept {
  if (plan == nullptr)
    return refuse("plan: expected a plan from bnorm_plan_create, got NULL", status);
  if (args == nullptr) {
    return report(bnorm::status::failure(bnorm::status_code::invalid_argument,
                                         "args: expected a %s, got NULL", name),
                  status);
  }
  bnorm_status_code code = BNORM_OK;
  const std::size_t given = args->struct_size;
  const std::size_t older = version_2_size<Args>() != sizeof(Args) ? version_2_size<Args>() : 0;
  if (!size_fits(name, given, sizeof(Args), status, &code, older)) return code;
  Args full{};
  std::memcpy(&full, args, given);
  full.struct_size = sizeof(Args);
  return report(call(plan->plan, full), status);
}

/// The C API's argument structs as the C++ API takes them.
bnorm::training_args training_of(const bnorm_training_args& args) noexcept {
  bnorm::training_args a;
  a.src = args.src;
  a.dst = args.dst;
  a.scale = in(args.scale);
  a.shift = in(args.shift);
  a.batch_mean = out(args.batch_mean);
  a.batch_mean_residual = out(args.batch_mean_residual);
  a.batch_inv_std = out(args.batch_inv_std);
  a.running_mean = out(args.running_mean);
  a.running_var = out(args.running_var);
  a.num_batches_tracked = args.num_batches_tracked;
  a.residual = args.residual;
  a.scratch = args.scratch;
  a.scratch_size = args.scratch_size;
  return a;
}

bnorm::backward_args backward_of(const bnorm_backward_args& args) noexcept {
  bnorm::backward_args a;
  a.src = args.src;
  a.diff_dst = args.diff_dst;
  a.diff_src = args.diff_src;
  a.scale = in(args.scale);
  a.mean = in(args.mean);
  a.mean_residual = in(args.mean_residual);
  a.inv_std = in(args.inv_std);
  a.var = in(args.var);
  a.diff_scale = out(args.diff_scale);
  a.diff_shift = out(args.diff_shift);
  a.dst = args.dst;
  a.diff_residual = args.diff_residual;
  a.scratch = args.scratch;
  a.scratch_size = args.scratch_size;
  return a;
}

}  // namespace

// Only the bnorm_ functions of bnorm.h in here: whatever this block defines gets C linkage, an
// unprefixed global name that an engine's own function of that name would clash with (or, in a
// shared library, replace: `bnorm_exports_only_its_own_names`).
extern "C" {

const char* bnorm_version(void) {
  return BNORM_VERSION_STRING;
}

int bnorm_c_api_version(void) {
  return BNORM_C_API_VERSION;
}

void bnorm_problem_init(bnorm_problem* problem) {
  if (problem == nullptr) return;
  std::memset(problem, 0, sizeof(*problem));
  problem->struct_size = sizeof(*problem);
  const bnorm::problem defaults;
  problem->layout = static_cast<bnorm_layout>(defaults.layout);
  problem->dtype = static_cast<bnorm_dtype>(defaults.dtype);
  problem->epsilon = defaults.epsilon;
}

void bnorm_plan_options_init(bnorm_plan_options* options) {
  if (options == nullptr) return;
  std::memset(options, 0, sizeof(*options));
  options->struct_size = sizeof(*options);
  const bnorm::plan_options defaults;
  options->update_running_stats = defaults.update_running_stats;
  options->convention = static_cast<bnorm_momentum_convention>(defaults.convention);
  options->momentum = std::numeric_limits<double>::quiet_NaN();  // the convention's default
  options->cumulative_average = defaults.cumulative_average;
  options->max_threads = defaults.max_threads;
  options->max_isa = BNORM_ISA_ANY;
  options->stores = static_cast<bnorm_store_policy>(defaults.stores);
  options->activation = static_cast<bnorm_activation>(defaults.activation);
  options->clamp_min = defaults.clamp_min;
  options->clamp_max = defaults.clamp_max;
}

void bnorm_training_args_init(bnorm_training_args* args) {
  if (args == nullptr) return;
  std::memset(args, 0, sizeof(*args));
  args->struct_size = sizeof(*args);
}

void bnorm_inference_args_init(bnorm_inference_args* args) {
  if (args == nullptr) return;
  std::memset(args, 0, sizeof(*args));
  args->struct_size = sizeof(*args);
}

void bnorm_backward_args_init(bnorm_backward_args* args) {
  if (args == nullptr) return;
  std::memset(args, 0, sizeof(*args));
  args->struct_size = sizeof(*args);
}

bnorm_status_code bnorm_plan_create(bnorm_plan* plan, const bnorm_problem* problem,
                                    const bnorm_plan_options* options, bnorm_status* status) {
  if (plan == nullptr) return refuse("plan: expected a bnorm_plan to fill, got NULL", status);
  if (problem == nullptr) return refuse("problem: expected a bnorm_problem, got NULL", status);
  bnorm_status_code code = BNORM_OK;
  if (!size_fits("bnorm_problem", problem->struct_size, sizeof(bnorm_problem), status, &code)) {
    return code;
  }
  bnorm_plan_options defaults;
  bnorm_plan_options_init(&defaults);
  const bnorm_plan_options& o = options != nullptr ? *options : defaults;
  if (!size_fits("bnorm_plan_options", o.struct_size, sizeof(bnorm_plan_options), status, &code)) {
    return code;
  }
  if (!rank_fits("shape", problem->rank, std::size(problem->shape), "2 to 5 (N, C[, D][, H][, W])",
                 status, &code)) {
    return code;
  }
  bnorm::problem prob;
  prob.shape = bnorm::tensor_shape(problem->shape, problem->rank);
  prob.layout = enum_of<bnorm::layout>(problem->layout);
  prob.dtype = enum_of<bnorm::dtype>(problem->dtype);
  prob.epsilon = problem->epsilon;
  for (const auto& [name, value] :
       {std::pair{"options.update_running_stats", o.update_running_stats},
        {"options.cumulative_average", o.cumulative_average}}) {
    if (value != 0 && value != 1) {
      return report(bnorm::status::failure(bnorm::status_code::invalid_argument,
                                           "%s: expected 0 or 1, got %d", name, value),
                    status);
    }
  }
  bnorm::plan_options opts;
  opts.update_running_stats = o.update_running_stats != 0;
  opts.convention = enum_of<bnorm::momentum_convention>(o.convention);
  if (!std::isnan(o.momentum)) opts.momentum = o.momentum;
  opts.cumulative_average = o.cumulative_average != 0;
  opts.max_threads = o.max_threads;
  if (o.max_isa != BNORM_ISA_ANY) opts.max_isa = enum_of<bnorm::isa>(o.max_isa);
  opts.stores = enum_of<bnorm::store_policy>(o.stores);
  opts.activation = enum_of<bnorm::activation>(o.activation);
  opts.clamp_min = o.clamp_min;
  opts.clamp_max = o.clamp_max;
  auto* handle = new (std::nothrow) bnorm_plan_impl;
  if (handle == nullptr) {
    return report(bnorm::status(bnorm::status_code::out_of_memory,
                                "bnorm_plan_create: could not allocate the plan's handle"),
                  status);
  }
  const bnorm::status s = bnorm::make_plan(prob, opts, &handle->plan);
  if (!s) {
    delete handle;
    return report(s, status);
  }
  *plan = handle;
  return report(s, status);
}

void bnorm_plan_destroy(bnorm_plan plan) {
  delete plan;
}

bnorm_isa bnorm_plan_isa(bnorm_plan plan) {
  return plan != nullptr ? static_cast<bnorm_isa>(plan->plan.isa()) : BNORM_ISA_ANY;
}

const char* bnorm_plan_describe(bnorm_plan plan) {
  return plan != nullptr ? plan->plan.describe() : "";
}

size_t bnorm_plan_training_scratch_size(bnorm_plan plan) {
  return plan != nullptr ? plan->plan.training_scratch_size() : 0;
}

size_t bnorm_plan_inference_scratch_size(bnorm_plan plan) {
  return plan != nullptr ? plan->plan.inference_scratch_size() : 0;
}

size_t bnorm_plan_backward_scratch_size(bnorm_plan plan) {
  return plan != nullptr ? plan->plan.backward_scratch_size() : 0;
}

bnorm_status_code bnorm_forward_training(bnorm_plan plan, const bnorm_training_args* args,
                                         bnorm_status* status) {
  return run(plan, args, "bnorm_training_args", status,
             [](const bnorm::plan& p, const bnorm_training_args& a) {
               return p.forward_training(training_of(a));
             });
}

bnorm_status_code bnorm_forward_inference(bnorm_plan plan, const bnorm_inference_args* args,
                                          bnorm_status* status) {
  return run(plan, args, "bnorm_inference_args", status,
             [](const bnorm::plan& p, const bnorm_inference_args& given) {
               bnorm::inference_args a;
               a.src = given.src;
               a.dst = given.dst;
               a.scale = in(given.scale);
               a.shift = in(given.shift);
               a.mean = in(given.mean);
               a.var = in(given.var);
               a.residual = given.residual;
               a.scratch = given.scratch;
               a.scratch_size = given.scratch_size;
               return p.forward_inference(a);
             });
}

bnorm_status_code bnorm_backward_training(bnorm_plan plan, const bnorm_backward_args* args,
                                          bnorm_status* status) {
  return run(plan, args, "bnorm_backward_args", status,
             [](const bnorm::plan& p, const bnorm_backward_args& a) {
               return p.backward_training(backward_of(a));
             });
}

bnorm_status_code bnorm_backward_frozen(bnorm_plan plan, const bnorm_backward_args* args,
                                        bnorm_status* status) {
  return run(plan, args, "bnorm_backward_args", status,
             [](const bnorm::plan& p, const bnorm_backward_args& a) {
               return p.backward_frozen(backward_of(a));
             });
}

size_t bnorm_statistics_exchange_size(size_t channels) {
  return bnorm::statistics_exchange_size(channels);
}

size_t bnorm_gradient_exchange_size(size_t channels) {
  return bnorm::gradient_exchange_size(channels);
}

bnorm_status_code bnorm_local_statistics(bnorm_plan plan, const bnorm_training_args* args,
                                         double* exchange, size_t exchange_size,
                                         bnorm_status* status) {
  return run(plan, args, "bnorm_training_args", status,
             [&](const bnorm::plan& p, const bnorm_training_args& a) {
               return p.local_statistics(training_of(a), exchange, exchange_size);
             });
}

bnorm_status_code bnorm_merge_statistics(size_t channels, const double* blocks, size_t ranks,
                                         double* merged, size_t merged_size, bnorm_status* status) {
  return report(bnorm::merge_statistics(channels, blocks, ranks, merged, merged_size), status);
}

bnorm_status_code bnorm_forward_training_merged(bnorm_plan plan, const bnorm_training_args* args,
                                                const double* merged, size_t merged_size,
                                                bnorm_status* status) {
  return run(plan, args, "bnorm_training_args", status,
             [&](const bnorm::plan& p, const bnorm_training_args& a) {
               return p.forward_training_merged(training_of(a), merged, merged_size);
             });
}

bnorm_status_code bnorm_local_gradient_sums(bnorm_plan plan, const bnorm_backward_args* args,
                                            double* exchange, size_t exchange_size,
                                            bnorm_status* status) {
  return run(plan, args, "bnorm_backward_args", status,
             [&](const bnorm::plan& p, const bnorm_backward_args& a) {
               return p.local_gradient_sums(backward_of(a), exchange, exchange_size);
             });
}

bnorm_status_code bnorm_sum_gradient_exchanges(size_t channels, const double* blocks, size_t ranks,
                                               double* summed, size_t summed_size,
                                               bnorm_status* status) {
  return report(bnorm::sum_gradient_exchanges(channels, blocks, ranks, summed, summed_size),
                status);
}

bnorm_status_code bnorm_backward_training_merged(bnorm_plan plan, const bnorm_backward_args* args,
                                                 const double* local, const double* summed,
                                                 size_t exchange_size, bnorm_status* status) {
  return run(plan, args, "bnorm_backward_args", status,
             [&](const bnorm::plan& p, const bnorm_backward_args& a) {
               return p.backward_training_merged(backward_of(a), local, summed, exchange_size);
             });
}

void bnorm_fold_problem_init(bnorm_fold_problem* problem) {
  if (problem == nullptr) return;
  std::memset(problem, 0, sizeof(*problem));
  problem->struct_size = sizeof(*problem);
  const bnorm::fold_problem defaults;
  problem->layout = static_cast<bnorm_weight_layout>(defaults.layout);
  problem->groups = defaults.groups;
  problem->dtype = static_cast<bnorm_dtype>(defaults.dtype);
  problem->epsilon = defaults.epsilon;
}

void bnorm_fold_args_init(bnorm_fold_args* args) {
  if (args == nullptr) return;
  std::memset(args, 0, sizeof(*args));
  args->struct_size = sizeof(*args);
}

bnorm_status_code bnorm_fold_into_layer(const bnorm_fold_problem* problem,
                                        const bnorm_fold_args* args, bnorm_status* status) {
  if (problem == nullptr) {
    return refuse("problem: expected a bnorm_fold_problem, got NULL", status);
  }
  if (args == nullptr) return refuse("args: expected a bnorm_fold_args, got NULL", status);
  bnorm_status_code code = BNORM_OK;
  if (!size_fits("bnorm_fold_problem", problem->struct_size, sizeof(bnorm_fold_problem), status,
                 &code) ||
      !size_fits("bnorm_fold_args", args->struct_size, sizeof(bnorm_fold_args), status, &code)) {
    return code;
  }
  if (!rank_fits("weight_shape", problem->rank, std::size(problem->weight_shape),
                 "2 to 8 (linear [out, in], convolutions [O, I, k...])", status, &code)) {
    return code;
  }
  bnorm::fold_problem prob;
  prob.layout = enum_of<bnorm::weight_layout>(problem->layout);
  prob.weight_shape = bnorm::tensor_shape(problem->weight_shape, problem->rank);
  prob.groups = problem->groups;
  prob.dtype = enum_of<bnorm::dtype>(problem->dtype);
  prob.epsilon = problem->epsilon;
  bnorm::fold_args a;
  a.weight = args->weight;
  a.folded_weight = args->folded_weight;
  a.bias = in(args->bias);
  a.folded_bias = out(args->folded_bias);
  a.scale = in(args->scale);
  a.shift = in(args->shift);
  a.mean = in(args->mean);
  a.var = in(args->var);
  return report(bnorm::fold_into_layer(prob, a), status);
}

}  // extern "C"
