#include "onednn_peer.hpp"

#include <cstdio>
#include <unordered_map>

#include <omp.h>
#include <oneapi/dnnl/dnnl.hpp>

namespace bnorm_bench {

struct onednn_peer::state {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  dnnl::batch_normalization_forward primitive;
  std::unordered_map<int, dnnl::memory> args;
};

onednn_peer::onednn_peer(const bnorm::tensor_shape& shape, bnorm::layout l, bool training,
                         double eps, const float* src, float* dst, const float* scale,
                         const float* shift, float* mean, float* var)
    : state_(std::make_unique<state>()) {
  using dnnl::memory;
  using tag = memory::format_tag;
  memory::dims dims;
  for (std::size_t i = 0; i < shape.rank(); ++i) dims.push_back(shape[i]);
  const bool first = l == bnorm::layout::channels_first;
  const tag t = shape.rank() == 2   ? tag::nc
                : shape.rank() == 3 ? (first ? tag::ncw : tag::nwc)
                : shape.rank() == 4 ? (first ? tag::nchw : tag::nhwc)
                                    : (first ? tag::ncdhw : tag::ndhwc);
  const memory::desc data(dims, memory::data_type::f32, t);
  const memory::desc channel({shape[1]}, memory::data_type::f32, tag::x);
  auto flags = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
  if (!training) flags = flags | dnnl::normalization_flags::use_global_stats;
  const dnnl::batch_normalization_forward::desc desc(
      training ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference, data,
      static_cast<float>(eps), flags);
  const dnnl::batch_normalization_forward::primitive_desc pd(desc, state_->engine);
  state_->primitive = dnnl::batch_normalization_forward(pd);
  auto& e = state_->engine;
  state_->args = {{DNNL_ARG_SRC, memory(data, e, const_cast<float*>(src))},
                  {DNNL_ARG_DST, memory(data, e, dst)},
                  {DNNL_ARG_SCALE, memory(channel, e, const_cast<float*>(scale))},
                  {DNNL_ARG_SHIFT, memory(channel, e, const_cast<float*>(shift))},
                  {DNNL_ARG_MEAN, memory(pd.mean_desc(), e, mean)},
                  {DNNL_ARG_VARIANCE, memory(pd.variance_desc(), e, var)}};
}

onednn_peer::~onednn_peer() = default;

void onednn_peer::run(int threads) {
  omp_set_num_threads(threads);  // Debian's oneDNN runs on OpenMP
  state_->primitive.execute(state_->stream, state_->args);
  state_->stream.wait();
}

const char* onednn_peer::version() {
  static char text[32];
  const dnnl_version_t* v = dnnl_version();
  std::snprintf(text, sizeof(text), "%d.%d.%d", v->major, v->minor, v->patch);
  return text;
}

}  // namespace bnorm_bench
