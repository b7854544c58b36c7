// nudge predict: class and probabilities for image files or test-set indices.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>

#include "backend.h"
#include "commands.h"
#include "errors.h"
#include "model_file.h"
#include "image_io.h"
#include "make_backend.h"
#include "model_loading.h"
#include "json_text.h"

namespace nudge::cli {

Runner add_predict_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("predict", "classify PNG/PGM images or test-set images");
  auto o = std::make_shared<CommonOptions>();
  auto files = std::make_shared<std::vector<std::string>>();
  auto indices = std::make_shared<std::vector<int>>();
  auto json = std::make_shared<bool>(false);
  add_common_options(*cmd, *o, true, "");
  cmd->add_option("images", *files, "PNG or PGM files (grayscale, the model's input size)");
  cmd->add_option("--index", *indices, "index into the test split (repeatable)")->check(CLI::Range(0, std::numeric_limits<int>::max()));
  cmd->add_flag("--json", *json, "print one JSON object per image, one per line");
  return [=]() {
    if (files->empty() && indices->empty()) throw InputError("predict needs image files or --index N");
    const Model model = load_inference_model(o->model);
    const int H = model.arch.input.h, W = model.arch.input.w, D = model.arch.input.size();
    const int K = model.arch.num_classes();
    std::vector<std::string> names;
    std::vector<float> x;
    std::vector<int> labels;
    if (!files->empty() && model.arch.input.c != 1)
      throw InputError(o->model + " takes " + std::to_string(model.arch.input.c) + "-channel inputs; image files are grayscale");
    for (const std::string& f : *files) {
      const GrayImage img = read_image(f, {W, H});  // another size is refused from the header, before decoding
      x.insert(x.end(), img.pixels.begin(), img.pixels.end());
      names.push_back(f);
      labels.push_back(-1);
    }
    if (!indices->empty()) {
      const Dataset test = load_dataset(o->data, "test");
      check_model_fits(model, o->model, test.rows, test.cols, 10);
      for (int i : *indices) {
        if (i >= test.count)
          throw InputError("--index " + std::to_string(i) + " is past the test split's " + std::to_string(test.count) + " images");
        x.resize(x.size() + D);
        test.image_as_float(i, x.data() + x.size() - D);
        names.push_back("test[" + std::to_string(i) + "]");
        labels.push_back(test.labels[i]);
      }
    }
    auto backend = make_backend(o->device);
    backend->load_model(model);
    const int n = static_cast<int>(names.size());
    std::vector<float> probs(static_cast<size_t>(n) * K);
    backend->predict(x.data(), n, probs.data());
    for (int i = 0; i < n; ++i)
      for (int k = 0; k < K; ++k)
        if (!std::isfinite(probs[static_cast<size_t>(i) * K + k]))
          throw InputError(o->model + " gives " + names[i] + " NaN or infinite probabilities (its outputs overflow float)");
    const std::vector<std::string> classes = class_names(model);
    for (int i = 0; i < n; ++i) {
      const float* p = probs.data() + static_cast<size_t>(i) * K;
      const int cls = static_cast<int>(std::max_element(p, p + K) - p);
      if (*json) {
        nlohmann::json j;
        j["image"] = names[i];
        j["class"] = cls;
        if (classes[cls] != std::to_string(cls)) j["class_name"] = classes[cls];
        j["probabilities"] = std::vector<float>(p, p + K);
        if (labels[i] >= 0) j["label"] = labels[i];
        std::printf("%s\n", json_text(j).c_str());
      } else {
        const std::string named = classes[cls] == std::to_string(cls) ? "" : " \"" + classes[cls] + "\"";
        std::printf("%s: class %d%s (%.2f%%)%s\n  ", names[i].c_str(), cls, named.c_str(), 100 * p[cls],
                    labels[i] >= 0 ? (", true label " + std::to_string(labels[i])).c_str() : "");
        for (int k = 0; k < K; ++k) std::printf("%d:%.4f%s", k, p[k], k + 1 < K ? " " : "\n");
      }
    }
    return 0;
  };
}

}  // namespace nudge::cli
