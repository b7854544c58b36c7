#include "train.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "counter_rng.h"
#include "errors.h"
#include "interrupt.h"
#include "progress.h"
#include "regularizers.h"

namespace nudge {

std::vector<int> epoch_order(int count, uint64_t seed, int epoch) {
  std::vector<int> order(count);
  for (int i = 0; i < count; ++i) order[i] = i;
  for (int i = count - 1; i > 0; --i) {
    const uint32_t r = counter_random(seed, kStreamShuffle, static_cast<uint64_t>(epoch) << 32 | static_cast<uint32_t>(i), 0).v[0];
    const int j = static_cast<int>((static_cast<uint64_t>(r) * static_cast<uint64_t>(i + 1)) >> 32);
    std::swap(order[i], order[j]);
  }
  return order;
}

void check_loss_finite(double loss_sum, int epoch, int batch, int batches, float lr) {
  if (std::isfinite(loss_sum)) return;
  char lr_text[32];
  std::snprintf(lr_text, sizeof lr_text, "%g", lr);
  throw InputError("training diverged: the loss is " + std::string(std::isnan(loss_sum) ? "NaN" : "infinite") +
                   " at epoch " + std::to_string(epoch) + ", batch " + std::to_string(batch) + "/" +
                   std::to_string(batches) + "; lower --lr (now " + lr_text + "); no model saved");
}

void check_weights_loadable(const Model& model, float lr) {
  for (size_t p = 0; p < model.params.size(); ++p)
    for (float v : model.params[p].data)
      if (!std::isfinite(v) || std::fabs(v) > kMaxWeightMagnitude) {
        char text[320];
        std::snprintf(text, sizeof text, "training diverged: a weight of %s is %g, beyond the +-%g a model may hold; lower --lr (now %g); no model saved",
                      model.arch.params()[p].name.c_str(), v, kMaxWeightMagnitude, lr);
        throw InputError(text);
      }
}

void check_trainable_with_batch_norm(const Architecture& arch, const TrainOptions& opt, int count, int extra) {
  if (!arch.has_batch_norm()) return;
  if (opt.adv.method == AdvMethod::Trades)
    throw InputError("--adversarial trades cannot train a model with bn layers (its clean and attacked images go "
                     "through one forward, which would mix their batch statistics); use --adversarial pgd or fgsm");
  // The smallest batch of an epoch: a full one, or the remainder (with the open set's non-digits in each).
  const int smallest = std::min(opt.batch, count % opt.batch == 0 ? opt.batch : count % opt.batch) + extra;
  for (const LayerSpec& l : arch.layers)
    if (l.kind == LayerKind::BatchNorm && static_cast<int64_t>(smallest) * l.out.h * l.out.w < 2)
      throw InputError("'" + l.name + "' (bn after a dense layer) normalises over the batch, and an epoch of " +
                       std::to_string(count) + " images in batches of " + std::to_string(opt.batch) +
                       " has a batch of one image; change --batch or --limit");
}

namespace {

constexpr uint64_t kCheckSeedSalt = 0x636865636bULL;  // "check": the guard's attack differs from training's

// Sums over an epoch's batches.
struct EpochSums {
  double loss = 0, adv_loss = 0;
  long correct = 0, adv_correct = 0, seen = 0, attack_steps = 0;
};

// Cross-entropy and correct count of the clean batch from probabilities (the adversarial step trains on other
// images, so its own loss is not the clean one).
void add_clean_stats(const std::vector<float>& probs, const int32_t* y, int n, int K, EpochSums& s) {
  for (int i = 0; i < n; ++i) {
    const float* p = probs.data() + static_cast<size_t>(i) * K;
    s.loss -= std::log(std::max(static_cast<double>(p[y[i]]), 1e-45));
    s.correct += static_cast<int>(std::max_element(p, p + K) - p) == y[i];
  }
}

class BatchTrainer {
 public:
  BatchTrainer(Backend& backend, const TrainOptions& opt, int D, int K)
      : backend_(backend), opt_(opt), D_(D), K_(K), adv_(static_cast<size_t>(opt.batch) * D),
        mixed_(opt.adv.mix_clean ? static_cast<size_t>(opt.batch) * 2 * D : 0),
        mixed_y_(opt.adv.mix_clean ? 2 * opt.batch : 0), probs_(static_cast<size_t>(opt.batch) * K) {}

