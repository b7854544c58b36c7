#include "apgd_host_device.h"

#include <omp.h>

#include <algorithm>
#include <vector>

#include "apgd_rows.h"
#include "errors.h"
#include "host_live_list.h"

namespace nudge {

namespace {

class HostApgdDevice : public ApgdDevice {
 public:
  HostApgdDevice(Backend& backend, const ApgdRunInput& in, int lag, bool reverse_lanes)
      : backend_(backend), in_(in), lag_(lag), lanes_{reverse_lanes}, m_(in.m), D_(in.D), K_(in.K) {
    const size_t md = static_cast<size_t>(m_) * D_;
    x0_.assign(in.x0, in.x0 + md);
    label_.assign(in.label, in.label + m_);
    if (in.target) target_.assign(in.target, in.target + m_);
    eps_.assign(in.eps, in.eps + m_);
    point_.assign(in.point, in.point + m_);
    in_.x0 = nullptr;  // the copies above are what the run reads
    in_.label = in_.target = nullptr;
    in_.eps = nullptr;
    in_.point = nullptr;
    x_.assign(md, 0.0f);
    x_prev_.assign(md, 0.0f);  // read only with weight 1 - alpha = 0 by the first step
    x_best_.resize(md);
    g_best_.resize(md);
    g_next_.resize(md);
    adv_.resize(md);
    entry_.assign(m_, ApgdEntry{});
    keep_.assign(m_, 0);
    loss_.resize(m_);
    pred_.resize(m_);
    partials_.assign(static_cast<size_t>(std::max(1, omp_get_max_threads())) * kApgdPartials, 0.0);
  }

  void start() override {
    live_.reset(m_);
#pragma omp parallel for schedule(static)
    for (int e = 0; e < m_; ++e) {
      HostLanes b = lanes_;
      const ApgdKey k{in_.seed, in_.attack, in_.key_restart, point_[e]};
      apgd_start_row(b, partial(), k, eps_[e], in_.norm, row(x0_, e), row(x_, e), D_);
    }
  }

  void evaluate(int count) override {
    xb_.resize(static_cast<size_t>(count) * D_);
    gb_.resize(xb_.size());
    for (int r = 0; r < count; ++r) std::copy_n(row(x_, live_.list[r]), D_, xb_.data() + static_cast<size_t>(r) * D_);
    backend_.logit_backprop(xb_.data(), count, [&](int first, int n, const float* logits, float* dz) {
      for (int i = 0; i < n; ++i) {
        const int r = first + i, e = live_.list[r];
        int pred = 0;
        loss_[r] = apgd_loss_one(in_.loss, logits + static_cast<size_t>(i) * K_, K_, label_[e],
                                 target_.empty() ? -1 : target_[e], dz + static_cast<size_t>(i) * K_, &pred);
        pred_[r] = pred;
      }
    }, gb_.data());
  }

  void track(int count, const ApgdTrackStep& t) override {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < count; ++r) {
      const int e = live_.list[r];
      const ApgdTrackRow tr{&entry_[e], loss_[r], pred_[r] != label_[e], eps_[e], row(x_, e),
                            gb_.data() + static_cast<size_t>(r) * D_, row(g_next_, e), row(x_best_, e),
                            row(g_best_, e), row(adv_, e), &keep_[r]};
      HostLanes b = lanes_;
      apgd_track_row(b, tr, t, D_);
    }
  }

  void step(int count, float alpha) override {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < count; ++r) {
      const int e = live_.list[r];
      if (entry_[e].done) continue;
      HostLanes b = lanes_;
      apgd_step_row(b, partial(), row(x_, e), row(x_prev_, e), row(g_next_, e), row(x0_, e), D_, eps_[e],
                    entry_[e].eta, alpha, in_.norm);
    }
  }

  void compact(int count) override { live_.compact(keep_.data(), count); }

  // Deterministic: the compaction is taken exactly when the driver stops waiting for it, lag iterations on.
  bool compaction_ready(bool wait) override { return wait; }

  int adopt_compaction() override { return live_.adopt(); }

  int compaction_lag() const override { return lag_; }

  ApgdRunResult finish() override { return attack_run_result(entry_, std::move(adv_)); }

 private:
  float* row(std::vector<float>& v, int e) { return v.data() + static_cast<size_t>(e) * D_; }
  double* partial() { return partials_.data() + static_cast<size_t>(omp_get_thread_num()) * kApgdPartials; }

  Backend& backend_;
  ApgdRunInput in_;
  int lag_;
  HostLanes lanes_;
  int m_, D_, K_;
  std::vector<float> x0_, eps_;
  std::vector<int32_t> label_, target_;
  std::vector<uint32_t> point_;
  std::vector<float> x_, x_prev_, x_best_, g_best_, g_next_, adv_;
  std::vector<ApgdEntry> entry_;
  std::vector<uint8_t> keep_;  // by row of the list
  std::vector<float> loss_;    // by row
  std::vector<int> pred_;      // by row
  HostLiveList live_;
  std::vector<float> xb_, gb_;  // the evaluated rows' images and input gradients
  std::vector<double> partials_;
};

}  // namespace

std::unique_ptr<ApgdDevice> make_host_apgd_device(Backend& backend, const ApgdRunInput& in, int lag,
                                                  bool reverse_lanes) {
  if (in.m < 1 || in.D < 1 || in.K < 2 || !in.x0 || !in.label || !in.eps || !in.point)
    throw InternalError("make_host_apgd_device: an empty or incomplete run");
  if (in.loss == ApgdLoss::DlrTargeted && !in.target) throw InternalError("make_host_apgd_device: targets missing");
  return std::make_unique<HostApgdDevice>(backend, in, lag, reverse_lanes);
}

}  // namespace nudge
