#include "cpu_backend.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "column_gemm.h"
#include "cpu_forward_session.h"
#include "cpu_network.h"
#include "cpu_train_layers.h"
#include "errors.h"
#include "model_fold.h"
#include "optimize_math.h"
#include "parallel_errors.h"

namespace nudge {

namespace {

// Images per thread per pass when the batch is large: 32 of the reference model's activations (~200 KB) stay in a
// core's L2.
constexpr int kMicroBatch = 32;

// The micro-batch for n images on T threads: at most kMicroBatch, and as even as it can be so that no thread idles
// at the end of a pass (100 images on 2 threads: 4 x 25, not 32, 32, 32, 4). Every image gets its own BLAS calls on
// these paths, so the split never changes a result.
int balanced_micro_batch(int n, int T) {
  if (n <= 0) return kMicroBatch;
  int pieces = (n + kMicroBatch - 1) / kMicroBatch;
  pieces = (pieces + T - 1) / T * T;
  return std::max(1, (n + pieces - 1) / pieces);
}

class CpuBackend;


class CpuOptimizeChunk : public OptimizeChunk {
 public:
  CpuOptimizeChunk(CpuBackend& backend, const ChunkInput& in, const StepConfig& cfg);
  void step() override;
  int active_count() const override { return static_cast<int>(active_.size()); }
  ChunkResult finish() override;

 private:
  // Evaluates the current iterate of the listed entries, records goals and best iterates, and (when `update`)
  // applies one optimizer step to those still active.
  void evaluate_and_update(bool update);

  CpuBackend& backend_;
  StepConfig cfg_;
  int n_, D_, K_;
  std::vector<float> x_, x0_, m_, v_, target_, eps_;
  std::vector<int32_t> kind_, cls_, steps_done_;
  std::vector<uint8_t> goal_reached_;
  std::vector<int> active_;
  ChunkResult result_;
};

class CpuBackend : public Backend {
 public:
  CpuBackend() : threads_(std::max(1, omp_get_max_threads())) {
    // Our parallelism is over images; a BLAS that also spawns threads inside each small GEMM only oversubscribes.
    openblas_set_num_threads(1);
    // Settles the instruction set (and refuses a bad NUDGE_CPU_ISA) here, not inside a parallel region.
    cpu::best_cpu_isa();
  }

  std::string name() const override {
    return std::string("cpu (") + cpu::cpu_isa_name(cpu::best_cpu_isa()) + " + OpenBLAS, " + std::to_string(threads_) +
           " thread" + (threads_ == 1 ? "" : "s") + ")";
  }
  bool is_gpu() const override { return false; }
  int preferred_chunk() const override { return 8192; }

  void load_model(const Model& model) override {
    assert_params_match_architecture(model, "cpu backend");
    arch_ = model.arch;
    specs_ = arch_.params();
    offsets_ = flat_offsets(model);
    const size_t total = offsets_.empty() ? 0 : offsets_.back() + model.params.back().size();
    flat_.resize(total);
    for (size_t i = 0; i < model.params.size(); ++i)
      std::copy(model.params[i].data.begin(), model.params[i].data.end(), flat_.begin() + offsets_[i]);
    // Adam moves every tensor but bn's running statistics, which training's forward sets.
    adam_ranges_.clear();
    for (size_t i = 0; i < specs_.size(); ++i) {
      if (specs_[i].is_buffer) continue;
      const size_t begin = offsets_[i], end = begin + model.params[i].size();
      if (!adam_ranges_.empty() && adam_ranges_.back().second == begin) adam_ranges_.back().second = end;
      else adam_ranges_.emplace_back(begin, end);
    }
    adam_m_.assign(total, 0.0f);
    adam_v_.assign(total, 0.0f);
    adam_t_ = 0;
    folded_ = arch_.has_training_layers();
    refold();
    nets_.clear();
    infer_nets_.clear();
    for (int t = 0; t < threads_; ++t) {
      nets_.push_back(std::make_unique<CpuNetwork>(arch_));
      infer_nets_.push_back(std::make_unique<CpuNetwork>(folded_ ? infer_arch_ : arch_));
    }
    thread_grads_.assign(threads_, std::vector<float>(total));
  }

