#include "train.h"

#include <cmath>
#include <cstdio>

#include "counter_rng.h"
#include "errors.h"
#include "progress.h"

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

std::vector<EpochStats> train_model(Backend& backend, Model& model, const Dataset& data, const TrainOptions& opt) {
  backend.load_model(model);
  const int count = opt.limit > 0 && opt.limit < data.count ? opt.limit : data.count;
  const int D = data.rows * data.cols;
  const int batches = (count + opt.batch - 1) / opt.batch;
  std::vector<float> x(static_cast<size_t>(opt.batch) * D);
  std::vector<int32_t> y(opt.batch);
  std::vector<EpochStats> stats;
  for (int epoch = 1; epoch <= opt.epochs; ++epoch) {
    ProgressBar bar("epoch " + std::to_string(epoch) + "/" + std::to_string(opt.epochs), batches);
    const std::vector<int> order = epoch_order(count, opt.seed, epoch);
    double loss_sum = 0;
    long correct = 0, seen = 0;
    for (int b = 0; b < batches; ++b) {
      const int n = std::min(opt.batch, count - b * opt.batch);
      for (int i = 0; i < n; ++i) {
        const int idx = order[b * opt.batch + i];
        data.image_as_float(idx, x.data() + static_cast<size_t>(i) * D);
        y[i] = data.labels[idx];
      }
      const TrainStepResult r = backend.train_step(x.data(), y.data(), n, opt.adam);
      check_loss_finite(r.loss_sum, epoch, b + 1, batches, opt.adam.lr);
      loss_sum += r.loss_sum;
      correct += r.correct;
      seen += n;
      if (opt.progress) {
        char detail[160];
        std::snprintf(detail, sizeof detail, "batch %d/%d loss %.4f acc %.2f%% %.0f img/s", b + 1, batches,
                      loss_sum / seen, 100.0 * correct / seen, seen / std::max(bar.elapsed_seconds(), 1e-9));
        bar.update(b + 1, detail, b + 1 == batches);
      }
    }
    EpochStats s;
    s.epoch = epoch;
    s.loss = loss_sum / seen;
    s.accuracy = static_cast<double>(correct) / seen;
    s.seconds = bar.elapsed_seconds();
    s.images_per_s = seen / s.seconds;
    stats.push_back(s);
    if (opt.progress) {
      char line[200];
      std::snprintf(line, sizeof line, "epoch %d/%d: loss %.4f, train accuracy %.2f%%, %.1fs, %.0f images/s", epoch,
                    opt.epochs, s.loss, 100 * s.accuracy, s.seconds, s.images_per_s);
      bar.line(line);
    }
  }
  backend.store_model(model);
  check_weights_loadable(model, opt.adam.lr);
  return stats;
}

}  // namespace nudge
