/* The C API, compiled as C99: every call, its results against values computed here, and its
 * errors (code, message naming the parameter, nothing written). */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bnorm/bnorm.h"

static int failures = 0;

#define CHECK(condition)                                                            \
  do {                                                                              \
    if (!(condition)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #condition); \
      ++failures;                                                                   \
    }                                                                               \
  } while (0)

/* The status carries `code` and a message that contains `part`. */
static void expect_error(bnorm_status_code got, const bnorm_status* status, bnorm_status_code code,
                         const char* part) {
  CHECK(got == code);
  CHECK(status->code == code);
  if (strstr(status->message, part) == NULL) {
    fprintf(stderr, "message \"%s\" lacks \"%s\"\n", status->message, part);
    ++failures;
  }
}

/* The seed example: (2, 4), channels-first, per-channel values {0.7, 0.5}, {0.5, 0.4}, ... */
static const float seed_x[8] = {0.7f, 0.5f, 0.5f, 0.6f, 0.5f, 0.4f, 0.6f, 0.9f};

static bnorm_plan seed_plan(bnorm_activation activation) {
  bnorm_problem prob;
  bnorm_problem_init(&prob);
  prob.rank = 2;
  prob.shape[0] = 2;
  prob.shape[1] = 4;
  bnorm_plan_options opts;
  bnorm_plan_options_init(&opts);
  opts.activation = activation;
  bnorm_plan plan = NULL;
  bnorm_status status;
  CHECK(bnorm_plan_create(&plan, &prob, &opts, &status) == BNORM_OK);
  CHECK(status.code == BNORM_OK && status.message[0] == '\0');
  return plan;
}

static void test_versions_and_inits(void) {
  CHECK(strcmp(bnorm_version(), "") != 0);
  CHECK(bnorm_c_api_version() == BNORM_C_API_VERSION);
  bnorm_problem prob;
  bnorm_problem_init(&prob);
  CHECK(prob.struct_size == sizeof prob && prob.rank == 0 && prob.epsilon == 1e-5);
  CHECK(prob.layout == BNORM_CHANNELS_FIRST && prob.dtype == BNORM_F32);
  bnorm_plan_options opts;
  bnorm_plan_options_init(&opts);
  CHECK(opts.struct_size == sizeof opts && opts.update_running_stats == 1);
  CHECK(opts.convention == BNORM_CONVENTION_PYTORCH && isnan(opts.momentum));
  CHECK(opts.max_isa == BNORM_ISA_ANY && opts.activation == BNORM_ACTIVATION_NONE);
  bnorm_training_args t;
  bnorm_training_args_init(&t);
  CHECK(t.struct_size == sizeof t && t.src == NULL && t.scale.size == 0);
  bnorm_inference_args i;
  bnorm_inference_args_init(&i);
  CHECK(i.struct_size == sizeof i && i.mean.data == NULL);
  bnorm_backward_args b;
  bnorm_backward_args_init(&b);
  CHECK(b.struct_size == sizeof b && b.diff_residual == NULL);
  bnorm_problem_init(NULL); /* no-ops */
  bnorm_plan_options_init(NULL);
}

