#include "regularized_chunk.h"

#include <omp.h>

#include <algorithm>
#include <cmath>

#include "errors.h"
#include "optimize_math.h"
#include "parallel_errors.h"

namespace nudge {

namespace {

float sigmoid(float w) { return 1.0f / (1.0f + std::exp(-w)); }
float logit(float x) {
  const float c = std::min(std::max(x, 1e-3f), 1.0f - 1e-3f);
  return std::log(c / (1.0f - c));
}

class RegularizedChunk : public OptimizeChunk {
 public:
  RegularizedChunk(const std::vector<Backend*>& models, int H, int W, int K, const ChunkInput& in,
                   const StepConfig& cfg, const RegularizerConfig& reg, uint64_t seed, uint64_t first_entry)
      : models_(models), H_(H), W_(W), D_(H * W), K_(K), n_(in.n), cfg_(cfg), reg_(reg), seed_(seed),
        first_entry_(first_entry) {
    const size_t nd = static_cast<size_t>(n_) * D_;
    x0_.assign(in.start, in.start + nd);
    const float* first = in.init ? in.init : in.start;
    if (reg_.pca) {
      // The optimized variables are the basis' coefficients; the anchor is the start image's own.
      const PcaBasis& b = *reg_.pca;
      if (b.pixels != D_) throw InternalError("regularized chunk: a basis of " + std::to_string(b.pixels) + " pixels");
      P_ = b.components;
      var_.resize(static_cast<size_t>(n_) * P_);
      anchor_.resize(var_.size());
      for (int e = 0; e < n_; ++e) {
        b.coefficients_of(first + static_cast<size_t>(e) * D_, var_.data() + static_cast<size_t>(e) * P_);
        b.coefficients_of(in.start + static_cast<size_t>(e) * D_, anchor_.data() + static_cast<size_t>(e) * P_);
      }
    } else {
      P_ = D_;
      var_.assign(first, first + nd);
      if (reg_.sigmoid)
        for (float& v : var_) v = logit(v);
    }
    m_.assign(var_.size(), 0.0f);
    v_.assign(var_.size(), 0.0f);
    target_.assign(in.target_dist, in.target_dist + static_cast<size_t>(n_) * K_);
    kind_.assign(in.target_kind, in.target_kind + n_);
    cls_.assign(in.target_class, in.target_class + n_);
    eps_ = in.eps ? std::vector<float>(in.eps, in.eps + n_) : std::vector<float>(n_, 0.0f);
    updates_.assign(n_, 0);
    reached_.assign(n_, 0);
    for (int i = 0; i < n_; ++i) active_.push_back(i);
    result_.best_images.assign(nd, 0.0f);
    result_.best_probs.assign(static_cast<size_t>(n_) * K_, 0.0f);
    result_.best_loss.assign(n_, INFINITY);
    result_.success_step.assign(n_, -1);
  }

  void step() override { run(true); }
  int active_count() const override { return static_cast<int>(active_.size()); }
  ChunkResult finish() override {
    run(false);
    active_.clear();
    result_.updates = updates_;
    return std::move(result_);
  }

 private:
  void image_of(int e, float* out) const {
    const float* v = var_.data() + static_cast<size_t>(e) * P_;
    if (reg_.pca) {
      reg_.pca->image_of(v, out);
    } else if (reg_.sigmoid) {
      for (int p = 0; p < D_; ++p) out[p] = sigmoid(v[p]);
    } else {
      std::copy(v, v + D_, out);
    }
  }

