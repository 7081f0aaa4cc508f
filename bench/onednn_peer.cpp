#include "onednn_peer.hpp"

#include <cstdio>
#include <functional>
#include <unordered_map>

#include <omp.h>
#include <oneapi/dnnl/dnnl.hpp>

namespace bnorm_bench {

struct onednn_peer::state {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  dnnl::primitive primitive;
  std::unordered_map<int, dnnl::memory> args;
};

onednn_peer::onednn_peer(const bnorm::tensor_shape& shape, bnorm::layout l, peer_kind kind,
                         bnorm::dtype data_type, double eps, const peer_buffers& b, int threads)
    : state_(std::make_unique<state>()), threads_(threads) {
  omp_set_num_threads(threads);  // Debian's oneDNN runs on OpenMP
  using dnnl::memory;
  using dnnl::normalization_flags;
  using tag = memory::format_tag;
  memory::dims dims;
  for (std::size_t i = 0; i < shape.rank(); ++i) dims.push_back(shape[i]);
  const bool first = l == bnorm::layout::channels_first;
  const tag t = shape.rank() == 2   ? tag::nc
                : shape.rank() == 3 ? (first ? tag::ncw : tag::nwc)
                : shape.rank() == 4 ? (first ? tag::nchw : tag::nhwc)
                                    : (first ? tag::ncdhw : tag::ndhwc);
  const memory::desc data(
      dims, data_type == bnorm::dtype::bf16 ? memory::data_type::bf16 : memory::data_type::f32, t);
  const memory::desc channel({shape[1]}, memory::data_type::f32, tag::x);
  const auto affine = normalization_flags::use_scale | normalization_flags::use_shift;
  const bool relu = kind == peer_kind::inference_relu || kind == peer_kind::training_relu;
  if (kind == peer_kind::inference_relu) kind = peer_kind::inference;
  if (kind == peer_kind::training_relu) kind = peer_kind::training;
  const bool global = kind == peer_kind::inference || kind == peer_kind::frozen;
  // oneDNN's backward_data cannot take a scale: the frozen peer runs without one.
  const auto flags = kind == peer_kind::frozen ? normalization_flags::use_global_stats
                     : relu && global          ? affine | normalization_flags::use_global_stats |
                                            normalization_flags::fuse_norm_relu
                     : relu   ? affine | normalization_flags::fuse_norm_relu
                     : global ? affine | normalization_flags::use_global_stats
                              : affine;
  const bool forward = kind == peer_kind::training || kind == peer_kind::inference;
  const dnnl::batch_normalization_forward::desc forward_desc(
      kind == peer_kind::inference ? dnnl::prop_kind::forward_inference
                                   : dnnl::prop_kind::forward_training,
      data, static_cast<float>(eps), flags);
  const dnnl::batch_normalization_forward::primitive_desc forward_pd(forward_desc, state_->engine);
  auto& e = state_->engine;
  const auto buffer = [](const void* p) { return const_cast<void*>(p); };
  state_->args = {{DNNL_ARG_SRC, memory(data, e, buffer(b.src))},
                  {DNNL_ARG_MEAN, memory(forward_pd.mean_desc(), e, b.mean)},
                  {DNNL_ARG_VARIANCE, memory(forward_pd.variance_desc(), e, b.var)}};
  if (kind != peer_kind::frozen) {
    // oneDNN 2.6's backward refuses to run without the shift too, though it does not read it.
    state_->args.insert({DNNL_ARG_SCALE, memory(channel, e, buffer(b.scale))});
    state_->args.insert({DNNL_ARG_SHIFT, memory(channel, e, buffer(b.shift))});
  }
  if (forward) {
    state_->primitive = dnnl::batch_normalization_forward(forward_pd);
    state_->args.insert({DNNL_ARG_DST, memory(data, e, b.dst)});
    // Training with fuse_norm_relu writes the ReLU mask for its backward: oneDNN's own buffer.
    if (forward_pd.workspace_desc().get_size() != 0) {
      state_->args.insert({DNNL_ARG_WORKSPACE, memory(forward_pd.workspace_desc(), e)});
    }
    return;
  }
  const dnnl::batch_normalization_backward::desc backward_desc(
      kind == peer_kind::frozen ? dnnl::prop_kind::backward_data : dnnl::prop_kind::backward, data,
      data, static_cast<float>(eps), flags);
  const dnnl::batch_normalization_backward::primitive_desc backward_pd(backward_desc, e,
                                                                       forward_pd);
  state_->primitive = dnnl::batch_normalization_backward(backward_pd);
  state_->args.insert({DNNL_ARG_DIFF_DST, memory(data, e, buffer(b.diff_dst))});
  state_->args.insert({DNNL_ARG_DIFF_SRC, memory(data, e, b.diff_src)});
  if (kind == peer_kind::backward) {
    state_->args.insert({DNNL_ARG_DIFF_SCALE, memory(channel, e, b.diff_scale)});
    state_->args.insert({DNNL_ARG_DIFF_SHIFT, memory(channel, e, b.diff_shift)});
  }
}

onednn_peer::~onednn_peer() = default;

void onednn_peer::run() {
  omp_set_num_threads(threads_);
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