static void test_plan_create_and_queries(void) {
  bnorm_status status;
  bnorm_problem prob;
  bnorm_problem_init(&prob);
  bnorm_plan plan = NULL;
  expect_error(bnorm_plan_create(NULL, &prob, NULL, &status), &status, BNORM_INVALID_ARGUMENT,
               "plan: expected a bnorm_plan to fill, got NULL");
  expect_error(bnorm_plan_create(&plan, NULL, NULL, &status), &status, BNORM_INVALID_ARGUMENT,
               "problem: expected a bnorm_problem, got NULL");
  prob.struct_size = 8;
  expect_error(bnorm_plan_create(&plan, &prob, NULL, &status), &status, BNORM_INVALID_ARGUMENT,
               "bnorm_problem.struct_size: expected");
  bnorm_problem_init(&prob);
  prob.rank = 1;
  prob.shape[0] = 3;
  expect_error(bnorm_plan_create(&plan, &prob, NULL, &status), &status, BNORM_INVALID_ARGUMENT,
               "shape: expected rank 2 to 5");
  prob.rank = 9;
  expect_error(bnorm_plan_create(&plan, &prob, NULL, &status), &status, BNORM_INVALID_ARGUMENT,
               "problem.rank: expected 2 to 5 (N, C[, D][, H][, W]) dimensions in problem.shape, "
               "got 9");
  prob.rank = 2;
  prob.shape[1] = 4;
  prob.layout = (bnorm_layout)7;
  expect_error(bnorm_plan_create(&plan, &prob, NULL, &status), &status, BNORM_INVALID_ARGUMENT,
               "layout: expected channels_first or channels_last");
  prob.layout = BNORM_CHANNELS_LAST;
  bnorm_plan_options opts;
  bnorm_plan_options_init(&opts);
  opts.struct_size = 0;
  expect_error(bnorm_plan_create(&plan, &prob, &opts, &status), &status, BNORM_INVALID_ARGUMENT,
               "bnorm_plan_options.struct_size: expected");
  bnorm_plan_options_init(&opts);
  opts.momentum = 2.0;
  expect_error(bnorm_plan_create(&plan, &prob, &opts, &status), &status, BNORM_INVALID_ARGUMENT,
               "momentum: expected");
  /* Booleans are 0 or 1: another value is refused, not read as true. */
  bnorm_plan_options_init(&opts);
  opts.update_running_stats = 2;
  expect_error(bnorm_plan_create(&plan, &prob, &opts, &status), &status, BNORM_INVALID_ARGUMENT,
               "options.update_running_stats: expected 0 or 1, got 2");
  bnorm_plan_options_init(&opts);
  opts.cumulative_average = -1;
  expect_error(bnorm_plan_create(&plan, &prob, &opts, &status), &status, BNORM_INVALID_ARGUMENT,
               "options.cumulative_average: expected 0 or 1, got -1");
  /* Values outside the named ones, negative too, are read as they are and named. */
  bnorm_plan_options_init(&opts);
  opts.stores = (bnorm_store_policy)-1;
  expect_error(bnorm_plan_create(&plan, &prob, &opts, &status), &status, BNORM_INVALID_ARGUMENT,
               "got an unknown value (-1)");
  bnorm_plan_options_init(&opts);
  opts.activation = (bnorm_activation)-5;
  expect_error(bnorm_plan_create(&plan, &prob, &opts, &status), &status, BNORM_INVALID_ARGUMENT,
               "got an unknown value (-5)");
  bnorm_plan_options_init(&opts);
  opts.max_isa = (bnorm_isa)99;
  expect_error(bnorm_plan_create(&plan, &prob, &opts, &status), &status, BNORM_INVALID_ARGUMENT,
               "max_isa: expected sse2, avx2, avx512f, avx512bf16 or neon64, got an unknown "
               "value (99)");
  opts.max_isa = (bnorm_isa)-2;
  expect_error(bnorm_plan_create(&plan, &prob, &opts, &status), &status, BNORM_INVALID_ARGUMENT,
               "got an unknown value (-2)");
  prob.layout = (bnorm_layout)-1;
  expect_error(bnorm_plan_create(&plan, &prob, NULL, &status), &status, BNORM_INVALID_ARGUMENT,
               "layout: expected channels_first or channels_last, got an unknown value (-1)");
  prob.layout = BNORM_CHANNELS_LAST;
  prob.dtype = (bnorm_dtype)-1;
  expect_error(bnorm_plan_create(&plan, &prob, NULL, &status), &status, BNORM_INVALID_ARGUMENT,
               "got an unknown value (-1)");
  prob.dtype = BNORM_F32;
  bnorm_plan_options_init(&opts);
  CHECK(plan == NULL); /* untouched by every failure */

  opts.momentum = 0.1;
  opts.max_isa = BNORM_ISA_SSE2;
  CHECK(bnorm_plan_create(&plan, &prob, &opts, NULL) == BNORM_OK); /* status optional */
  CHECK(plan != NULL);
  CHECK(bnorm_plan_isa(plan) == BNORM_ISA_SSE2);
  CHECK(strstr(bnorm_plan_describe(plan), "sse2 · f32 · channels-last rows") != NULL);
  CHECK(bnorm_plan_training_scratch_size(plan) == 0); /* fits on the stack */
  CHECK(bnorm_plan_inference_scratch_size(plan) == 0);
  CHECK(bnorm_plan_backward_scratch_size(plan) == 0);
  bnorm_plan_destroy(plan);

  bnorm_problem_init(&prob);
  prob.rank = 4;
  prob.shape[0] = 8;
  prob.shape[1] = 4096;
  prob.shape[2] = 16;
  prob.shape[3] = 16;
  CHECK(bnorm_plan_create(&plan, &prob, NULL, &status) == BNORM_OK);
  CHECK(bnorm_plan_training_scratch_size(plan) > 4096);
  CHECK(bnorm_plan_backward_scratch_size(plan) >= bnorm_plan_training_scratch_size(plan));
  bnorm_plan_destroy(plan);

  CHECK(bnorm_plan_isa(NULL) == BNORM_ISA_ANY);
  CHECK(strcmp(bnorm_plan_describe(NULL), "") == 0);
  CHECK(bnorm_plan_training_scratch_size(NULL) == 0);
  CHECK(bnorm_plan_inference_scratch_size(NULL) == 0);
  CHECK(bnorm_plan_backward_scratch_size(NULL) == 0);
  bnorm_plan_destroy(NULL);
}

