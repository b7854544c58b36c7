#include "cuda_fab.h"

#include <cuda_runtime_api.h>

#include <string>
#include <utility>

#include "cuda_check.h"
#include "cuda_context.h"
#include "cuda_network.h"
#include "device_memory.h"
#include "errors.h"
#include "fab.cuh"
#include "gather_rows.cuh"
#include "lagged_live_list.h"
#include "nvtx.h"
#include "stream_copy.h"

namespace nudge::cuda {

namespace {

class CudaFabDevice : public FabDevice {
 public:
  CudaFabDevice(CudaContext& ctx, const Architecture& arch, std::vector<const float*> params, const FabRunInput& in)
      : ctx_(ctx), params_(std::move(params)), m_(in.m), D_(in.D), net_(ctx, arch, &ctx.chunk_pool()),
        live_(in.m, "fab", ctx.chunk_pool()) {
    const size_t m = in.m, md = m * in.D, mk = m * in.K;
    ReusePool& pool = ctx.chunk_pool();
    x0_ = DeviceBuffer<float>(md, "fab: clean images", pool);
    x_ = DeviceBuffer<float>(md, "fab: iterates", pool);
    adv_ = DeviceBuffer<float>(md, "fab: adversarial examples", pool);
    batch_x_ = DeviceBuffer<float>(md, "fab: gathered batch", pool);
    batch_grad_ = DeviceBuffer<float>(md, "fab: batch input gradients", pool);
    dlogits_ = DeviceBuffer<float>(mk, "fab: logit gradients", pool);
    g_ = DeviceBuffer<float>(m, "fab: boundary values", pool);
    eps_ = DeviceBuffer<float>(m, "fab: radii", pool);
    label_ = DeviceBuffer<int32_t>(m, "fab: labels", pool);
    target_ = DeviceBuffer<int32_t>(m, "fab: targets", pool);
    pred_ = DeviceBuffer<int32_t>(m, "fab: predictions", pool);
    entry_ = DeviceBuffer<FabEntry>(m, "fab: entry states", pool);
    net_.reserve(in.m);
    fab_update_prepare(in.D);
    const cudaStream_t s = ctx_.stream();
    // From pageable memory these copies have left the host arrays when they return; `in`'s pointers are not kept.
    upload(x0_.get(), in.x0, md, s);
    upload(eps_.get(), in.eps, m, s);
    upload(label_.get(), in.label, m, s);
    upload(target_.get(), in.target, m, s);
    state_.entries = in.m;
    state_.D = in.D;
    state_.K = in.K;
    state_.x0 = x0_.get();
    state_.label = label_.get();
    state_.target = target_.get();
    state_.eps = eps_.get();
    state_.x = x_.get();
    state_.adv = adv_.get();
    state_.entry = entry_.get();
  }

  ~CudaFabDevice() override {
    // Queued iterations still use the pool's blocks, which go back to the pool (and on to the next run) as the
    // members are destroyed. A destructor must not throw.
    cudaStreamSynchronize(ctx_.stream());
  }

  void start() override {
    NvtxRange range("fab start");
    const cudaStream_t s = ctx_.stream();
    fab_start_cuda(state_, s);
    live_.reset(s);
  }

  void evaluate(int count, bool need_grad) override {
    NvtxRange range("fab evaluate");
    const cudaStream_t s = ctx_.stream();
    gather_rows_cuda(x_.get(), live_.list(), count, D_, batch_x_.get(), s);
    net_.forward(params_, batch_x_.get(), count);
    fab_boundary_cuda(state_, rows(count, need_grad), s);
    if (need_grad) net_.backward(params_, dlogits_.get(), count, nullptr, batch_grad_.get());
  }

  void update(int count, const FabStep& st) override {
    NvtxRange range("fab update");
    fab_update_cuda(state_, rows(count, st.need_grad), st, ctx_.stream());
  }

  void compact(int count) override { live_.compact(count, ctx_.stream()); }

  // At the lag and never earlier (lagged_live_list.h).
  bool compaction_ready(bool wait) override {
    if (wait) live_.wait();
    return wait;
  }

  int adopt_compaction() override { return live_.adopt(); }

  int compaction_lag() const override { return kFabCompactionLag; }

  FabRunResult finish() override {
    NvtxRange range("fab finish");
    const cudaStream_t s = ctx_.stream();
    const size_t m = m_;
    const std::vector<FabEntry> entries = download_vector(entry_, m, s);
    std::vector<float> adv = download_vector(adv_, m * D_, s);
    CUDA_CHECK(cudaStreamSynchronize(s));
    return attack_run_result(entries, std::move(adv));
  }

 private:
  // The rows of the list's first `count`; the input gradients only when the evaluation took them.
  FabRows rows(int count, bool with_grad) const {
    FabRows r;
    r.count = count;
    r.list = live_.list();
    r.logits = net_.logits();
    r.dlogits = dlogits_.get();
    r.g = g_.get();
    r.pred = pred_.get();
    r.grad = with_grad ? batch_grad_.get() : nullptr;
    r.keep = live_.keep();
    return r;
  }

  CudaContext& ctx_;
  std::vector<const float*> params_;
  int m_, D_;
  CudaNetwork net_;
  LaggedLiveList live_;
  FabState state_;
  DeviceBuffer<float> x0_, x_, adv_, batch_x_, batch_grad_, dlogits_, g_, eps_;
  DeviceBuffer<int32_t> label_, target_, pred_;
  DeviceBuffer<FabEntry> entry_;
};

}  // namespace

std::unique_ptr<FabDevice> make_cuda_fab_device(CudaContext& ctx, const Architecture& arch,
                                                std::vector<const float*> params, const FabRunInput& in) {
  const int K = arch.num_classes();
  if (in.m < 1 || in.D != static_cast<int>(arch.input.size()) || in.K != K || !in.x0 || !in.label || !in.target ||
      !in.eps)
    throw InternalError("make_cuda_fab_device: a run that does not fit the loaded model");
  if (in.D > kFabMaxPixels)
    throw InputError("FAB-T: images of " + std::to_string(in.D) + " pixels; at most " + std::to_string(kFabMaxPixels) +
                     " are supported");
  for (int e = 0; e < in.m; ++e)
    if (in.label[e] < 0 || in.label[e] >= K || in.target[e] < 0 || in.target[e] >= K || in.target[e] == in.label[e])
      throw InternalError("fab: entry " + std::to_string(e) + " has label " + std::to_string(in.label[e]) +
                          " and target " + std::to_string(in.target[e]) + "; the model has " + std::to_string(K) +
                          " classes");
  // Before anything is allocated: the update keeps a row's sort and steps in one block's shared memory.
  int optin = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, ctx.device()));
  const size_t need = fab_update_shared_bytes(in.D);
  if (need > static_cast<size_t>(optin))
    throw InputError("FAB-T on the GPU: an image of D = " + std::to_string(in.D) + " pixels needs " +
                     format_bytes(need) + " of shared memory per block for its projections; device " +
                     std::to_string(ctx.device()) + " allows " + format_bytes(static_cast<size_t>(optin)) +
                     " (run FAB-T with --device cpu)");
  return std::make_unique<CudaFabDevice>(ctx, arch, std::move(params), in);
}

}  // namespace nudge::cuda
