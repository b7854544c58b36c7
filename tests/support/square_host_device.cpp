#include "square_host_device.h"

#include <algorithm>
#include <stdexcept>
#include <vector>

#include "apgd_rows.h"
#include "host_live_list.h"
#include "optimize_math.h"
#include "square_l2_rows.h"
#include "square_rows.h"

namespace nudge::test {

namespace {

class HostSquareDevice : public SquareDevice {
 public:
  HostSquareDevice(Backend& backend, const SquareRunInput& in, int lag, bool reverse_lanes)
      : backend_(backend), in_(in), lag_(lag), lanes_{reverse_lanes}, m_(in.m), D_(in.H * in.W) {
    const size_t md = static_cast<size_t>(m_) * D_;
    x0_.assign(in.x0, in.x0 + md);
    label_.assign(in.label, in.label + m_);
    eps_.assign(in.eps, in.eps + m_);
    point_.assign(in.point, in.point + m_);
    if (in.norm == Norm::L2)
      patterns_.assign(in.patterns, in.patterns + square_pattern_offset(std::min(in.H, in.W)));
    in_.patterns = nullptr;
    in_.x0 = nullptr;
    in_.label = nullptr;
    in_.eps = nullptr;
    in_.point = nullptr;
    best_.resize(md);
    cand_.resize(md);
    entry_.assign(m_, SquareEntry{});
    keep_.assign(m_, 0);
    logits_.resize(static_cast<size_t>(m_) * in.K);
    nu_.resize(D_);
    partial_.resize(kApgdPartials);
  }

  void start() override {
    live_.reset(m_);
    for (int e = 0; e < m_; ++e) {
      HostLanes b = lanes_;
      if (in_.norm == Norm::L2)
        square_l2_start_row(b, partial_.data(), nu_.data(), key(e), eps_[e], row(x0_, e), row(best_, e), in_.H,
                            in_.W, patterns_.data());
      else
        square_linf_start_row(b, key(e), eps_[e], row(x0_, e), row(best_, e), in_.H, in_.W);
    }
  }

  void propose(int count, int it, int side) override {
    int flags[kRowLanes + 1];
    for (int r = 0; r < count; ++r) {
      const int e = live_.list[r];
      if (entry_[e].done) continue;
      HostLanes b = lanes_;
      if (in_.norm == Norm::L2)
        square_l2_propose_row(b, partial_.data(), nu_.data(), key(e), eps_[e], it, side, row(x0_, e), row(best_, e),
                              row(cand_, r), in_.H, in_.W, patterns_.data());
      else
        square_linf_propose_row(b, flags, key(e), eps_[e], it, side, row(x0_, e), row(best_, e), row(cand_, r),
                                in_.H, in_.W);
    }
  }

  void evaluate(int count, int it) override {
    const int K = in_.K;
    backend_.logit_backprop(it == 0 ? best_.data() : cand_.data(), count, [&](int first, int n, const float* z, float*) {
      std::copy_n(z, static_cast<size_t>(n) * K, logits_.data() + static_cast<size_t>(first) * K);
    }, nullptr);
    for (int r = 0; r < count; ++r) {
      const int e = live_.list[r];
      const float margin = attack_margin(logits_.data() + static_cast<size_t>(r) * K, K, label_[e]);
      HostLanes b = lanes_;
      square_accept_row(b, &entry_[e], margin, it, it == 0 ? nullptr : row(cand_, r), row(best_, e), D_, &keep_[r]);
    }
  }

  void compact(int count) override { live_.compact(keep_.data(), count); }

  bool compaction_ready(bool wait) override { return wait; }  // exactly at the lag, as on the card

  int adopt_compaction() override { return live_.adopt(); }

  int compaction_lag() const override { return lag_; }

  SquareRunResult finish() override { return attack_run_result(entry_, best_); }

 private:
  ApgdKey key(int e) const { return ApgdKey{in_.seed, in_.attack, in_.restart, point_[e]}; }
  float* row(std::vector<float>& v, int i) { return v.data() + static_cast<size_t>(i) * D_; }

  Backend& backend_;
  SquareRunInput in_;
  int lag_;
  HostLanes lanes_;
  int m_, D_;
  std::vector<float> x0_, eps_, best_, cand_, logits_;
  std::vector<double> patterns_, nu_, partial_;  // L2: the pattern table and one row's scratch
  std::vector<int32_t> label_;
  std::vector<uint32_t> point_;
  std::vector<SquareEntry> entry_;
  std::vector<uint8_t> keep_;
  HostLiveList live_;
};

}  // namespace

std::unique_ptr<SquareDevice> make_host_square_device(Backend& backend, const SquareRunInput& in, int lag,
                                                      bool reverse_lanes) {
  if (in.m < 1 || in.H < 2 || in.W < 2 || in.K < 2 || !in.x0 || !in.label || !in.eps || !in.point ||
      (in.norm == Norm::L2 && (!in.patterns || static_cast<long>(in.pattern_count) !=
                                                   square_pattern_offset(std::min(in.H, in.W)))))
    throw std::invalid_argument("make_host_square_device: an empty or incomplete run");
  return std::make_unique<HostSquareDevice>(backend, in, lag, reverse_lanes);
}

}  // namespace nudge::test