static void test_forward(void) {
  bnorm_plan plan = seed_plan(BNORM_ACTIVATION_NONE);
  bnorm_status status;
  float y[8], mean[4], inv_std[4], running_mean[4] = {0, 0, 0, 0}, running_var[4] = {1, 1, 1, 1};
  float residual[4] = {99, 99, 99, 99};
  int64_t tracked = 0;
  bnorm_training_args t;
  bnorm_training_args_init(&t);
  t.src = seed_x;
  t.dst = y;
  t.batch_mean.data = mean;
  t.batch_mean.size = 4;
  t.batch_inv_std.data = inv_std;
  t.batch_inv_std.size = 4;
  t.batch_mean_residual.data = residual;
  t.batch_mean_residual.size = 4;
  t.num_batches_tracked = &tracked;
  /* Refused: the running statistics are required; nothing written. */
  memset(y, 0, sizeof y);
  expect_error(bnorm_forward_training(plan, &t, &status), &status, BNORM_INVALID_ARGUMENT,
               "running_mean: expected 4 values, got a null pointer");
  CHECK(tracked == 0 && y[0] == 0.0f);
  t.running_mean.data = running_mean;
  t.running_mean.size = 4;
  t.running_var.data = running_var;
  t.running_var.size = 4;
  CHECK(bnorm_forward_training(plan, &t, &status) == BNORM_OK);
  CHECK(tracked == 1);
  for (int c = 0; c < 4; ++c) {
    const double m = ((double)seed_x[c] + seed_x[4 + c]) / 2.0; /* exact in float64 */
    const double d = seed_x[c] - m;
    const double inv = 1.0 / sqrt(d * d + 1e-5);
    CHECK(fabs(mean[c] - m) < 1e-7);
    CHECK(fabs(mean[c] + (double)residual[c] - m) <= 1e-12 * fabs(m)); /* the mean to ~2^-48 */
    CHECK(fabs(inv_std[c] - inv) < 1e-6 * inv);
    CHECK(fabs(y[c] - d * inv) < 1e-6);
    CHECK(fabs(running_mean[c] - 0.1 * m) < 1e-7);
    CHECK(fabs(running_var[c] - (0.9 + 0.1 * 2 * d * d)) < 1e-7); /* unbiased: n/(n-1) = 2 */
  }
  /* Handle and args checks. */
  expect_error(bnorm_forward_training(NULL, &t, &status), &status, BNORM_INVALID_ARGUMENT,
               "plan: expected a plan from bnorm_plan_create, got NULL");
  expect_error(bnorm_forward_training(plan, NULL, &status), &status, BNORM_INVALID_ARGUMENT,
               "args: expected a bnorm_training_args, got NULL");
  /* Code built against C API 2's header: its struct ends before batch_mean_residual, which
   * is not read (a field of 3 values there would be refused) and not written. */
  float untouched[4] = {7, 7, 7, 7};
  t.batch_mean_residual.data = untouched;
  t.batch_mean_residual.size = 3;
  t.struct_size = offsetof(bnorm_training_args, batch_mean_residual);
  CHECK(bnorm_forward_training(plan, &t, &status) == BNORM_OK);
  CHECK(untouched[0] == 7.0f && tracked == 2);
  { /* exactly as many bytes as C API 2's struct: the sanitizer run sees any read past them */
    bnorm_training_args* old = malloc(t.struct_size);
    CHECK(old != NULL);
    memcpy(old, &t, t.struct_size);
    CHECK(bnorm_forward_training(plan, old, &status) == BNORM_OK);
    free(old);
    CHECK(tracked == 3);
  }
  t.struct_size = sizeof t;
  expect_error(bnorm_forward_training(plan, &t, &status), &status, BNORM_INVALID_ARGUMENT,
               "batch_mean_residual: expected 4 values");
  t.batch_mean_residual.data = residual;
  t.batch_mean_residual.size = 4;
  t.struct_size += 8;
  { /* the message names both sizes the library reads */
    char sizes[160];
    snprintf(sizes, sizeof sizes,
             "bnorm_training_args.struct_size: expected %zu or %zu (C API 2's)", sizeof t,
             offsetof(bnorm_training_args, batch_mean_residual));
    expect_error(bnorm_forward_training(plan, &t, &status), &status, BNORM_INVALID_ARGUMENT, sizes);
  }

  bnorm_inference_args i;
  bnorm_inference_args_init(&i);
  i.src = seed_x;
  i.dst = y;
  expect_error(bnorm_forward_inference(plan, &i, &status), &status, BNORM_INVALID_ARGUMENT,
               "mean: expected 4 values, got a null pointer");
  const float zeros[4] = {0, 0, 0, 0}, fours[4] = {4, 4, 4, 4};
  i.mean.data = zeros;
  i.mean.size = 4;
  i.var.data = fours;
  i.var.size = 4;
  CHECK(bnorm_forward_inference(plan, &i, &status) == BNORM_OK);
  for (int k = 0; k < 8; ++k) CHECK(fabs(y[k] - seed_x[k] / sqrt(4 + 1e-5)) < 1e-6);
  i.struct_size = 0;
  expect_error(bnorm_forward_inference(plan, &i, &status), &status, BNORM_INVALID_ARGUMENT,
               "bnorm_inference_args.struct_size");
  expect_error(bnorm_forward_inference(NULL, &i, &status), &status, BNORM_INVALID_ARGUMENT,
               "plan: expected");
  expect_error(bnorm_forward_inference(plan, NULL, &status), &status, BNORM_INVALID_ARGUMENT,
               "args: expected a bnorm_inference_args");
  bnorm_plan_destroy(plan);
}

