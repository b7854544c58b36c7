// A Backend that forwards every call to another one (a CPU backend by default). Test doubles derive from it and
// override only what they watch or break: the engine's out-of-memory path, its chunk schedule.
#pragma once
#include <memory>
#include <string>

#include "backend.h"
#include "cpu_backend.h"

namespace nudge::testing_support {

class DelegatingBackend : public Backend {
 public:
  explicit DelegatingBackend(std::unique_ptr<Backend> inner = make_cpu_backend()) : inner_(std::move(inner)) {}
  std::string name() const override { return "delegating " + inner_->name(); }
  bool is_gpu() const override { return inner_->is_gpu(); }
  void load_model(const Model& m) override { inner_->load_model(m); }
  void store_model(Model& m) override { inner_->store_model(m); }
  TrainState export_train_state() override { return inner_->export_train_state(); }
  void import_train_state(const TrainState& s) override { inner_->import_train_state(s); }
  void predict(const float* x, int n, float* p) override { inner_->predict(x, n, p); }
  TrainStepResult train_step(const float* x, const int32_t* y, int n, const AdamConfig& a) override {
    return inner_->train_step(x, y, n, a);
  }
  TrainStepResult train_step_trades(const float* xc, const float* xa, const int32_t* y, int n, float beta,
                                    const AdamConfig& a) override {
    return inner_->train_step_trades(xc, xa, y, n, beta, a);
  }
  void logit_backprop(const float* x, int n, const LogitGradient& f, float* g) override {
    inner_->logit_backprop(x, n, f, g);
  }
  void input_gradient(const float* x, int n, const float* t, const int32_t* k, const int32_t* c, LossKind l, float kappa,
                      float* p, float* lo, float* g) override {
    inner_->input_gradient(x, n, t, k, c, l, kappa, p, lo, g);
  }
  std::unique_ptr<OptimizeChunk> begin_optimize(const ChunkInput& in, const StepConfig& cfg) override {
    return inner_->begin_optimize(in, cfg);
  }
  std::unique_ptr<SquareDevice> begin_square(const SquareRunInput& in) override {
    return inner_->begin_square(in);
  }
  std::unique_ptr<ApgdDevice> begin_apgd(const ApgdRunInput& in) override { return inner_->begin_apgd(in); }
  // Large, so that the engine's chunks are what a test's job.chunk says.
  int preferred_chunk() const override { return 1 << 20; }

 protected:
  Backend& inner() { return *inner_; }

 private:
  std::unique_ptr<Backend> inner_;
};

}  // namespace nudge::testing_support
