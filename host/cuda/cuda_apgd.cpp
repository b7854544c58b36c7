#include "cuda_apgd.h"

#include <cuda_runtime_api.h>

#include <string>
#include <utility>

#include "apgd.cuh"
#include "cuda_check.h"
#include "cuda_context.h"
#include "cuda_network.h"
#include "device_memory.h"
#include "errors.h"
#include "gather_rows.cuh"
#include "lagged_live_list.h"
#include "nvtx.h"
#include "stream_copy.h"

namespace nudge::cuda {

namespace {

class CudaApgdDevice : public ApgdDevice {
 public:
  CudaApgdDevice(CudaContext& ctx, const Architecture& arch, std::vector<const float*> params, const ApgdRunInput& in)
      : ctx_(ctx), params_(std::move(params)), in_(in), net_(ctx, arch, &ctx.chunk_pool()),
        live_(in.m, "apgd", ctx.chunk_pool()) {
    const size_t m = in.m, md = m * in.D, mk = m * in.K;
    ReusePool& pool = ctx.chunk_pool();
    x0_ = DeviceBuffer<float>(md, "apgd: clean images", pool);
    x_ = DeviceBuffer<float>(md, "apgd: iterates", pool);
    x_prev_ = DeviceBuffer<float>(md, "apgd: previous iterates", pool);
    x_best_ = DeviceBuffer<float>(md, "apgd: best iterates", pool);
    g_best_ = DeviceBuffer<float>(md, "apgd: best iterates' gradients", pool);
    g_next_ = DeviceBuffer<float>(md, "apgd: step gradients", pool);
    adv_ = DeviceBuffer<float>(md, "apgd: adversarial examples", pool);
    batch_x_ = DeviceBuffer<float>(md, "apgd: gathered batch", pool);
    batch_grad_ = DeviceBuffer<float>(md, "apgd: batch input gradients", pool);
    dlogits_ = DeviceBuffer<float>(mk, "apgd: logit gradients", pool);
    loss_ = DeviceBuffer<float>(m, "apgd: losses", pool);
    eps_ = DeviceBuffer<float>(m, "apgd: radii", pool);
    label_ = DeviceBuffer<int32_t>(m, "apgd: labels", pool);
    if (in.target) target_ = DeviceBuffer<int32_t>(m, "apgd: targets", pool);
    point_ = DeviceBuffer<uint32_t>(m, "apgd: points", pool);
    pred_ = DeviceBuffer<int32_t>(m, "apgd: predictions", pool);
    entry_ = DeviceBuffer<ApgdEntry>(m, "apgd: entry states", pool);
    net_.reserve(in.m);
    const cudaStream_t s = ctx_.stream();
    upload(x0_.get(), in.x0, md, s);
    upload(eps_.get(), in.eps, m, s);
    upload(label_.get(), in.label, m, s);
    if (in.target) upload(target_.get(), in.target, m, s);
    upload(point_.get(), in.point, m, s);
    // From pageable memory these copies have left the host arrays when they return; `in`'s pointers are not kept.
    in_.x0 = nullptr;
    in_.label = in_.target = nullptr;
    in_.eps = nullptr;
    in_.point = nullptr;
    state_.entries = in.m;
    state_.D = in.D;
    state_.K = in.K;
    state_.norm = in.norm;
    state_.loss = in.loss;
    state_.x0 = x0_.get();
    state_.label = label_.get();
    state_.target = target_.get();
    state_.eps = eps_.get();
    state_.point = point_.get();
    state_.x = x_.get();
    state_.x_prev = x_prev_.get();
    state_.x_best = x_best_.get();
    state_.g_best = g_best_.get();
    state_.g_next = g_next_.get();
    state_.adv = adv_.get();
    state_.entry = entry_.get();
    state_.seed = in.seed;
    state_.attack = in.attack;
    state_.key_restart = in.key_restart;
  }

  ~CudaApgdDevice() override {
    // Queued iterations still use the pool's blocks, which go back to the pool (and on to the next run) as the
    // members are destroyed. A destructor must not throw.
    cudaStreamSynchronize(ctx_.stream());
  }