  void store_model(Model& model) override {
    model.arch = arch_;
    model.params.clear();
    for (size_t i = 0; i < specs_.size(); ++i) {
      Tensor t(specs_[i].shape);
      std::copy(flat_.begin() + offsets_[i], flat_.begin() + offsets_[i] + t.size(), t.data.begin());
      model.params.push_back(std::move(t));
    }
  }

  TrainState export_train_state() override { return {adam_m_, adam_v_, adam_t_}; }

  void import_train_state(const TrainState& state) override {
    if (state.adam_m.size() != flat_.size() || state.adam_v.size() != flat_.size() || state.step < 0)
      throw InternalError("import_train_state: " + std::to_string(state.adam_m.size()) + " moments for a model of " +
                          std::to_string(flat_.size()) + " parameters");
    adam_m_ = state.adam_m;
    adam_v_ = state.adam_v;
    adam_t_ = state.step;
  }

  // The parameters the inference paths run: the folded model's when the loaded one has bn or dropout, else the
  // trained ones themselves (no copy, so those paths cost what they did).
  std::vector<const float*> inference_param_ptrs() const {
    return folded_ ? pointers(infer_flat_, infer_offsets_) : pointers(flat_, offsets_);
  }

  int input_size() const { return arch_.input.size(); }
  int classes() const { return arch_.num_classes(); }
  CpuNetwork& infer_net(int thread) { return *infer_nets_[thread]; }
  int threads() const { return threads_; }

  void predict(const float* x, int n, float* probs) override {
    const auto params = inference_param_ptrs();
    const int D = input_size(), K = classes();
    const int mb = balanced_micro_batch(n, threads_);
    ParallelErrors errors;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads_)
    for (int b = 0; b < n; b += mb) errors.run([&] {
      const int m = std::min(mb, n - b);
      CpuNetwork& nw = *infer_nets_[omp_get_thread_num()];
      nw.forward(params, x + static_cast<size_t>(b) * D, m);
      for (int i = 0; i < m; ++i) softmax(nw.logits() + i * K, K, probs + static_cast<size_t>(b + i) * K);
    });
    errors.rethrow();
  }

  TrainStepResult train_step(const float* x, const int32_t* labels, int n, const AdamConfig& adam) override {
    const int D = input_size(), K = classes();
    return train_on_slices(
        n, 1, adam,
        [&](int begin, int m, float* xb) { std::copy_n(x + static_cast<size_t>(begin) * D, static_cast<size_t>(m) * D, xb); },
        [&](int begin, int m, const float* logits, float* dlogits, TrainStepResult& r) {
          std::vector<float> probs(K), onehot(K);
          for (int i = 0; i < m; ++i) {
            const int y = labels[begin + i];
            std::fill(onehot.begin(), onehot.end(), 0.0f);
            onehot[y] = 1.0f;
            const float* z = logits + i * K;
            r.loss_sum += loss_forward_backward_one(z, K, onehot.data(), TargetKind::OneHot, y, LossKind::CrossEntropy,
                                                    0.0f, probs.data(), dlogits + i * K);
            r.correct += static_cast<int>(std::max_element(z, z + K) - z) == y;
            // The mean over the whole batch, not this thread's slice.
            for (int j = 0; j < K; ++j) dlogits[i * K + j] /= static_cast<float>(n);
          }
        });
  }

  TrainStepResult train_step_trades(const float* x_clean, const float* x_adv, const int32_t* labels, int n, float beta,
                                    const AdamConfig& adam) override {
    const int D = input_size(), K = classes();
    // One forward of [clean; attacked] would give bn the statistics of the two kinds of images mixed, where TRADES
    // (two forwards in train mode) normalises each on its own.
    if (arch_.has_batch_norm())
      throw InputError("--adversarial trades cannot train a model with bn layers (its clean and attacked images go "
                       "through one forward, which would mix their batch statistics); use --adversarial pgd or fgsm");
    // Each thread's slice goes through its network as [clean images; attacked images], one forward and backward.
    return train_on_slices(
        n, 2, adam,
        [&](int begin, int m, float* xb) {
          const size_t len = static_cast<size_t>(m) * D;
          std::copy_n(x_clean + static_cast<size_t>(begin) * D, len, xb);
          std::copy_n(x_adv + static_cast<size_t>(begin) * D, len, xb + len);
        },
        [&](int begin, int m, const float* logits, float* dlogits, TrainStepResult& r) {
          for (int i = 0; i < m; ++i) {
            const int y = labels[begin + i];
            const float *z = logits + i * K, *za = logits + (m + i) * K;
            const TradesTerms t = trades_loss_one(z, za, K, y, beta, 1.0f / static_cast<float>(n), dlogits + i * K,
                                                  dlogits + (m + i) * K);
            r.loss_sum += t.ce;
            r.kl_sum += t.kl;
            r.correct += static_cast<int>(std::max_element(z, z + K) - z) == y;
            r.adv_correct += static_cast<int>(std::max_element(za, za + K) - za) == y;
          }
        });
  }

