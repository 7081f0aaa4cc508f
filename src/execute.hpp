// The two paths, run on validated arguments and a scratch buffer of the plan's size.
#pragma once

#include "bnorm/plan.hpp"
#include "plan_impl.hpp"

namespace bnorm::detail {

/// Both may throw what oneTBB throws; the API layer turns that into a status.
template <class T>
void run_training(const plan_impl& plan, const training_args& args, unsigned char* scratch);
template <class T>
void run_inference(const plan_impl& plan, const inference_args& args, unsigned char* scratch);

}  // namespace bnorm::detail
