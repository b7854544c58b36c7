#include "model_fold.h"

#include <cmath>
#include <string>

#include "errors.h"

namespace nudge {

Model fold_for_inference(const Model& model) {
  if (!model.arch.has_training_layers()) return model;
  assert_params_match_architecture(model, "fold_for_inference");
  const Architecture& a = model.arch;
  // The tensors of each layer, by the position of its first one in Architecture::params() order.
  std::vector<int> first_tensor(a.layers.size(), -1);
  const std::vector<ParamSpec> specs = a.params();
  for (int p = static_cast<int>(specs.size()) - 1; p >= 0; --p) first_tensor[specs[p].layer] = p;

  Model out;
  out.metadata = model.metadata;
  std::string text = std::to_string(a.input.c) + "x" + std::to_string(a.input.h) + "x" + std::to_string(a.input.w) + ":";
  bool first = true;
  // Rebuilds the layer string without bn and dropout: Architecture::parse then re-derives every shape and name, and
  // conv and dense layers keep theirs (the names count only their own kind).
  for (size_t i = 0; i < a.layers.size(); ++i) {
    const LayerSpec& l = a.layers[i];
    if (l.kind == LayerKind::BatchNorm || l.kind == LayerKind::Dropout) continue;
    Architecture one;
    one.input = a.input;
    one.layers = {l};
    const std::string whole = one.to_string();
    text += (first ? "" : ",") + whole.substr(whole.find(':') + 1);
    first = false;
    if (l.kind != LayerKind::Conv && l.kind != LayerKind::Dense) continue;
    Tensor w = model.params[first_tensor[i]], b = model.params[first_tensor[i] + 1];
    if (i + 1 < a.layers.size() && a.layers[i + 1].kind == LayerKind::BatchNorm) {
      const int q = first_tensor[i + 1];
      const std::vector<float>&gamma = model.params[q].data, &beta = model.params[q + 1].data,
                             &mean = model.params[q + 2].data, &var = model.params[q + 3].data;
      const size_t C = b.size(), per_channel = w.size() / C;
      for (size_t o = 0; o < C; ++o) {
        const double scale = gamma[o] / std::sqrt(static_cast<double>(var[o]) + kBatchNormEps);
        for (size_t j = 0; j < per_channel; ++j) {
          float& x = w.data[o * per_channel + j];
          x = static_cast<float>(x * scale);
        }
        b.data[o] = static_cast<float>((static_cast<double>(b.data[o]) - mean[o]) * scale + beta[o]);
      }
    }
    out.params.push_back(std::move(w));
    out.params.push_back(std::move(b));
  }
  out.arch = Architecture::parse(text);
  assert_params_match_architecture(out, "fold_for_inference (result)");
  return out;
}

}  // namespace nudge