  void input_gradient(const float* x, int n, const float* target_dist, const int32_t* target_kind,
                      const int32_t* target_class, LossKind loss, float kappa, float* probs, float* loss_out,
                      float* grad) override {
    const auto params = inference_param_ptrs();
    const int D = input_size(), K = classes();
    const int mb = balanced_micro_batch(n, threads_);
    ParallelErrors errors;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads_)
    for (int b = 0; b < n; b += mb) errors.run([&] {
      const int m = std::min(mb, n - b);
      CpuNetwork& nw = *infer_nets_[omp_get_thread_num()];
      nw.forward(params, x + static_cast<size_t>(b) * D, m);
      std::vector<float> dlogits(grad ? static_cast<size_t>(m) * K : 0);
      for (int i = 0; i < m; ++i) {
        const int e = b + i;
        loss_out[e] = loss_forward_backward_one(nw.logits() + i * K, K, target_dist + static_cast<size_t>(e) * K,
                                                static_cast<TargetKind>(target_kind[e]), target_class[e], loss, kappa,
                                                probs + static_cast<size_t>(e) * K,
                                                grad ? dlogits.data() + i * K : nullptr);
      }
      if (grad) nw.backward(params, dlogits.data(), m, nullptr, grad + static_cast<size_t>(b) * D);
    });
    errors.rethrow();
  }