/* bfloat16 data with float32 per-channel buffers: x = 1, 2, 3, 4 (bits 0x3F80 ...), var 4 and
 * epsilon 0: y = x / 2, exact in bfloat16. */
/* The momentum as bnorm_plan_options_init leaves it (NaN) is the convention's default: a
 * convention set alone keeps its framework's (ONNX's and MindSpore's 0.9: r = 0.9·r + 0.1·batch;
 * PyTorch's 0.1: r = 0.9·r + 0.1·batch too), as the C++ API's unset momentum; and ONNX trains
 * on one value a channel (its biased variance 0: y = beta). */
/* A plan of (n, 4) under `convention`, its momentum as bnorm_plan_options_init leaves it. */
static bnorm_plan plan_of_seed_width(int64_t n, bnorm_momentum_convention convention) {
  bnorm_problem prob;
  bnorm_problem_init(&prob);
  prob.rank = 2;
  prob.shape[0] = n;
  prob.shape[1] = 4;
  bnorm_plan_options opts;
  bnorm_plan_options_init(&opts);
  opts.convention = convention;
  bnorm_plan plan = NULL;
  CHECK(bnorm_plan_create(&plan, &prob, &opts, NULL) == BNORM_OK);
  return plan;
}

/* Training args of seed_x into y, the running statistics of 4 channels 1 and 2. */
static bnorm_training_args seed_training_args(float* y, float* running_mean, float* running_var) {
  bnorm_training_args t;
  bnorm_training_args_init(&t);
  t.src = seed_x;
  t.dst = y;
  for (int c = 0; c < 4; ++c) {
    running_mean[c] = 1;
    running_var[c] = 2;
  }
  t.running_mean.data = running_mean;
  t.running_mean.size = 4;
  t.running_var.data = running_var;
  t.running_var.size = 4;
  return t;
}

static void test_convention_defaults(void) {
  const bnorm_momentum_convention conventions[] = {
      BNORM_CONVENTION_PYTORCH, BNORM_CONVENTION_MINDSPORE, BNORM_CONVENTION_ONNX};
  float y[8], running_mean[4], running_var[4];
  for (int k = 0; k < 3; ++k) {
    bnorm_plan plan = plan_of_seed_width(2, conventions[k]);
    bnorm_training_args t = seed_training_args(y, running_mean, running_var);
    CHECK(bnorm_forward_training(plan, &t, NULL) == BNORM_OK);
    for (int c = 0; c < 4; ++c) {
      const double m = ((double)seed_x[c] + seed_x[4 + c]) / 2.0;
      const double d = seed_x[c] - m;
      const double batch_var = conventions[k] == BNORM_CONVENTION_ONNX ? d * d : 2 * d * d;
      CHECK(fabs(running_mean[c] - (0.9 + 0.1 * m)) < 1e-7);
      CHECK(fabs(running_var[c] - (1.8 + 0.1 * batch_var)) < 1e-7);
    }
    bnorm_plan_destroy(plan);
  }
  const float beta[4] = {0.5f, -1, 2, 0};
  bnorm_training_args t = seed_training_args(y, running_mean, running_var);
  t.shift.data = beta;
  t.shift.size = 4;
  memset(y, 0, sizeof y);
  bnorm_status status;
  bnorm_plan plan = plan_of_seed_width(1, BNORM_CONVENTION_PYTORCH); /* refused */
  expect_error(bnorm_forward_training(plan, &t, &status), &status, BNORM_INVALID_ARGUMENT,
               "Expected more than 1 value per channel when training, got input size [1, 4]");
  CHECK(y[0] == 0 && running_mean[0] == 1 && running_var[0] == 2);
  bnorm_plan_destroy(plan);
  plan = plan_of_seed_width(1, BNORM_CONVENTION_ONNX);
  CHECK(bnorm_forward_training(plan, &t, &status) == BNORM_OK);
  for (int c = 0; c < 4; ++c) {
    CHECK(y[c] == beta[c]);
    CHECK(fabs(running_mean[c] - (0.9 + 0.1 * seed_x[c])) < 1e-7);
    CHECK(fabs(running_var[c] - 1.8) < 1e-7);
  }
  bnorm_plan_destroy(plan);
}

