// nudge eval: accuracy, per-class accuracy and confusion matrix on a split.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <limits>
#include <memory>

#include "backend.h"
#include "commands.h"
#include "evaluate.h"
#include "errors.h"
#include "model_file.h"
#include "make_backend.h"
#include "model_loading.h"
#include "json_text.h"

namespace nudge::cli {

Runner add_eval_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "accuracy of a model on the test (or training) split");
  auto o = std::make_shared<CommonOptions>();
  auto split = std::make_shared<std::string>("test");
  auto limit = std::make_shared<int>(0);
  auto json = std::make_shared<bool>(false);
  add_common_options(*cmd, *o, true, "");
  cmd->add_option("--split", *split, "test | train")->capture_default_str()->check(CLI::IsMember({"test", "train"}));
  cmd->add_option("--limit", *limit, "first N images only (0 = all)")->check(CLI::Range(0, std::numeric_limits<int>::max()));
  cmd->add_flag("--json", *json, "print one JSON object");
  return [=]() {
    const Model model = load_model_file(o->model);
    const Dataset data = load_dataset(o->data, *split);
    check_model_fits(model, o->model, data.rows, data.cols, 10);
    auto backend = make_backend(o->device);
    backend->load_model(model);
    const EvalResult r = evaluate_model(*backend, data, model.arch.num_classes(), *limit, !*json);
    const double ips = r.count / std::max(r.seconds, 1e-9);
    if (*json) {
      nlohmann::json j;
      j["model"] = o->model;
      j["architecture"] = model.arch.to_string();
      if (const auto src = model.metadata.find("nudge.source"); src != model.metadata.end()) j["source"] = src->second;
      j["split"] = *split;
      j["device"] = backend->name();
      j["count"] = r.count;
      j["correct"] = r.correct;
      j["accuracy"] = r.accuracy();
      std::vector<double> per_class;
      std::vector<std::vector<long>> confusion;
      for (int c = 0; c < r.classes; ++c) {
        per_class.push_back(r.class_accuracy(c));
        confusion.emplace_back(r.confusion.begin() + c * r.classes, r.confusion.begin() + (c + 1) * r.classes);
      }
      j["per_class_accuracy"] = per_class;
      j["confusion"] = confusion;
      const auto recipe = model.metadata.find("nudge.recipe");
      if (recipe != model.metadata.end()) j["recipe"] = nlohmann::json::parse(recipe->second, nullptr, false);
      j["seconds"] = r.seconds;
      j["images_per_s"] = ips;
      std::printf("%s\n", json_text(j).c_str());
      return 0;
    }
    std::printf("%s on %s split (%d images, %s): accuracy %.2f%% (%d/%d), %.0f images/s\n", o->model.c_str(),
                split->c_str(), r.count, backend->name().c_str(), 100 * r.accuracy(), r.correct, r.count, ips);
    std::printf("architecture: %s\n", model.arch.to_string().c_str());
    if (const auto src = model.metadata.find("nudge.source"); src != model.metadata.end())
      std::printf("source: %s\n", src->second.c_str());
    const auto recipe = model.metadata.find("nudge.recipe");
    if (recipe != model.metadata.end()) std::printf("recipe: %s\n", recipe->second.c_str());
    std::printf("\nclass  accuracy   confusion (rows: true class, columns: predicted)\n");
    for (int c = 0; c < r.classes; ++c) {
      std::printf("%5d  %7.2f%%  ", c, 100 * r.class_accuracy(c));
      for (int p = 0; p < r.classes; ++p) std::printf("%5ld", r.confusion[static_cast<size_t>(c) * r.classes + p]);
      std::printf("\n");
    }
    return 0;
  };
}

}  // namespace nudge::cli