  void logit_backprop(const float* x, int n, const LogitGradient& dlogits_of, float* grad) override {
    const auto params = inference_param_ptrs();
    const int D = input_size(), K = classes();
    const int mb = balanced_micro_batch(n, threads_);
    ParallelErrors errors;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads_)
    for (int b = 0; b < n; b += mb) {
      errors.run([&] {
        const int m = std::min(mb, n - b);
        CpuNetwork& nw = *infer_nets_[omp_get_thread_num()];
        nw.forward(params, x + static_cast<size_t>(b) * D, m);
        std::vector<float> dlogits(static_cast<size_t>(m) * K, 0.0f);
        dlogits_of(b, m, nw.logits(), dlogits.data());
        if (grad) nw.backward(params, dlogits.data(), m, nullptr, grad + static_cast<size_t>(b) * D);
      });
    }
    errors.rethrow();
  }

  std::unique_ptr<ForwardSession> begin_forward_session(int n, int classes) override {
    auto session = make_cpu_forward_session(folded_ ? infer_arch_ : arch_, inference_param_ptrs(), n, threads_);
    return session ? std::move(session) : Backend::begin_forward_session(n, classes);
  }
  // A CPU session owns its activations, and its kernels keep their scratch per thread.
  bool concurrent_forward_sessions() const override {
    return cpu_forward_session_follows(folded_ ? infer_arch_ : arch_);
  }

  std::unique_ptr<OptimizeChunk> begin_optimize(const ChunkInput& in, const StepConfig& cfg) override {
    // x0, x, Adam's m and v and the best images: five floats per pixel and entry.
    const size_t bytes = static_cast<size_t>(in.n) * (5 * static_cast<size_t>(input_size()) + 2 * classes()) * sizeof(float);
    return with_memory_named("a CPU chunk of " + std::to_string(in.n) + " entries", bytes,
                             [&] { return std::make_unique<CpuOptimizeChunk>(*this, in, cfg); });
  }

  static void softmax(const float* z, int K, float* p) { nudge::softmax(z, K, p); }

 private:
  // One Adam step whose gradient is summed over per-thread slices of the batch. Thread t takes examples
  // [begin, begin + m); fill(begin, m, xb) writes its rows_per_example * m input images, and loss(begin, m, logits,
  // dlogits, r) turns their logits into logit gradients (already scaled for the batch mean) and adds to r.
  //
  // A model with bn trains on one slice, the whole batch on one thread: its statistics must be the batch's, and a
  // reduction across slices at every bn layer (forward and backward) is left for when bn models need the speed. The
  // trade-off: such a model's training step uses one core (its inference paths still use all of them). Dropout
  // needs no such thing: each row's mask is keyed by its place in the whole batch, whoever computes it.
  template <class Fill, class Loss>
  TrainStepResult train_on_slices(int n, int rows_per_example, const AdamConfig& adam, Fill&& fill, Loss&& loss) {
    const auto params = pointers(flat_, offsets_);
    const int D = input_size(), K = classes();
    const bool batch_norm = arch_.has_batch_norm();
    if (batch_norm) check_batch_statistics(n * rows_per_example);
    const int T = batch_norm ? 1 : std::min(threads_, n);
    const uint64_t step = static_cast<uint64_t>(adam_t_) + 1;
    double loss_sum = 0, kl_sum = 0;
    int correct = 0, adv_correct = 0;
    ParallelErrors errors;
#pragma omp parallel num_threads(T) reduction(+ : loss_sum, kl_sum, correct, adv_correct)
    errors.run([&] {
      const int t = omp_get_thread_num();
      const int begin = static_cast<int>(static_cast<long>(n) * t / T), end = static_cast<int>(static_cast<long>(n) * (t + 1) / T);
      const int m = end - begin, rows = m * rows_per_example;
      std::vector<float>& g = thread_grads_[t];
      if (m > 0) {
        CpuNetwork& nw = *nets_[t];
        std::vector<float> xb(static_cast<size_t>(rows) * D), dlogits(static_cast<size_t>(rows) * K);
        fill(begin, m, xb.data());
        // Row j of the slice is example begin + j % m of part j / m ([clean; attacked] for TRADES), whose place in
        // the whole step's rows is part * n + begin + j % m.
        std::vector<uint32_t> keys(rows);
        for (int j = 0; j < rows; ++j) keys[j] = static_cast<uint32_t>((j / m) * n + begin + j % m);
        const TrainingPass pass{adam.dropout_seed, step, keys.data()};
        nw.forward(params, xb.data(), rows, &pass);
        TrainStepResult r;
        loss(begin, m, nw.logits(), dlogits.data(), r);
        loss_sum += r.loss_sum;
        kl_sum += r.kl_sum;
        correct += r.correct;
        adv_correct += r.adv_correct;
        std::vector<float*> grads;
        for (size_t off : offsets_) grads.push_back(g.data() + off);
        nw.backward(params, dlogits.data(), rows, &grads, nullptr);
      } else {
        std::fill(g.begin(), g.end(), 0.0f);
      }
    });
    errors.rethrow();
    ++adam_t_;
    const float c1 = 1.0f - std::pow(adam.beta1, static_cast<float>(adam_t_));
    const float c2 = 1.0f - std::pow(adam.beta2, static_cast<float>(adam_t_));
    for (const auto& range : adam_ranges_) {
      // Plain copies: an OpenMP region may not capture structured bindings in C++17 (clang refuses them).
      const size_t begin = range.first, end = range.second;
#pragma omp parallel for num_threads(threads_) schedule(static)
      for (size_t i = begin; i < end; ++i) {
        float g = 0;
        for (int t = 0; t < T; ++t) g += thread_grads_[t][i];
        adam_m_[i] = adam.beta1 * adam_m_[i] + (1 - adam.beta1) * g;
        adam_v_[i] = adam.beta2 * adam_v_[i] + (1 - adam.beta2) * g * g;
        flat_[i] -= adam.lr * (adam_m_[i] / c1) / (std::sqrt(adam_v_[i] / c2) + adam.eps);
      }
    }
    if (batch_norm) update_running_statistics(*nets_[0], n * rows_per_example);
    refold();
    TrainStepResult r;
    r.loss_sum = loss_sum;
    r.kl_sum = kl_sum;
    r.correct = correct;
    r.adv_correct = adv_correct;
    return r;
  }

  static std::vector<size_t> flat_offsets(const Model& m) {
    std::vector<size_t> offsets;
    size_t total = 0;
    for (const Tensor& t : m.params) {
      offsets.push_back(total);
      total += t.size();
    }
    return offsets;
  }

  static std::vector<const float*> pointers(const std::vector<float>& flat, const std::vector<size_t>& offsets) {
    std::vector<const float*> p;
    for (size_t off : offsets) p.push_back(flat.data() + off);
    return p;
  }

  // Brings the inference copy up to the trained weights (after a load or a step): O(parameters), against the
  // step's O(batch x FLOPs).
  void refold() {
    if (!folded_) return;
    Model current;
    store_model(current);
    const Model folded = fold_for_inference(current);
    infer_arch_ = folded.arch;
    infer_offsets_ = flat_offsets(folded);
    infer_flat_.clear();
    for (const Tensor& t : folded.params) infer_flat_.insert(infer_flat_.end(), t.data.begin(), t.data.end());
  }

  // A bn layer normalises each channel over the rows' N*P values, which must be at least 2 for a variance (PyTorch
  // refuses one value per channel in training too).
  void check_batch_statistics(int rows) const {
    for (const LayerSpec& l : arch_.layers)
      if (l.kind == LayerKind::BatchNorm && static_cast<int64_t>(rows) * l.out.h * l.out.w < 2)
        throw InputError("batch norm '" + l.name + "' needs at least 2 values per channel in a training batch; this "
                         "batch has " + std::to_string(rows) + " image (a bn after a dense layer normalises over the "
                         "batch alone): use a larger --batch, or a --limit that leaves no batch of one");
  }

  // Once per training step, from the batch statistics of its forward (one slice: the whole batch's).
  void update_running_statistics(const CpuNetwork& net, int rows) {
    for (size_t i = 0; i < arch_.layers.size(); ++i) {
      const LayerSpec& l = arch_.layers[i];
      if (l.kind != LayerKind::BatchNorm) continue;
      size_t q = 0;
      while (specs_[q].layer != static_cast<int>(i)) ++q;
      cpu::batch_norm_update_running(net.batch_mean(static_cast<int>(i)).data(), net.batch_var(static_cast<int>(i)).data(),
                                     l.out.c, static_cast<int64_t>(rows) * l.out.h * l.out.w, flat_.data() + offsets_[q + 2],
                                     flat_.data() + offsets_[q + 3]);
    }
  }

  int threads_;
  Architecture arch_;
  std::vector<ParamSpec> specs_;
  std::vector<size_t> offsets_;
  std::vector<float> flat_, adam_m_, adam_v_;
  std::vector<std::pair<size_t, size_t>> adam_ranges_;  // [begin, end) of flat_ that Adam updates
  long adam_t_ = 0;
  // The folded model that inference runs when arch_ has bn or dropout (folded_), refreshed after every step.
  bool folded_ = false;
  Architecture infer_arch_;
  std::vector<float> infer_flat_;
  std::vector<size_t> infer_offsets_;
  // Training runs the model as trained (nets_); inference, input gradients and optimize run the folded one
  // (infer_nets_). Either way an image's result does not depend on chunking, early stop or batch size: the layers'
  // products keep every image's arithmetic its own (host/cpu/column_gemm.h).
  std::vector<std::unique_ptr<CpuNetwork>> nets_, infer_nets_;
  std::vector<std::vector<float>> thread_grads_;
};