static void test_bfloat16(void) {
  bnorm_problem prob;
  bnorm_problem_init(&prob);
  prob.rank = 2;
  prob.shape[0] = 2;
  prob.shape[1] = 2;
  prob.dtype = BNORM_BF16;
  prob.epsilon = 0.0;
  bnorm_plan plan;
  bnorm_status status;
  CHECK(bnorm_plan_create(&plan, &prob, NULL, &status) == BNORM_OK);
  CHECK(strstr(bnorm_plan_describe(plan), "bf16") != NULL);
  const uint16_t x[4] = {0x3F80, 0x4000, 0x4040, 0x4080};
  uint16_t y[4] = {0, 0, 0, 0};
  const float zeros[2] = {0, 0}, fours[2] = {4, 4};
  bnorm_inference_args i;
  bnorm_inference_args_init(&i);
  i.src = x;
  i.dst = y;
  i.mean.data = zeros;
  i.mean.size = 2;
  i.var.data = fours;
  i.var.size = 2;
  CHECK(bnorm_forward_inference(plan, &i, &status) == BNORM_OK);
  /* 0.5, 1, 1.5, 2 */
  CHECK(y[0] == 0x3F00 && y[1] == 0x3F80 && y[2] == 0x3FC0 && y[3] == 0x4000);
  bnorm_plan_destroy(plan);
}

static void test_backward(void) {
  bnorm_plan plan = seed_plan(BNORM_ACTIVATION_NONE);
  bnorm_status status;
  const float dy[8] = {1, -2, 0.5f, 3, -1, 2, 1.5f, -3};
  const float zeros[4] = {0, 0, 0, 0}, fours[4] = {4, 4, 4, 4};
  float dx[8], dgamma[4], dbeta[4];
  bnorm_backward_args b;
  bnorm_backward_args_init(&b);
  b.diff_dst = dy;
  expect_error(bnorm_backward_training(plan, &b, &status), &status, BNORM_INVALID_ARGUMENT,
               "expected at least one output to compute, got none");
  /* Frozen, against a zero mean and variance 4: dx = dy/sqrt(4 + eps), dβ = Σdy. */
  b.src = seed_x;
  b.diff_src = dx;
  b.mean.data = zeros;
  b.mean.size = 4;
  b.var.data = fours;
  b.var.size = 4;
  b.diff_scale.data = dgamma;
  b.diff_scale.size = 4;
  b.diff_shift.data = dbeta;
  b.diff_shift.size = 4;
  CHECK(bnorm_backward_frozen(plan, &b, &status) == BNORM_OK);
  for (int c = 0; c < 4; ++c) {
    const double inv = 1 / sqrt(4 + 1e-5);
    CHECK(fabs(dx[c] - dy[c] * inv) < 1e-6 && fabs(dx[4 + c] - dy[4 + c] * inv) < 1e-6);
    CHECK(fabs(dbeta[c] - (dy[c] + dy[4 + c])) < 1e-6);
    CHECK(fabs(dgamma[c] - (dy[c] * seed_x[c] + dy[4 + c] * seed_x[4 + c]) * inv) < 1e-6);
  }
  /* Training, from the batch's own statistics (the biased variance), against the formulas in
   * float64 on the same float32 values: dβ = Σdy, dγ = Σdy·x̂ and
   * dx = inv·(dy − dβ/M − x̂·dγ/M) with x̂ = (x − mean)·inv, M = 2 (γ omitted: 1). */
  float mean[4], var[4];
  for (int c = 0; c < 4; ++c) {
    mean[c] = (seed_x[c] + seed_x[4 + c]) / 2;
    var[c] = (seed_x[c] - mean[c]) * (seed_x[c] - mean[c]);
  }
  b.mean.data = mean;
  b.var.data = var;
  CHECK(bnorm_backward_training(plan, &b, &status) == BNORM_OK);
  for (int c = 0; c < 4; ++c) {
    const double inv = 1 / sqrt((double)var[c] + 1e-5);
    double xhat[2], sum_dy = 0, sum_dy_xhat = 0, sum_abs = 0;
    for (int n = 0; n < 2; ++n) {
      xhat[n] = ((double)seed_x[4 * n + c] - mean[c]) * inv;
      sum_dy += dy[4 * n + c];
      sum_dy_xhat += dy[4 * n + c] * xhat[n];
      sum_abs += fabs(dy[4 * n + c] * xhat[n]);
    }
    CHECK(fabs(dbeta[c] - sum_dy) <= 1e-6 * (fabs(dy[c]) + fabs(dy[4 + c])));
    CHECK(fabs(dgamma[c] - sum_dy_xhat) <= 1e-6 * sum_abs);
    for (int n = 0; n < 2; ++n) {
      const double terms =
          inv * (fabs(dy[4 * n + c]) + fabs(sum_dy) / 2 + fabs(xhat[n] * sum_dy_xhat) / 2);
      const double want = inv * (dy[4 * n + c] - sum_dy / 2 - xhat[n] * sum_dy_xhat / 2);
      CHECK(fabs(dx[4 * n + c] - want) <= 1e-6 * terms);
    }
  }
  memset(dx, 0, sizeof dx);
  b.var.size = 3;
  expect_error(bnorm_backward_training(plan, &b, &status), &status, BNORM_INVALID_ARGUMENT,
               "var: expected 4 values (one per channel, C = 4), got 3");
  CHECK(dx[0] == 0.0f);
  /* The mean's residual reaches the engine: with a residual of 0 the same dx, with another the
   * gradient about the mean it moves to, and the frozen backward refuses one by name. */
  const float no_residual[4] = {0, 0, 0, 0};
  float dx_again[8];
  b.var.size = 4;
  b.diff_src = dx_again;
  b.mean_residual.data = no_residual;
  b.mean_residual.size = 4;
  CHECK(bnorm_backward_training(plan, &b, &status) == BNORM_OK);
  b.diff_src = dx;
  b.mean_residual.data = NULL;
  b.mean_residual.size = 0;
  CHECK(bnorm_backward_training(plan, &b, &status) == BNORM_OK);
  CHECK(memcmp(dx, dx_again, sizeof dx) == 0);
  /* and a residual r gives the gradient of the mean mean + r (the formulas above with it). */
  const float some_residual[4] = {0.125f, -0.25f, 0.0625f, 0.5f};
  b.diff_src = dx_again;
  b.mean_residual.data = some_residual;
  b.mean_residual.size = 4;
  CHECK(bnorm_backward_training(plan, &b, &status) == BNORM_OK);
  for (int c = 0; c < 4; ++c) {
    const double inv = 1 / sqrt((double)var[c] + 1e-5), m = (double)mean[c] + some_residual[c];
    double xhat[2], sum_dy = 0, sum_dy_xhat = 0;
    for (int n = 0; n < 2; ++n) {
      xhat[n] = ((double)seed_x[4 * n + c] - m) * inv;
      sum_dy += dy[4 * n + c];
      sum_dy_xhat += dy[4 * n + c] * xhat[n];
    }
    for (int n = 0; n < 2; ++n) {
      const double terms =
          inv * (fabs(dy[4 * n + c]) + fabs(sum_dy) / 2 + fabs(xhat[n] * sum_dy_xhat) / 2);
      const double want = inv * (dy[4 * n + c] - sum_dy / 2 - xhat[n] * sum_dy_xhat / 2);
      CHECK(fabs(dx_again[4 * n + c] - want) <= 1e-6 * terms);
    }
  }
  CHECK(memcmp(dx, dx_again, sizeof dx) != 0);
  b.diff_src = dx;
  b.mean_residual.data = no_residual;
  b.mean_residual.size = 4;
  expect_error(bnorm_backward_frozen(plan, &b, &status), &status, BNORM_INVALID_ARGUMENT,
               "mean_residual: expected none (backward_frozen takes the running mean");
  b.struct_size = offsetof(bnorm_backward_args, mean_residual); /* C API 2: not read */
  CHECK(bnorm_backward_frozen(plan, &b, &status) == BNORM_OK);
  b.struct_size = sizeof b;
  b.mean_residual.data = NULL;
  b.mean_residual.size = 0;
  b.struct_size = 1;
  expect_error(bnorm_backward_frozen(plan, &b, &status), &status, BNORM_INVALID_ARGUMENT,
               "bnorm_backward_args.struct_size");
  expect_error(bnorm_backward_frozen(NULL, &b, &status), &status, BNORM_INVALID_ARGUMENT,
               "plan: expected");
  expect_error(bnorm_backward_training(plan, NULL, &status), &status, BNORM_INVALID_ARGUMENT,
               "args: expected a bnorm_backward_args");
  bnorm_plan_destroy(plan);
}