  void train(const float* x, const int32_t* y, int n, float lr, float eps, uint64_t attack_seed, EpochSums& s) {
    AdamConfig adam = opt_.adam;
    adam.lr = lr;
    adam.dropout_seed = opt_.seed;
    const AdversarialConfig& a = opt_.adv;
    s.seen += n;
    if (a.method == AdvMethod::None) {
      const TrainStepResult r = backend_.train_step(x, y, n, adam);
      s.loss += r.loss_sum;
      s.correct += r.correct;
      return;
    }
    attack_training_batch(backend_, a, eps, x, y, n, D_, K_, attack_seed, adv_.data(), scratch_);
    s.attack_steps += static_cast<long>(n) * (a.method == AdvMethod::Fgsm ? 1 : a.steps);
    if (a.method == AdvMethod::Trades) {
      const TrainStepResult r = backend_.train_step_trades(x, adv_.data(), y, n, a.beta, adam);
      s.loss += r.loss_sum;
      s.correct += r.correct;
      s.adv_loss += r.kl_sum;
      s.adv_correct += r.adv_correct;
      return;
    }
    backend_.predict(x, n, probs_.data());
    add_clean_stats(probs_, y, n, K_, s);
    if (a.mix_clean) {
      const size_t len = static_cast<size_t>(n) * D_;
      std::copy_n(x, len, mixed_.begin());
      std::copy_n(adv_.begin(), len, mixed_.begin() + len);
      std::copy_n(y, n, mixed_y_.begin());
      std::copy_n(y, n, mixed_y_.begin() + n);
      const TrainStepResult r = backend_.train_step(mixed_.data(), mixed_y_.data(), 2 * n, adam);
      // The step's loss covers both halves; the attacked half's share is not separable, so report the mean.
      s.adv_loss += r.loss_sum / 2;
      s.adv_correct += r.correct / 2;
      return;
    }
    const TrainStepResult r = backend_.train_step(adv_.data(), y, n, adam);
    s.adv_loss += r.loss_sum;
    s.adv_correct += r.correct;
  }