CpuOptimizeChunk::CpuOptimizeChunk(CpuBackend& backend, const ChunkInput& in, const StepConfig& cfg)
    : backend_(backend), cfg_(cfg), n_(in.n), D_(backend.input_size()), K_(backend.classes()) {
  const size_t nd = static_cast<size_t>(n_) * D_;
  x0_.assign(in.start, in.start + nd);
  x_ = in.init ? std::vector<float>(in.init, in.init + nd) : x0_;
  m_.assign(cfg.optimizer == InputOptimizer::Adam ? nd : 0, 0.0f);
  v_.assign(m_.size(), 0.0f);
  target_.assign(in.target_dist, in.target_dist + static_cast<size_t>(n_) * K_);
  kind_.assign(in.target_kind, in.target_kind + n_);
  cls_.assign(in.target_class, in.target_class + n_);
  eps_ = in.eps ? std::vector<float>(in.eps, in.eps + n_) : std::vector<float>(n_, 0.0f);
  steps_done_.assign(n_, 0);
  goal_reached_.assign(n_, 0);
  active_.resize(n_);
  for (int i = 0; i < n_; ++i) active_[i] = i;
  result_.best_images = x_;
  result_.best_probs.assign(static_cast<size_t>(n_) * K_, 0.0f);
  result_.best_loss.assign(n_, INFINITY);
  result_.success_step.assign(n_, -1);
}

