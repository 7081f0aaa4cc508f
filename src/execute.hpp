// The paths, run on validated arguments and a scratch buffer of the plan's size.
#pragma once

#include "bnorm/plan.hpp"
#include "plan_impl.hpp"

namespace bnorm::detail {

/// Each may throw what oneTBB throws; `plain`: inference without the plan's activation; the API
/// layer turns that into a status.
template <class T>
void run_training(const plan_impl& plan, const training_args& args, unsigned char* scratch);
template <class T>
void run_inference(const plan_impl& plan, const inference_args& args, unsigned char* scratch,
                   bool plain = false);
/// The training backward, or with `frozen` the backward on the running statistics. A plan
/// with an activation puts dy through its mask into `masked` (a tensor of the call's) first.
template <class T>
void run_backward(const plan_impl& plan, const backward_args& args, bool frozen,
                  unsigned char* scratch, void* masked);

}  // namespace bnorm::detail
