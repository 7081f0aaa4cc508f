// The paths, run on validated arguments and a scratch buffer of the plan's size.
#pragma once

#include "bnorm/plan.hpp"
#include "plan_impl.hpp"

namespace bnorm::detail {

/// Each may throw what oneTBB throws; the API layer turns that into a status.
template <class T>
void run_training(const plan_impl& plan, const training_args& args, unsigned char* scratch);
template <class T>
void run_inference(const plan_impl& plan, const inference_args& args, unsigned char* scratch);
/// The training backward, or with `frozen` the backward on the running statistics.
template <class T>
void run_backward(const plan_impl& plan, const backward_args& args, bool frozen,
                  unsigned char* scratch);

}  // namespace bnorm::detail