void CpuOptimizeChunk::evaluate_and_update(bool update) {
  const auto params = backend_.inference_param_ptrs();
  const int count = static_cast<int>(active_.size());
  std::vector<uint8_t> keep(count, 1);
  const int mb = balanced_micro_batch(count, backend_.threads());
  ParallelErrors errors;
#pragma omp parallel num_threads(backend_.threads())
  {
    CpuNetwork& nw = backend_.infer_net(omp_get_thread_num());
    std::vector<float> xb, gb, dlogits, probs;
    errors.run([&] {
      xb.resize(static_cast<size_t>(kMicroBatch) * D_);
      gb.resize(xb.size());
      dlogits.resize(static_cast<size_t>(kMicroBatch) * K_);
      probs.resize(K_);
    });
#pragma omp for schedule(dynamic, 1)
    for (int b = 0; b < count; b += mb) errors.run([&] {
      const int m = std::min(mb, count - b);
      for (int i = 0; i < m; ++i)
        std::copy_n(x_.data() + static_cast<size_t>(active_[b + i]) * D_, D_, xb.data() + static_cast<size_t>(i) * D_);
      nw.forward(params, xb.data(), m);
      for (int i = 0; i < m; ++i) {
        const int e = active_[b + i];
        const float* t = target_.data() + static_cast<size_t>(e) * K_;
        const float loss = loss_forward_backward_one(nw.logits() + i * K_, K_, t, static_cast<TargetKind>(kind_[e]),
                                                     cls_[e], cfg_.loss, cfg_.cw_kappa, probs.data(),
                                                     dlogits.data() + i * K_);
        const bool met = goal_met(probs.data(), K_, t, static_cast<TargetKind>(kind_[e]), cls_[e], cfg_);
        // The first iterate that meets the goal is kept for good; until then, the lowest-loss one.
        if (!goal_reached_[e] && (met || loss < result_.best_loss[e])) {
          result_.best_loss[e] = loss;
          std::copy_n(x_.data() + static_cast<size_t>(e) * D_, D_, result_.best_images.data() + static_cast<size_t>(e) * D_);
          std::copy_n(probs.data(), K_, result_.best_probs.data() + static_cast<size_t>(e) * K_);
          if (met) {
            goal_reached_[e] = 1;
            result_.success_step[e] = steps_done_[e];
          }
        }
        if (met && cfg_.early_stop) keep[b + i] = 0;
      }
      if (!update) return;
      nw.backward(params, dlogits.data(), m, nullptr, gb.data());
      for (int i = 0; i < m; ++i) {
        const int e = active_[b + i];
        if (!keep[b + i]) continue;
        const size_t o = static_cast<size_t>(e) * D_;
        ++steps_done_[e];
        input_update_one(x_.data() + o, gb.data() + static_cast<size_t>(i) * D_, m_.empty() ? nullptr : m_.data() + o,
                         v_.empty() ? nullptr : v_.data() + o, steps_done_[e], x0_.data() + o, D_, eps_[e], cfg_);
      }
    });
  }
  errors.rethrow();
  std::vector<int> still;
  for (int i = 0; i < count; ++i)
    if (keep[i]) still.push_back(active_[i]);
  active_.swap(still);
}

void CpuOptimizeChunk::step() { evaluate_and_update(true); }

ChunkResult CpuOptimizeChunk::finish() {
  evaluate_and_update(false);
  active_.clear();
  result_.updates = steps_done_;
  return std::move(result_);
}

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace nudge
