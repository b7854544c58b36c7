// nudge eval: accuracy, per-class accuracy and confusion matrix on a split.
#include <nlohmann/json.hpp>

#include <cstdio>
#include <limits>
#include <memory>
#include <sstream>

#include "backend.h"
#include "commands.h"
#include "evaluate.h"
#include "errors.h"
#include "model_file.h"
#include "model_fold.h"
#include "make_backend.h"
#include "model_loading.h"
#include "contact_sheet.h"
#include "json_text.h"
#include "nondigits.h"

namespace nudge::cli {

namespace {

// A class's name in tables and captions: "none" for "not a digit".
std::string short_name(const std::string& name) { return name == kNotADigit ? "none" : name; }

// Classes a model gives to images that are not digits, per family. The synthetic families are drawn at indices from
// 2^40 on, which no training run reaches, so an open-set model is never scored on images it trained on; the shuffled
// family permutes test digits here (training permutes training digits). The noise family is the exception: its
// image i is nudge optimize's --init noise image i (of --seed), the images the optimization experiments start from.
int eval_nondigits(const Model& model, const CommonOptions& o, const std::string& list, int count,
                   const std::string& fashion_dir, bool json, const std::string& sheet) {
  constexpr int kSheetPerFamily = 10;
  std::vector<std::vector<float>> sheet_images;  // the first kSheetPerFamily of every family
  std::vector<std::string> sheet_captions;
  const Dataset test = load_dataset(o.data, "test");
  check_model_fits(model, o.model, test.rows, test.cols, 10);
  const int K = model.arch.num_classes(), D = test.rows * test.cols;
  const std::vector<std::string> names = class_names(model);
  const bool open_set = names.back() == kNotADigit;
  auto backend = make_backend(o.device);
  backend->load_model(model);
  nlohmann::json out;
  out["model"] = o.model;
  out["classes"] = names;
  out["seed"] = o.seed;
  if (!json)
    std::printf("%s (%s): classes given to images that are not digits, %d per family\n", o.model.c_str(),
                backend->name().c_str(), count);
  std::stringstream ss(list);
  std::string family;
  while (std::getline(ss, family, ',')) {
    std::unique_ptr<Dataset> fashion;
    int n = count;
    NonDigitFamily f{};
    if (family == "fashion") {
      fashion = std::make_unique<Dataset>(load_dataset(fashion_dir, "test"));
      if (fashion->rows != test.rows || fashion->cols != test.cols) throw InputError(fashion_dir + ": images are not " + std::to_string(test.rows) + "x" + std::to_string(test.cols));
      n = std::min(count, fashion->count);
    } else {
      f = parse_nondigit_family(family);
    }
    std::vector<long> hist(K, 0);
    const int chunk = 1000;
    std::vector<float> x(static_cast<size_t>(chunk) * D), probs(static_cast<size_t>(chunk) * K);
    for (int i0 = 0; i0 < n; i0 += chunk) {
      const int m = std::min(chunk, n - i0);
      for (int j = 0; j < m; ++j) {
        float* img = x.data() + static_cast<size_t>(j) * D;
        if (fashion) fashion->image_as_float(i0 + j, img);
        else make_nondigit(f, o.seed, (f == NonDigitFamily::Noise ? 0 : uint64_t{1} << 40) + i0 + j, test, img);
      }
      backend->predict(x.data(), m, probs.data());
      for (int j = 0; j < m; ++j) {
        const float* p = probs.data() + static_cast<size_t>(j) * K;
        const int cls = static_cast<int>(std::max_element(p, p + K) - p);
        ++hist[cls];
        if (!sheet.empty() && i0 + j < kSheetPerFamily) {
          sheet_images.emplace_back(x.begin() + static_cast<size_t>(j) * D, x.begin() + static_cast<size_t>(j + 1) * D);
          const std::string name = short_name(names[cls]);
          // Green when an open-set model says "not a digit", red when it calls the image a digit.
          sheet_captions.push_back((open_set ? (cls == K - 1 ? "+" : "-") : "") + (j == 0 && i0 == 0 ? family + ": " : "") + name);
        }
      }
    }
    nlohmann::json fj;
    fj["family"] = family;
    fj["count"] = n;
    fj["histogram"] = hist;
    if (open_set) fj["not_a_digit"] = static_cast<double>(hist[K - 1]) / n;
    out["families"].push_back(fj);
    if (!json) {
      std::printf("  %-9s", family.c_str());
      if (open_set) std::printf(" \"not a digit\" %6.2f%%  ", 100.0 * hist[K - 1] / n);
      std::printf(" histogram");
      for (int k = 0; k < K; ++k) std::printf(" %s:%ld", short_name(names[k]).c_str(), hist[k]);
      std::printf("\n");
    }
  }
  if (!sheet.empty()) {
    std::vector<SheetCell> cells;
    for (size_t i = 0; i < sheet_images.size(); ++i)
      cells.push_back({nullptr, sheet_images[i].data(), test.cols, test.rows, sheet_captions[i]});
    write_contact_sheet(sheet, cells, kSheetPerFamily, 3);
    if (!json) std::printf("sheet: %s (the first %d images of each family with the class given)\n", sheet.c_str(), kSheetPerFamily);
  }
  if (json) std::printf("%s\n", json_text(out).c_str());
  return 0;
}

}  // namespace

Runner add_eval_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "accuracy of a model on the test (or training) split");
  auto o = std::make_shared<CommonOptions>();
  auto split = std::make_shared<std::string>("test");
  auto limit = std::make_shared<int>(0);
  auto json = std::make_shared<bool>(false);
  auto nondigits = std::make_shared<std::string>();
  auto count = std::make_shared<int>(10000);
  auto fashion = std::make_shared<std::string>("data/fashion-mnist");
  auto sheet = std::make_shared<std::string>();
  add_common_options(*cmd, *o, true, "");
  cmd->add_option("--split", *split, "test | train")->capture_default_str()->check(CLI::IsMember({"test", "train"}));
  cmd->add_option("--limit", *limit, "first N images only (0 = all)")->check(CLI::Range(0, std::numeric_limits<int>::max()));
  cmd->add_flag("--json", *json, "print one JSON object");
  cmd->add_option("--nondigits", *nondigits, "instead of the digits: classify images that are not digits and count "
                  "the classes given to them, per family: noise, uniform, gauss, constant, shuffled, patches, shapes, blocks, fashion "
                  "(Fashion-MNIST's test images, from --fashion)");
  cmd->add_option("--count", *count, "images per --nondigits family")->capture_default_str()->check(CLI::Range(1, 10000000));
  cmd->add_option("--fashion", *fashion, "folder of Fashion-MNIST's IDX files (data/fetch_mnist.sh --fashion)")
      ->capture_default_str();
  cmd->add_option("--sheet", *sheet, "with --nondigits: a PNG of each family's first 10 images and their classes");
  return [=]() {
    // The file's architecture is reported; what runs is its inference form (bn folded, dropout dropped).
    const Model written = load_model_file(o->model);
    const Model model = fold_for_inference(written);
    const bool folded = written.arch.has_training_layers();
    if (!nondigits->empty()) return eval_nondigits(model, *o, *nondigits, *count, *fashion, *json, *sheet);
    const Dataset data = load_dataset(o->data, *split);
    check_model_fits(model, o->model, data.rows, data.cols, 10);
    auto backend = make_backend(o->device);
    backend->load_model(model);
    const EvalResult r = evaluate_model(*backend, data, model.arch.num_classes(), *limit, !*json);
    const double ips = r.count / std::max(r.seconds, 1e-9);
    if (*json) {
      nlohmann::json j;
      j["model"] = o->model;
      j["architecture"] = written.arch.to_string();
      if (folded) j["inference_architecture"] = model.arch.to_string();
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
    std::printf("architecture: %s\n", written.arch.to_string().c_str());
    if (folded) std::printf("runs as: %s (bn folded into the layer before it, dropout dropped)\n", model.arch.to_string().c_str());
    if (const auto src = model.metadata.find("nudge.source"); src != model.metadata.end())
      std::printf("source: %s\n", src->second.c_str());
    const auto recipe = model.metadata.find("nudge.recipe");
    if (recipe != model.metadata.end()) std::printf("recipe: %s\n", recipe->second.c_str());
    std::printf("\nclass  accuracy   confusion (rows: true class, columns: predicted)\n");
    const std::vector<std::string> names = class_names(model);
    for (int c = 0; c < r.classes; ++c) {
      if (c >= 10 && r.class_accuracy(c) == 0 && names[c] == kNotADigit) {
        std::printf("%5s  %8s  ", "none", "");  // no test image is a non-digit: only its column counts
      } else {
        std::printf("%5s  %7.2f%%  ", short_name(names[c]).c_str(), 100 * r.class_accuracy(c));
      }
      for (int p = 0; p < r.classes; ++p) std::printf("%5ld", r.confusion[static_cast<size_t>(c) * r.classes + p]);
      std::printf("\n");
    }
    return 0;
  };
}

}  // namespace nudge::cli