/* Two ranks in one process, one sample each of the seed batch: the distributed steps give what
 * the formulas over the whole batch give (mean, biased variance, M = 2). */
static void test_distributed(void) {
  bnorm_problem prob;
  bnorm_problem_init(&prob);
  prob.rank = 2;
  prob.shape[0] = 1;
  prob.shape[1] = 4;
  bnorm_plan plan = NULL;
  bnorm_status status;
  CHECK(bnorm_plan_create(&plan, &prob, NULL, &status) == BNORM_OK);
  const size_t S = bnorm_statistics_exchange_size(4), G = bnorm_gradient_exchange_size(4);
  CHECK(S == 9 && G == 9);
  double exchange[18], merged[9], sums[18], summed[9];
  float y[8], mean[2][4], inv_std[2][4], running_mean[2][4], running_var[2][4];
  bnorm_training_args t[2];
  for (int r = 0; r < 2; ++r) {
    for (int c = 0; c < 4; ++c) {
      running_mean[r][c] = 0;
      running_var[r][c] = 1;
    }
    bnorm_training_args_init(&t[r]);
    t[r].src = seed_x + 4 * r;
    t[r].dst = y + 4 * r;
    t[r].batch_mean.data = mean[r];
    t[r].batch_inv_std.data = inv_std[r];
    t[r].running_mean.data = running_mean[r];
    t[r].running_var.data = running_var[r];
    t[r].batch_mean.size = t[r].batch_inv_std.size = t[r].running_mean.size =
        t[r].running_var.size = 4;
    CHECK(bnorm_local_statistics(plan, &t[r], exchange + S * r, S, &status) == BNORM_OK);
  }
  CHECK(bnorm_merge_statistics(4, exchange, 2, merged, S, &status) == BNORM_OK);
  CHECK(merged[0] == 2.0);
  for (int r = 0; r < 2; ++r) {
    CHECK(bnorm_forward_training_merged(plan, &t[r], merged, S, &status) == BNORM_OK);
  }
  double m[4], inv[4];
  for (int c = 0; c < 4; ++c) {
    m[c] = ((double)seed_x[c] + seed_x[4 + c]) / 2;
    const double d = seed_x[c] - m[c];
    inv[c] = 1 / sqrt(d * d + 1e-5);
    for (int r = 0; r < 2; ++r) {
      CHECK(fabs(y[4 * r + c] - (seed_x[4 * r + c] - m[c]) * inv[c]) <= 1e-6);
      CHECK(fabs(mean[r][c] - m[c]) <= 1e-7 && fabs(inv_std[r][c] - inv[c]) <= 1e-6 * inv[c]);
      /* The running mean: 0.9·0 + 0.1·m. */
      CHECK(fabs(running_mean[r][c] - 0.1 * m[c]) <= 1e-7);
    }
  }
  /* Backward: dx over the whole batch, dγ and dβ of each rank's own sample. */
  const float dy[8] = {1, -2, 0.5f, 3, -1, 2, 1.5f, -3};
  float dx[8], dgamma[2][4], dbeta[2][4];
  bnorm_backward_args b[2];
  for (int r = 0; r < 2; ++r) {
    bnorm_backward_args_init(&b[r]);
    b[r].src = seed_x + 4 * r;
    b[r].diff_dst = dy + 4 * r;
    b[r].diff_src = dx + 4 * r;
    b[r].mean.data = mean[r];
    b[r].inv_std.data = inv_std[r];
    b[r].diff_scale.data = dgamma[r];
    b[r].diff_shift.data = dbeta[r];
    b[r].mean.size = b[r].inv_std.size = b[r].diff_scale.size = b[r].diff_shift.size = 4;
    CHECK(bnorm_local_gradient_sums(plan, &b[r], sums + G * r, G, &status) == BNORM_OK);
  }
  CHECK(bnorm_sum_gradient_exchanges(4, sums, 2, summed, G, &status) == BNORM_OK);
  for (int r = 0; r < 2; ++r) {
    CHECK(bnorm_backward_training_merged(plan, &b[r], sums + G * r, summed, G, &status) ==
          BNORM_OK);
  }
  for (int c = 0; c < 4; ++c) {
    double xhat[2], sum_dy = 0, sum_dy_xhat = 0;
    for (int n = 0; n < 2; ++n) {
      xhat[n] = ((double)seed_x[4 * n + c] - m[c]) * inv[c];
      sum_dy += dy[4 * n + c];
      sum_dy_xhat += dy[4 * n + c] * xhat[n];
    }
    for (int n = 0; n < 2; ++n) {
      const double terms =
          inv[c] * (fabs(dy[4 * n + c]) + fabs(sum_dy) / 2 + fabs(xhat[n] * sum_dy_xhat) / 2);
      const double want = inv[c] * (dy[4 * n + c] - sum_dy / 2 - xhat[n] * sum_dy_xhat / 2);
      CHECK(fabs(dx[4 * n + c] - want) <= 1e-6 * terms);
      CHECK(dbeta[n][c] == dy[4 * n + c]);
      CHECK(fabs(dgamma[n][c] - dy[4 * n + c] * xhat[n]) <= 1e-6 * fabs(dy[4 * n + c] * xhat[n]));
    }
  }
  /* Refusals, named; nothing written. */
  const double fractional[18] = {0.5, 0, 0, 0, 0, 1, 1, 1, 1, 1.5, 0, 0, 0, 0, 1, 1, 1, 1};
  merged[0] = -7;
  expect_error(bnorm_merge_statistics(4, fractional, 2, merged, S, &status), &status,
               BNORM_INVALID_ARGUMENT,
               "blocks[0]: expected rank 0's count of values per channel, a whole number");
  expect_error(bnorm_merge_statistics(4, exchange, 0, merged, S, &status), &status,
               BNORM_INVALID_ARGUMENT, "0 ranks");
  CHECK(merged[0] == -7);
  expect_error(bnorm_sum_gradient_exchanges(4, sums, 2, summed, G - 1, &status), &status,
               BNORM_INVALID_ARGUMENT, "summed: expected 9 doubles");
  expect_error(bnorm_local_statistics(plan, &t[0], exchange, S - 1, &status), &status,
               BNORM_INVALID_ARGUMENT, "exchange: expected 9 doubles");
  expect_error(bnorm_forward_training_merged(NULL, &t[0], merged, S, &status), &status,
               BNORM_INVALID_ARGUMENT, "plan: expected");
  b[0].struct_size = 3;
  expect_error(bnorm_local_gradient_sums(plan, &b[0], sums, G, &status), &status,
               BNORM_INVALID_ARGUMENT, "bnorm_backward_args.struct_size");
  expect_error(bnorm_backward_training_merged(plan, NULL, sums, summed, G, &status), &status,
               BNORM_INVALID_ARGUMENT, "args: expected a bnorm_backward_args");
  bnorm_plan_destroy(plan);
}

