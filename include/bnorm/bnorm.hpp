// bnorm: batch normalization for CPU engines. The one header to include.
#pragma once

#include "bnorm/distributed.hpp"
#include "bnorm/element_types.hpp"
#include "bnorm/fold.hpp"
#include "bnorm/module.hpp"
#include "bnorm/plan.hpp"
#include "bnorm/status.hpp"
#include "bnorm/version.hpp"