  void run(bool update) {
    const int A = static_cast<int>(active_.size());
    if (A == 0) return;
    const size_t ad = static_cast<size_t>(A) * D_, ak = static_cast<size_t>(A) * K_;
    std::vector<float> img(ad), seen(reg_.jitter > 0 ? ad : 0), dist(ak), probs(ak), probs0(ak), loss(A), grad(ad),
        total_grad(ad, 0.0f), total_loss(A, 0.0f);
    std::vector<int32_t> kind(A), cls(A), shift(2 * static_cast<size_t>(A));
    std::vector<uint8_t> met(A, 1);
    for (int a = 0; a < A; ++a) {
      const int e = active_[a];
      image_of(e, img.data() + static_cast<size_t>(a) * D_);
      std::copy_n(target_.data() + static_cast<size_t>(e) * K_, K_, dist.data() + static_cast<size_t>(a) * K_);
      kind[a] = kind_[e];
      cls[a] = cls_[e];
      if (reg_.jitter > 0) {
        jitter_offsets(seed_, first_entry_ + e, updates_[e], reg_.jitter, &shift[2 * a], &shift[2 * a + 1]);
        shift_image(img.data() + static_cast<size_t>(a) * D_, H_, W_, shift[2 * a], shift[2 * a + 1],
                    seen.data() + static_cast<size_t>(a) * D_);
      }
    }
    for (size_t m = 0; m < models_.size(); ++m) {
      Backend& b = *models_[m];
      // The goal and the reported probabilities are judged on the image itself, never on a shifted copy. Its
      // gradient is needed only for an update without jitter (with jitter, the shifted copy's replaces it).
      const bool own_gradient = update && reg_.jitter == 0;
      b.input_gradient(img.data(), A, dist.data(), kind.data(), cls.data(), cfg_.loss, cfg_.cw_kappa, probs.data(),
                       loss.data(), own_gradient ? grad.data() : nullptr);
      if (m == 0) probs0 = probs;
      for (int a = 0; a < A; ++a) {
        total_loss[a] += loss[a];
        const int e = active_[a];
        met[a] &= updates_[e] >= reg_.settle_steps && goal_met(probs.data() + static_cast<size_t>(a) * K_, K_, target_.data() + static_cast<size_t>(e) * K_,
                           static_cast<TargetKind>(kind_[e]), cls_[e], cfg_);
      }
      if (!update) continue;
      if (reg_.jitter > 0) {
        b.input_gradient(seen.data(), A, dist.data(), kind.data(), cls.data(), cfg_.loss, cfg_.cw_kappa, probs.data(),
                         loss.data(), grad.data());
        std::vector<float> back(D_);
        for (int a = 0; a < A; ++a) {
          unshift_gradient(grad.data() + static_cast<size_t>(a) * D_, H_, W_, shift[2 * a], shift[2 * a + 1], back.data());
          std::copy(back.begin(), back.end(), grad.begin() + static_cast<size_t>(a) * D_);
        }
      }
      for (size_t i = 0; i < ad; ++i) total_grad[i] += grad[i];
    }
    std::vector<uint8_t> keep(A, 1);
    for (int a = 0; a < A; ++a) {
      const int e = active_[a];
      // Before the priors have settled an iterate is no candidate, unless nothing better exists yet.
      const bool settled = updates_[e] >= reg_.settle_steps || std::isinf(result_.best_loss[e]);
      if (!reached_[e] && (met[a] || (settled && total_loss[a] < result_.best_loss[e]))) {
        result_.best_loss[e] = total_loss[a];
        std::copy_n(img.data() + static_cast<size_t>(a) * D_, D_, result_.best_images.data() + static_cast<size_t>(e) * D_);
        std::copy_n(probs0.data() + static_cast<size_t>(a) * K_, K_, result_.best_probs.data() + static_cast<size_t>(e) * K_);
        if (met[a]) {
          reached_[e] = 1;
          result_.success_step[e] = updates_[e];
        }
      }
      if (met[a] && cfg_.early_stop) keep[a] = 0;
    }
    if (update) {
      ParallelErrors errors;
#pragma omp parallel for schedule(static)
      for (int a = 0; a < A; ++a) errors.run([&] {
        if (!keep[a]) return;
        const int e = active_[a];
        const size_t o = static_cast<size_t>(e) * D_, vo = static_cast<size_t>(e) * P_;
        float* x = img.data() + static_cast<size_t>(a) * D_;
        float* g = total_grad.data() + static_cast<size_t>(a) * D_;
        // The penalties' weights: constant until settle_steps, then decaying by prior_decay per update.
        const float scale = prior_scale(reg_, updates_[e]);
        if (reg_.tv > 0) (reg_.tv_isotropic ? tv_isotropic : tv_anisotropic)(x, H_, W_, reg_.tv * scale, g);
        if (reg_.l2 > 0) l2_decay(x, D_, reg_.l2_center, reg_.l2 * scale, g);
        if (reg_.l1 > 0) l1_decay(x, D_, reg_.l2_center, reg_.l1 * scale, g);
        const int t = ++updates_[e];
        float* var = var_.data() + vo;
        if (reg_.pca) {
          const PcaBasis& b = *reg_.pca;
          std::vector<float> gc(P_);
          b.backward(var, g, gc.data());
          if (reg_.pca_prior > 0) scaled_l2_decay(var, nullptr, b.variances.data(), P_, reg_.pca_prior * scale, gc.data());
          if (reg_.pca_anchor > 0)
            scaled_l2_decay(var, anchor_.data() + vo, b.variances.data(), P_, reg_.pca_anchor * scale, gc.data());
          optimizer_update_one(var, gc.data(), m_.data() + vo, v_.data() + vo, t, P_, cfg_);
        } else if (reg_.sigmoid) {
          for (int p = 0; p < D_; ++p) g[p] *= x[p] * (1.0f - x[p]);  // d sigmoid(w) / dw
          optimizer_update_one(var, g, m_.data() + o, v_.data() + o, t, D_, cfg_);
        } else {
          input_update_one(var, g, m_.data() + o, v_.data() + o, t, x0_.data() + o, D_, eps_[e], cfg_);
        }
        if (reg_.blur_every > 0 && t % reg_.blur_every == 0) {
          const float sigma = reg_.blur_sigma * std::pow(reg_.blur_decay, static_cast<float>(t / reg_.blur_every - 1));
          std::vector<float> cur(D_), blurred(D_);
          image_of(e, cur.data());
          gaussian_blur(cur.data(), H_, W_, sigma, blurred.data());
          if (reg_.pca) {
            reg_.pca->coefficients_of(blurred.data(), var);
          } else if (reg_.sigmoid) {
            for (int p = 0; p < D_; ++p) var[p] = logit(blurred[p]);
          } else {
            std::copy(blurred.begin(), blurred.end(), var);
            project_one(var, x0_.data() + o, D_, eps_[e], cfg_.norm);
          }
        }
      });
      errors.rethrow();
    }
    std::vector<int> still;
    for (int a = 0; a < A; ++a)
      if (keep[a]) still.push_back(active_[a]);
    active_.swap(still);
  }

  std::vector<Backend*> models_;
  int H_, W_, D_, K_, n_;
  int P_ = 0;  // optimized variables per entry: D_ pixels (or their sigmoid preimages), or the basis' coefficients
  StepConfig cfg_;
  RegularizerConfig reg_;
  uint64_t seed_, first_entry_;
  std::vector<float> x0_, var_, anchor_, m_, v_, target_, eps_;
  std::vector<int32_t> kind_, cls_, updates_;
  std::vector<uint8_t> reached_;
  std::vector<int> active_;
  ChunkResult result_;
};

}  // namespace

std::unique_ptr<OptimizeChunk> make_regularized_chunk(const std::vector<Backend*>& models, int height, int width,
                                                      int classes, const ChunkInput& in, const StepConfig& cfg,
                                                      const RegularizerConfig& reg, uint64_t seed, uint64_t first_entry) {
  return std::make_unique<RegularizedChunk>(models, height, width, classes, in, cfg, reg, seed, first_entry);
}

}  // namespace nudge
