/* A C engine built against the installed package by the package_consumer test. */
#include <bnorm/bnorm.h>
#include <math.h>
#include <stdio.h>

int main(void) {
  bnorm_problem prob;
  bnorm_problem_init(&prob);
  prob.rank = 2;
  prob.shape[0] = 2;
  prob.shape[1] = 2;
  bnorm_plan plan;
  bnorm_status status;
  if (bnorm_plan_create(&plan, &prob, NULL, &status) != BNORM_OK) {
    printf("bnorm_plan_create: %s\n", status.message);
    return 1;
  }
  const float x[4] = {1.f, 10.f, 3.f, 30.f}, mean[2] = {2.f, 20.f}, var[2] = {1.f, 100.f};
  float y[4];
  bnorm_inference_args args;
  bnorm_inference_args_init(&args);
  args.src = x;
  args.dst = y;
  args.mean.data = mean;
  args.mean.size = 2;
  args.var.data = var;
  args.var.size = 2;
  const int ok = bnorm_forward_inference(plan, &args, &status) == BNORM_OK &&
                 fabsf(y[0] + 1.f) < 1e-3f && fabsf(y[3] - 1.f) < 1e-3f;
  printf("bnorm %s (C API %d) on %s: %s\n", bnorm_version(), bnorm_c_api_version(),
         bnorm_plan_describe(plan), ok ? "ok" : "WRONG");
  bnorm_plan_destroy(plan);
  return ok ? 0 : 1;
}