  void start() override {
    NvtxRange range("apgd start");
    const cudaStream_t s = ctx_.stream();
    apgd_start_cuda(state_, s);
    // finish() downloads every row: those of entries never broken are zeros, not a pool block's old contents.
    CUDA_CHECK(cudaMemsetAsync(adv_.get(), 0, adv_.size() * sizeof(float), s));
    live_.reset(s);
  }

  void evaluate(int count) override {
    NvtxRange range("apgd evaluate");
    const cudaStream_t s = ctx_.stream();
    gather_rows_cuda(x_.get(), live_.list(), count, in_.D, batch_x_.get(), s);
    net_.forward(params_, batch_x_.get(), count);
    apgd_loss_cuda(state_, rows(count), s);
    net_.backward(params_, dlogits_.get(), count, nullptr, batch_grad_.get());
  }

  void track(int count, const ApgdTrackStep& t) override { apgd_track_cuda(state_, rows(count), t, ctx_.stream()); }

  void step(int count, float alpha) override { apgd_step_cuda(state_, rows(count), alpha, ctx_.stream()); }

  void compact(int count) override { live_.compact(count, ctx_.stream()); }

  // At the lag and never earlier (lagged_live_list.h).
  bool compaction_ready(bool wait) override {
    if (wait) live_.wait();
    return wait;
  }

  int adopt_compaction() override { return live_.adopt(); }

  int compaction_lag() const override { return kApgdCompactionLag; }

  ApgdRunResult finish() override {
    NvtxRange range("apgd finish");
    const cudaStream_t s = ctx_.stream();
    const size_t m = in_.m;
    const std::vector<ApgdEntry> entries = download_vector(entry_, m, s);
    std::vector<float> adv = download_vector(adv_, m * in_.D, s);
    CUDA_CHECK(cudaStreamSynchronize(s));
    return attack_run_result(entries, std::move(adv));
  }

 private:
  ApgdRows rows(int count) const {
    ApgdRows r;
    r.count = count;
    r.list = live_.list();
    r.logits = net_.logits();
    r.dlogits = dlogits_.get();
    r.loss = loss_.get();
    r.pred = pred_.get();
    r.grad = batch_grad_.get();
    r.keep = live_.keep();
    return r;
  }

  CudaContext& ctx_;
  std::vector<const float*> params_;
  ApgdRunInput in_;
  CudaNetwork net_;
  LaggedLiveList live_;
  ApgdState state_;
  DeviceBuffer<float> x0_, x_, x_prev_, x_best_, g_best_, g_next_, adv_, batch_x_, batch_grad_, dlogits_, loss_, eps_;
  DeviceBuffer<int32_t> label_, target_, pred_;
  DeviceBuffer<uint32_t> point_;
  DeviceBuffer<ApgdEntry> entry_;
};

}  // namespace

std::unique_ptr<ApgdDevice> make_cuda_apgd_device(CudaContext& ctx, const Architecture& arch,
                                                  std::vector<const float*> params, const ApgdRunInput& in) {
  const int K = arch.num_classes();
  if (in.m < 1 || in.D != static_cast<int>(arch.input.size()) || in.K != K || !in.x0 || !in.label || !in.eps ||
      !in.point)
    throw InternalError("make_cuda_apgd_device: a run that does not fit the loaded model");
  if (in.loss == ApgdLoss::DlrTargeted && !in.target) throw InternalError("make_cuda_apgd_device: targets missing");
  for (int e = 0; e < in.m; ++e) {
    const bool bad_target = in.target && (in.target[e] < 0 || in.target[e] >= K);
    if (in.label[e] < 0 || in.label[e] >= K || bad_target)
      throw InternalError("apgd: entry " + std::to_string(e) + " has label " + std::to_string(in.label[e]) +
                          (in.target ? " and target " + std::to_string(in.target[e]) : std::string()) +
                          "; the model has " + std::to_string(K) + " classes");
  }
  return std::make_unique<CudaApgdDevice>(ctx, arch, std::move(params), in);
}

}  // namespace nudge::cuda