 private:
  Backend& backend_;
  const TrainOptions& opt_;
  int D_, K_;
  std::vector<float> adv_, mixed_;
  std::vector<int32_t> mixed_y_;
  std::vector<float> probs_;
  AttackScratch scratch_;
};

std::string progress_detail(const TrainOptions& opt, const EpochSums& s, int b, int batches, double secs, float lr,
                            float eps) {
  char d[256];
  const double n = std::max<long>(s.seen, 1);
  if (opt.adv.method == AdvMethod::None) {
    std::snprintf(d, sizeof d, "batch %d/%d loss %.4f acc %.2f%% %.0f img/s", b, batches, s.loss / n,
                  100.0 * s.correct / n, s.seen / std::max(secs, 1e-9));
  } else {
    std::snprintf(d, sizeof d, "batch %d/%d clean %.4f/%.2f%% %s %.4f/%.2f%% eps %.3f lr %.2g %.0f img/s", b, batches,
                  s.loss / n, 100.0 * s.correct / n, opt.adv.method == AdvMethod::Trades ? "kl" : "adv",
                  s.adv_loss / n, 100.0 * s.adv_correct / n, eps, lr, s.seen / std::max(secs, 1e-9));
  }
  return d;
}

}  // namespace

std::vector<EpochStats> train_model(Backend& backend, Model& model, const Dataset& data, const TrainOptions& opt,
                                    TrainSummary* summary, const TrainHooks& hooks) {
  const AdversarialConfig& adv = opt.adv;
  const bool adversarial = adv.method != AdvMethod::None;
  const int D = data.rows * data.cols, K = model.arch.num_classes();
  const int check = adversarial ? std::max(0, adv.check_count) : 0;
  if (check >= data.count) throw InputError("--check-count " + std::to_string(check) + " leaves no training images");
  const int available = data.count - check;
  const int count = opt.limit > 0 && opt.limit < available ? opt.limit : available;
  const int batches = (count + opt.batch - 1) / opt.batch;

  // The guard's held-out images: the last `check` of the split.
  std::vector<float> check_x(static_cast<size_t>(check) * D);
  std::vector<int32_t> check_y(check);
  for (int i = 0; i < check; ++i) {
    data.image_as_float(available + i, check_x.data() + static_cast<size_t>(i) * D);
    check_y[i] = data.labels[available + i];
  }

  const int extra = opt.open_set_per_batch;
  check_trainable_with_batch_norm(model.arch, opt, count, extra);
  if (extra > 0) {
    if (adversarial) throw InputError("--open-set trains plain models only (not with --adversarial)");
    if (opt.open_set_families.empty()) throw InternalError("train_model: --open-set without families");
  }
  // The trainer's own buffers serve adversarial training only, which --open-set refuses above, so they keep opt.batch.
  BatchTrainer trainer(backend, opt, D, K);
  std::vector<float> x(static_cast<size_t>(opt.batch + extra) * D);
  std::vector<int32_t> y(opt.batch + extra);
  std::vector<float> shift_scratch(opt.augment_shift > 0 ? D : 0);
  TrainSummary local;
  TrainSummary& sum = summary ? *summary : local;
  sum = TrainSummary();
  sum.trained_images = count;
  sum.check_images = check;
  sum.kept_epoch = opt.epochs;
  std::vector<double> robust_history, attack_history;
  const bool guarded = adversarial && check > 0;
  Model best = model;
  int first_epoch = 1;
  if (const TrainProgress* r = hooks.resume) {
    backend.load_model(r->model);
    backend.import_train_state(r->optimizer);
    sum = r->summary;
    if (guarded) {
      best = r->best.params.empty() ? r->model : r->best;
      for (const EpochStats& e : sum.epochs) {
        robust_history.push_back(e.check_robust);
        attack_history.push_back(e.adv_accuracy);
      }
    }
    first_epoch = r->epoch + 1;
    if (sum.collapsed) {  // the guard had stopped the run; only the model was still to be written
      model = best;
      check_weights_loadable(model, opt.adam.lr);
      return sum.epochs;
    }
  } else {
    backend.load_model(model);
  }
  for (int epoch = first_epoch; epoch <= opt.epochs; ++epoch) {
    ProgressBar bar("epoch " + std::to_string(epoch) + "/" + std::to_string(opt.epochs), batches);
    const std::vector<int> order = epoch_order(count, opt.seed, epoch);
    EpochSums s;
    float lr = opt.adam.lr, eps = 0;
    for (int b = 0; b < batches; ++b) {
      if (interrupt_signal() != 0) {
        bar.finish();  // the message goes on a clean line
        throw_if_interrupted(("epoch " + std::to_string(epoch) + ", batch " + std::to_string(b + 1) + "/" +
                              std::to_string(batches) + " of training").c_str());
      }
      const int n = std::min(opt.batch, count - b * opt.batch);
      for (int i = 0; i < n; ++i) {
        const int idx = order[b * opt.batch + i];
        float* xi = x.data() + static_cast<size_t>(i) * D;
        if (opt.augment_shift > 0) {
          // Shift (dy, dx) of image idx in this epoch: two counter uniforms, each to one of 2s+1 offsets.
          const int s2 = 2 * opt.augment_shift + 1;
          const uint64_t key = static_cast<uint64_t>(epoch) * data.count + idx;
          const int dy = std::min(s2 - 1, static_cast<int>(counter_uniform(opt.seed, kStreamAugment, key, 0) * s2)) - opt.augment_shift;
          const int dx = std::min(s2 - 1, static_cast<int>(counter_uniform(opt.seed, kStreamAugment, key, 1) * s2)) - opt.augment_shift;
          data.image_as_float(idx, shift_scratch.data());
          shift_image(shift_scratch.data(), data.rows, data.cols, dy, dx, xi);
        } else {
          data.image_as_float(idx, xi);
        }
        y[i] = data.labels[idx];
      }
      for (int j = 0; j < extra; ++j) {
        // Image (epoch, batch, j): a new non-digit every time, its family in turn.
        const uint64_t index = (static_cast<uint64_t>(epoch) * batches + b) * extra + j;
        const NonDigitFamily f = opt.open_set_families[index % opt.open_set_families.size()];
        make_nondigit(f, opt.seed, index, data, x.data() + static_cast<size_t>(n + j) * D);
        y[n + j] = K - 1;
      }
      const double t = (epoch - 1) + static_cast<double>(b + 1) / batches;
      lr = learning_rate_at(opt.lr_schedule, opt.adam.lr, t, opt.epochs);
      eps = eps_at(adv.eps, t, adv.eps_ramp_epochs);
      trainer.train(x.data(), y.data(), n + extra, lr, eps, training_attack_seed(opt.seed, epoch - 1, b), s);
      // The epoch's running sums turn non-finite with the first batch that does.
      check_loss_finite(s.loss + s.adv_loss, epoch, b + 1, batches, lr);
      if (opt.progress) bar.update(b + 1, progress_detail(opt, s, b + 1, batches, bar.elapsed_seconds(), lr, eps), b + 1 == batches);
    }
    EpochStats st;
    st.epoch = epoch;
    st.loss = s.loss / s.seen;
    st.accuracy = static_cast<double>(s.correct) / s.seen;
    if (adversarial) {
      st.adv_loss = s.adv_loss / s.seen;
      st.adv_accuracy = static_cast<double>(s.adv_correct) / s.seen;
    }
    st.lr = lr;
    st.eps = eps;
    st.attack_image_steps = s.attack_steps;
    st.seconds = bar.elapsed_seconds();
    st.images_per_s = s.seen / st.seconds;
    char line[320];
    if (adversarial) {
      if (check > 0) {
        const RobustCheck rc =
            adv.check_apgd ? apgd_robust_check(backend, check_x.data(), check_y.data(), check, D, K, adv.eps,
                                               adv.check_steps, adv.check_restarts, opt.seed ^ kCheckSeedSalt)
                           : pgd_robust_check(backend, check_x.data(), check_y.data(), check, D, K, adv.eps,
                                              adv.check_steps, 2.5f * adv.eps / adv.check_steps, adv.check_restarts,
                                              opt.seed ^ kCheckSeedSalt);
        st.check_clean = rc.clean_accuracy();
        st.check_robust = rc.robust_accuracy();
      }
      std::snprintf(line, sizeof line,
                    "epoch %d/%d: clean loss %.4f acc %.2f%%, %s %.4f acc %.2f%%, eps %.3f, %.1fs, %.0f images/s",
                    epoch, opt.epochs, st.loss, 100 * st.accuracy, adv.method == AdvMethod::Trades ? "kl" : "adv loss",
                    st.adv_loss, 100 * st.adv_accuracy, eps, st.seconds, st.images_per_s);
      std::string text = line;
      if (check > 0) {
        std::snprintf(line, sizeof line, "; held-out %d: clean %.2f%%, %s-%d robust %.2f%% at eps %.3f", check,
                      100 * st.check_clean, adv.check_apgd ? "APGD-CE" : "PGD", adv.check_steps, 100 * st.check_robust,
                      adv.eps);
        text += line;
      }
      if (opt.progress) bar.line(text);
    } else if (opt.progress) {
      std::snprintf(line, sizeof line, "epoch %d/%d: loss %.4f, train accuracy %.2f%%, %.1fs, %.0f images/s", epoch,
                    opt.epochs, st.loss, 100 * st.accuracy, st.seconds, st.images_per_s);
      bar.line(line);
    }
    sum.epochs.push_back(st);
    if (guarded) {
      robust_history.push_back(st.check_robust);
      attack_history.push_back(st.adv_accuracy);
      const GuardVerdict v = guard_verdict(robust_history, adv.collapse_drop, attack_history, adv.overfit_gap);
      if (v.best_epoch == epoch - 1) {
        backend.store_model(best);
        sum.kept_epoch = epoch;
      }
      if (adv.guard && v.collapsed) {
        char msg[400];
        const char* check_name = adv.check_apgd ? "APGD-CE" : "PGD";
        if (v.overfit)
          std::snprintf(msg, sizeof msg,
                        "guard: epoch %d's model resists its training attack on %.2f%% of the batches but only %.2f%% "
                        "of the held-out images resist %s-%d: catastrophic overfitting to the training attack (gap "
                        "over %.2f); stopped and kept epoch %d's model (held-out robust %.2f%%)",
                        epoch, 100 * st.adv_accuracy, 100 * st.check_robust, check_name, adv.check_steps,
                        adv.overfit_gap, v.best_epoch + 1, 100 * robust_history[v.best_epoch]);
        else
          std::snprintf(msg, sizeof msg,
                        "guard: held-out robust accuracy fell from %.2f%% (epoch %d) to %.2f%% (epoch %d): catastrophic "
                        "overfitting; stopped and kept epoch %d's model",
                        100 * robust_history[v.best_epoch], v.best_epoch + 1, 100 * st.check_robust, epoch,
                        v.best_epoch + 1);
        sum.collapsed = true;
        sum.guard_message = msg;
        std::fprintf(stderr, "%s\n", msg);
      }
    }
    if (hooks.epoch_done) {
      // Reads the backend's state only: a run that checkpoints computes exactly what one that does not computes.
      TrainProgress p;
      p.epoch = epoch;
      backend.store_model(p.model);
      p.optimizer = backend.export_train_state();
      p.summary = sum;
      if (guarded) p.best = best;
      hooks.epoch_done(p);
    }
    if (sum.collapsed) {
      model = best;
      check_weights_loadable(model, opt.adam.lr);
      return sum.epochs;
    }
  }
  backend.store_model(model);
  check_weights_loadable(model, opt.adam.lr);
  sum.kept_epoch = sum.epochs.empty() ? 0 : sum.epochs.back().epoch;
  return sum.epochs;
}

}  // namespace nudge
