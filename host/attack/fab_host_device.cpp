#include "fab_host_device.h"

#include <omp.h>

#include <algorithm>
#include <string>
#include <vector>

#include "errors.h"
#include "fab_rows.h"
#include "host_live_list.h"

namespace nudge {

namespace {

// One thread's row scratch (FabScratch's arrays).
struct HostFabScratch {
  std::vector<double> key, partial;
  std::vector<int32_t> idx;
  std::vector<float> d_i, d_0;
  FabScratch view(int D) {
    if (d_i.size() != static_cast<size_t>(D)) {
      key.resize(fab_sort_capacity(D));
      idx.resize(key.size());
      d_i.resize(D);
      d_0.resize(D);
      partial.assign(kFabPartials, 0.0);
    }
    return FabScratch{key.data(), idx.data(), d_i.data(), d_0.data(), partial.data()};
  }
};

class HostFabDevice : public FabDevice {
 public:
  HostFabDevice(Backend& backend, const FabRunInput& in, int lag, bool reverse_lanes)
      : backend_(backend), lag_(lag), lanes_{reverse_lanes}, m_(in.m), D_(in.D), K_(in.K) {
    const size_t md = static_cast<size_t>(m_) * D_;
    x0_.assign(in.x0, in.x0 + md);
    label_.assign(in.label, in.label + m_);
    target_.assign(in.target, in.target + m_);
    eps_.assign(in.eps, in.eps + m_);
    x_.resize(md);
    adv_.resize(md);
    entry_.resize(m_);
    keep_.resize(m_);
    g_.resize(m_);
    pred_.resize(m_);
    scratch_.resize(static_cast<size_t>(std::max(1, omp_get_max_threads())));
  }

  void start() override {
    x_ = x0_;
    std::fill(adv_.begin(), adv_.end(), 0.0f);
    std::fill(entry_.begin(), entry_.end(), FabEntry{});
    live_.reset(m_);
  }

  void evaluate(int count, bool need_grad) override {
    xb_.resize(static_cast<size_t>(count) * D_);
    gb_.resize(need_grad ? xb_.size() : 0);
    for (int r = 0; r < count; ++r) std::copy_n(row(x_, live_.list[r]), D_, xb_.data() + static_cast<size_t>(r) * D_);
    backend_.logit_backprop(xb_.data(), count, [&](int first, int n, const float* logits, float* dz) {
      for (int i = 0; i < n; ++i) {
        const int r = first + i, e = live_.list[r];
        int pred = 0;
        g_[r] = fab_boundary_one(logits + static_cast<size_t>(i) * K_, K_, label_[e], target_[e],
                                 dz + static_cast<size_t>(i) * K_, &pred);
        pred_[r] = pred;
      }
    }, need_grad ? gb_.data() : nullptr);
  }

  void update(int count, const FabStep& st) override {
    // Rows are independent (the projections are most of FAB's host time): in parallel, each row's arithmetic the
    // same on any thread.
#pragma omp parallel for schedule(dynamic, 4)
    for (int r = 0; r < count; ++r) {
      const int e = live_.list[r];
      HostLanes b = lanes_;
      const FabScratch s = scratch_[static_cast<size_t>(omp_get_thread_num())].view(D_);
      const FabUpdateRow u{&entry_[e], row(x_, e), row(x0_, e), st.need_grad ? gb_.data() + static_cast<size_t>(r) * D_ : nullptr,
                           g_[r], pred_[r] != label_[e], eps_[e], row(adv_, e), &keep_[r]};
      fab_update_row(b, s, u, st, D_);
    }
  }

  void compact(int count) override { live_.compact(keep_.data(), count); }

  // Deterministic: the compaction is taken exactly when the driver stops waiting for it, lag iterations on.
  bool compaction_ready(bool wait) override { return wait; }

  int adopt_compaction() override { return live_.adopt(); }

  int compaction_lag() const override { return lag_; }

  FabRunResult finish() override { return attack_run_result(entry_, std::move(adv_)); }

 private:
  float* row(std::vector<float>& v, int e) { return v.data() + static_cast<size_t>(e) * D_; }

  Backend& backend_;
  int lag_;
  HostLanes lanes_;
  int m_, D_, K_;
  std::vector<float> x0_, eps_, x_, adv_;
  std::vector<int32_t> label_, target_;
  std::vector<FabEntry> entry_;
  std::vector<uint8_t> keep_;  // by row of the list
  std::vector<float> g_;       // by row
  std::vector<int> pred_;      // by row
  HostLiveList live_;
  std::vector<float> xb_, gb_;  // the evaluated rows' images and input gradients
  std::vector<HostFabScratch> scratch_;
};

}  // namespace

std::unique_ptr<FabDevice> make_host_fab_device(Backend& backend, const FabRunInput& in, int lag, bool reverse_lanes) {
  if (in.m < 1 || in.D < 1 || in.K < 2 || !in.x0 || !in.label || !in.target || !in.eps)
    throw InternalError("make_host_fab_device: an empty or incomplete run");
  if (in.D > kFabMaxPixels)
    throw InputError("FAB-T: images of " + std::to_string(in.D) + " pixels; at most " + std::to_string(kFabMaxPixels) +
                     " are supported");
  for (int e = 0; e < in.m; ++e)
    if (in.label[e] < 0 || in.label[e] >= in.K || in.target[e] < 0 || in.target[e] >= in.K || in.target[e] == in.label[e])
      throw InternalError("fab: entry " + std::to_string(e) + " has label " + std::to_string(in.label[e]) +
                          " and target " + std::to_string(in.target[e]) + " with " + std::to_string(in.K) + " classes");
  return std::make_unique<HostFabDevice>(backend, in, lag, reverse_lanes);
}

}  // namespace nudge
