#include "cuda_square.h"

#include <cuda_runtime_api.h>

#include <algorithm>

#include <string>
#include <utility>

#include "cuda_check.h"
#include "cuda_context.h"
#include "cuda_network.h"
#include "device_memory.h"
#include "errors.h"
#include "lagged_live_list.h"
#include "nvtx.h"
#include "square.cuh"
#include "square_l2_rows.h"
#include "stream_copy.h"

namespace nudge::cuda {

namespace {

class CudaSquareDevice : public SquareDevice {
 public:
  CudaSquareDevice(CudaContext& ctx, const Architecture& arch, std::vector<const float*> params,
                   const SquareRunInput& in)
      : ctx_(ctx),
        params_(std::move(params)),
        m_(in.m),
        D_(in.H * in.W),
        l2_(in.norm == Norm::L2),
        net_(ctx, arch, &ctx.chunk_pool()),
        live_(in.m, "square", ctx.chunk_pool()) {
    const size_t m = in.m, md = m * D_;
    ReusePool& pool = ctx.chunk_pool();
    x0_ = DeviceBuffer<float>(md, "square: clean images", pool);
    best_ = DeviceBuffer<float>(md, "square: best images", pool);
    cand_ = DeviceBuffer<float>(md, "square: candidates", pool);
    eps_ = DeviceBuffer<float>(m, "square: radii", pool);
    label_ = DeviceBuffer<int32_t>(m, "square: labels", pool);
    point_ = DeviceBuffer<uint32_t>(m, "square: points", pool);
    entry_ = DeviceBuffer<SquareEntry>(m, "square: entry states", pool);
    const size_t table = in.norm == Norm::L2 ? static_cast<size_t>(square_pattern_offset(std::min(in.H, in.W))) : 0;
    if (table) patterns_ = DeviceBuffer<double>(table, "square: L2 patterns", pool);
    net_.reserve(in.m);
    const cudaStream_t s = ctx_.stream();
    // From pageable memory these copies have left the host arrays when they return; `in`'s pointers are not kept.
    upload(x0_.get(), in.x0, md, s);
    upload(eps_.get(), in.eps, m, s);
    upload(label_.get(), in.label, m, s);
    upload(point_.get(), in.point, m, s);
    if (table) upload(patterns_.get(), in.patterns, table, s);
    state_.entries = in.m;
    state_.H = in.H;
    state_.W = in.W;
    state_.K = in.K;
    state_.x0 = x0_.get();
    state_.label = label_.get();
    state_.eps = eps_.get();
    state_.point = point_.get();
    state_.best = best_.get();
    state_.entry = entry_.get();
    state_.patterns = table ? patterns_.get() : nullptr;
    state_.seed = in.seed;
    state_.attack = in.attack;
    state_.restart = in.restart;
  }

  ~CudaSquareDevice() override {
    // Queued iterations still use the pool's blocks, which go back to the pool as the members are destroyed.
    cudaStreamSynchronize(ctx_.stream());
  }

  void start() override {
    NvtxRange range("square start");
    const cudaStream_t s = ctx_.stream();
    if (l2_) square_l2_start_cuda(state_, s);
    else square_start_cuda(state_, s);
    // Rows of done entries are never proposed but still go through the forward pass until the list drops them:
    // zeros, not a pool block's old contents (which could hold NaNs, and which initcheck would flag).
    CUDA_CHECK(cudaMemsetAsync(cand_.get(), 0, cand_.size() * sizeof(float), s));
    live_.reset(s);
  }

  void propose(int count, int it, int side) override {
    if (l2_) square_l2_propose_cuda(state_, rows(count), it, side, ctx_.stream());
    else square_propose_cuda(state_, rows(count), it, side, ctx_.stream());
  }

  void evaluate(int count, int it) override {
    NvtxRange range("square evaluate");
    // At the start every entry is a row, in order, and the images are the best ones themselves.
    net_.forward(params_, it == 0 ? best_.get() : cand_.get(), count);
    SquareRows r = rows(count);
    if (it == 0) r.cand = nullptr;
    square_accept_cuda(state_, r, it, ctx_.stream());
  }

  void compact(int count) override { live_.compact(count, ctx_.stream()); }

  // At the lag and never earlier (lagged_live_list.h).
  bool compaction_ready(bool wait) override {
    if (wait) live_.wait();
    return wait;
  }

  int adopt_compaction() override { return live_.adopt(); }

  int compaction_lag() const override { return kSquareCompactionLag; }

  SquareRunResult finish() override {
    NvtxRange range("square finish");
    const cudaStream_t s = ctx_.stream();
    const size_t m = m_;
    const std::vector<SquareEntry> entries = download_vector(entry_, m, s);
    // Every row is an image in [0, 1]; only the broken ones are adversarial.
    std::vector<float> best = download_vector(best_, m * D_, s);
    CUDA_CHECK(cudaStreamSynchronize(s));
    return attack_run_result(entries, std::move(best));
  }

 private:
  SquareRows rows(int count) const {
    SquareRows r;
    r.count = count;
    r.list = live_.list();
    r.cand = cand_.get();
    r.logits = net_.logits();
    r.keep = live_.keep();
    return r;
  }

  CudaContext& ctx_;
  std::vector<const float*> params_;
  int m_, D_;
  bool l2_;
  CudaNetwork net_;
  LaggedLiveList live_;
  SquareState state_;
  DeviceBuffer<float> x0_, best_, cand_, eps_;
  DeviceBuffer<int32_t> label_;
  DeviceBuffer<uint32_t> point_;
  DeviceBuffer<SquareEntry> entry_;
  DeviceBuffer<double> patterns_;
};

}  // namespace

std::unique_ptr<SquareDevice> make_cuda_square_device(CudaContext& ctx, const Architecture& arch,
                                                      std::vector<const float*> params, const SquareRunInput& in) {
  const int K = arch.num_classes();
  if (in.m < 1 || in.H < 2 || in.W < 2 || in.H * in.W != static_cast<int>(arch.input.size()) || in.K != K ||
      !in.x0 || !in.label || !in.eps || !in.point)
    throw InternalError("make_cuda_square_device: a run that does not fit the loaded model");
  if (in.norm == Norm::L2 && (!in.patterns || static_cast<long>(in.pattern_count) !=
                                                  square_pattern_offset(std::min(in.H, in.W))))
    throw InternalError("make_cuda_square_device: L2 without its pattern table");
  // An image whose L2 scratch does not fit a block's shared memory runs on the host (square_l2.cu).
  if (in.norm == Norm::L2 && !square_l2_fits(in.H, in.W)) return nullptr;
  for (int e = 0; e < in.m; ++e)
    if (in.label[e] < 0 || in.label[e] >= K)
      throw InternalError("square: entry " + std::to_string(e) + " has label " + std::to_string(in.label[e]) +
                          "; the model has " + std::to_string(K) + " classes");
  return std::make_unique<CudaSquareDevice>(ctx, arch, std::move(params), in);
}

}  // namespace nudge::cuda