/* A linear layer [2, 3] folded: w·γ/sqrt(var + eps) per output row, (b − mean)·that + β. */
static void test_fold(void) {
  bnorm_fold_problem prob;
  bnorm_fold_problem_init(&prob);
  CHECK(prob.struct_size == sizeof prob && prob.groups == 1 && prob.epsilon == 1e-5);
  CHECK(prob.layout == BNORM_WEIGHT_OUTPUT_FIRST && prob.dtype == BNORM_F32 && prob.rank == 0);
  prob.rank = 2;
  prob.weight_shape[0] = 2;
  prob.weight_shape[1] = 3;
  const float w[6] = {1, 2, 3, 4, 5, 6}, bias[2] = {0.5f, -1}, gamma[2] = {2, 0.5f};
  const float beta[2] = {0.25f, 1}, mean[2] = {1, -2}, var[2] = {4, 0.25f};
  float folded_w[6], folded_b[2];
  bnorm_fold_args args;
  bnorm_fold_args_init(&args);
  CHECK(args.struct_size == sizeof args && args.weight == NULL && args.mean.size == 0);
  args.weight = w;
  args.folded_weight = folded_w;
  args.bias.data = bias;
  args.folded_bias.data = folded_b;
  args.scale.data = gamma;
  args.shift.data = beta;
  args.mean.data = mean;
  args.var.data = var;
  args.bias.size = args.folded_bias.size = args.scale.size = args.shift.size = args.mean.size =
      args.var.size = 2;
  bnorm_status status;
  CHECK(bnorm_fold_into_layer(&prob, &args, &status) == BNORM_OK);
  for (int o = 0; o < 2; ++o) {
    const double scale = gamma[o] / sqrt((double)var[o] + 1e-5);
    for (int i = 0; i < 3; ++i) {
      CHECK(fabs(folded_w[3 * o + i] - w[3 * o + i] * scale) <= 1e-6 * fabs(w[3 * o + i] * scale));
    }
    const double want = (bias[o] - mean[o]) * scale + beta[o];
    CHECK(fabs(folded_b[o] - want) <= 1e-6 * fabs(want));
  }
  /* Refusals, named; nothing written. */
  for (int i = 0; i < 6; ++i) folded_w[i] = -9;
  prob.rank = 9;
  expect_error(bnorm_fold_into_layer(&prob, &args, &status), &status, BNORM_INVALID_ARGUMENT,
               "problem.rank: expected 2 to 8 (linear [out, in], convolutions [O, I, k...]) "
               "dimensions in problem.weight_shape, got 9");
  prob.rank = 1;
  expect_error(bnorm_fold_into_layer(&prob, &args, &status), &status, BNORM_INVALID_ARGUMENT,
               "weight_shape: expected rank 2 to 8");
  prob.rank = 2;
  prob.layout = (bnorm_weight_layout)7;
  expect_error(
      bnorm_fold_into_layer(&prob, &args, &status), &status, BNORM_INVALID_ARGUMENT,
      "layout: expected output_first, output_last or transposed, got an unknown value (7)");
  prob.layout = BNORM_WEIGHT_OUTPUT_LAST; /* [2, 3] read as 3 output channels */
  expect_error(bnorm_fold_into_layer(&prob, &args, &status), &status, BNORM_INVALID_ARGUMENT,
               "bias: expected 3 values");
  prob.layout = BNORM_WEIGHT_OUTPUT_FIRST;
  args.struct_size = 8;
  expect_error(bnorm_fold_into_layer(&prob, &args, &status), &status, BNORM_INVALID_ARGUMENT,
               "bnorm_fold_args.struct_size");
  expect_error(bnorm_fold_into_layer(NULL, &args, &status), &status, BNORM_INVALID_ARGUMENT,
               "problem: expected a bnorm_fold_problem, got NULL");
  expect_error(bnorm_fold_into_layer(&prob, NULL, &status), &status, BNORM_INVALID_ARGUMENT,
               "args: expected a bnorm_fold_args, got NULL");
  for (int i = 0; i < 6; ++i) CHECK(folded_w[i] == -9);
}

int main(void) {
  test_bfloat16();
  test_versions_and_inits();
  test_plan_create_and_queries();
  test_forward();
  test_backward();
  test_distributed();
  test_fold();
  test_convention_defaults();
  if (failures) {
    fprintf(stderr, "%d C API checks failed\n", failures);
    return 1;
  }
  printf("C API: every check passed\n");
  return 0;
}
