// nudge visualize: class prototypes from noise. A preset of the regularised optimize job (image priors, an ensemble
// of models, a confidence bar) whose defaults were found by measurement (docs/visualize.md): K images per class,
// image i aimed at class i mod C (C = 10 for MNIST), written as the usual report plus classes.png, a C x K grid with
// row c = class c.
// An optional judge, a model the optimization never sees, scores how recognisable the prototypes are.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"
#include "commands.h"
#include "contact_sheet.h"
#include "errors.h"
#include "model_file.h"
#include "job_runner.h"
#include "model.h"

namespace nudge::cli {

namespace {

namespace fs = std::filesystem;

const char* kDefaultJudge = "data/models/judge_mlp.safetensors";

// The preset (docs/visualize.md has the measurements behind each value). In short: strong priors shape the image for
// settle_steps updates (a heavy early blur that fades, jitter, TV, L1 decay toward black, since MNIST digits are
// saturated strokes on black); then the TV and L1 weights fade (prior_decay) until both CNNs give the class >= 0.99.
struct VisualizeFlags {
  int per_class = 10;
  int steps = 400;  // 1,000 prototypes need 150-300 updates (median ~200); the rest is headroom for stragglers
  float lr = 0.1f;
  float stop_at = 0.99f;
  std::string optimizer = "adam";
  int chunk = 0;
  int scale = 0;  // 0: by K
  RegularizerConfig reg = preset_regularizers();

  static RegularizerConfig preset_regularizers() {
    RegularizerConfig r;
    r.tv = 0.05f;
    r.l2 = 0.0f;
    r.l1 = 0.01f;
    r.l2_center = 0.0f;
    r.blur_every = 4;
    r.blur_sigma = 2.0f;
    r.blur_decay = 0.97f;
    r.jitter = 2;
    r.settle_steps = 150;
    r.prior_decay = 0.97f;
    return r;
  }
};

// Both CNNs: optimizing against one lets the image keep features only that model reads (docs/visualize.md).
std::vector<std::string> default_models() {
  return {"data/models/mnist_cnn.safetensors", "data/models/mnist_cnn_seed2.safetensors"};
}

bool same_file(const std::string& a, const std::string& b) {
  if (a == b) return true;
  std::error_code ec1, ec2;
  const bool eq = fs::equivalent(a, b, ec1);
  return !ec1 && !ec2 && eq;
}

}  // namespace

Runner add_visualize_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("visualize", "class prototypes from noise: regularised optimization, judged");
  auto o = std::make_shared<CommonOptions>();
  o->out = "out/visualize";
  auto f = std::make_shared<VisualizeFlags>();
  add_common_options(*cmd, *o, false, "output folder (classes.png, results.csv, summary.json, images.npy, grid.png)");
  auto models = std::make_shared<std::vector<std::string>>();
  auto judge = std::make_shared<std::string>();
  std::string model_default;
  for (const std::string& m : default_models()) model_default += (model_default.empty() ? "" : " ") + m;
  cmd->add_option("--model", *models, "model to visualize; repeat for an ensemble every prototype must convince")
      ->default_str(model_default);
  cmd->add_option("--judge", *judge,
                  "independent model that scores the prototypes afterwards (default " + std::string(kDefaultJudge) +
                      " when it exists; never optimized against)");
  cmd->add_option("--per-class", f->per_class, "prototypes per class (K); the grid is 10 x K")->capture_default_str();
  cmd->add_option("--steps", f->steps, "update budget per image")->capture_default_str();
  cmd->add_option("--lr", f->lr, "step size")->capture_default_str();
  cmd->add_option("--optimizer", f->optimizer, "adam | sgd | sign")->capture_default_str();
  cmd->add_option("--stop-at", f->stop_at, "confidence every model must give the class (then the image is frozen)")
      ->capture_default_str();
  add_regularizer_flags(*cmd, f->reg);
  cmd->add_option("--chunk", f->chunk, "images per chunk (default: the backend's choice)");
  cmd->add_option("--scale", f->scale, "pixels per image pixel in classes.png (default: 3 for K <= 10, 2 up to 30, else 1)");
  cmd->add_flag("--quiet", "no progress bar");
  cmd->add_flag("--resume", "continue the interrupted job in --out from its journal (the same command otherwise)");
  return [=]() {
    if (f->per_class < 1) throw InputError("--per-class must be at least 1");
    if (f->steps < 1) throw InputError("--steps must be at least 1");
    if (!(f->stop_at > 0 && f->stop_at <= 1)) throw InputError("--stop-at must be a probability in (0, 1]");
    if (f->scale < 0 || f->scale > 64) throw InputError("--scale must be between 1 and 64 (0: by --per-class)");
    const int K = f->per_class;

    JobRun run;
    run.models = models->empty() ? default_models() : *models;
    if (!judge->empty()) {
      run.judge = *judge;
    } else if (fs::exists(kDefaultJudge)) {
      run.judge = kDefaultJudge;
    }
    if (!run.judge.empty())
      for (const std::string& m : run.models)
        if (same_file(m, run.judge))
          throw InputError("the judge " + run.judge + " is also an optimized-against model (" + m + ")");

    // The primary model fixes the image shape and the class count (run_job checks the others against it).
    const Model primary = load_inference_model(run.models.front());
    if (primary.arch.input.c != 1) throw InputError("visualize draws 1-channel images; " + run.models.front() +
                                                    " takes " + std::to_string(primary.arch.input.c) + " channels");
    const int H = primary.arch.input.h, W = primary.arch.input.w, C = primary.arch.num_classes();
    // classes.png's size by write_image_grid's layout, checked before hours of work rather than after.
    const int scale = f->scale > 0 ? f->scale : (K <= 10 ? 3 : K <= 30 ? 2 : 1);
    const int t = std::max(1, scale / 3);
    const int64_t label_w = 4 + static_cast<int64_t>(std::to_string(C - 1).size()) * 6 * t;
    const int64_t sheet_w = label_w + static_cast<int64_t>(K) * W * scale + (static_cast<int64_t>(K) + 1) * 2;
    const int64_t sheet_h = static_cast<int64_t>(C) * H * scale + (C + 1) * 2;
    if (sheet_w * sheet_h > (int64_t{1} << 27))
      throw InputError("--per-class " + std::to_string(K) + " makes classes.png " + std::to_string(sheet_w) + "x" +
                       std::to_string(sheet_h) + ", over 2^27 pixels: lower --per-class or --scale");

    OptimizeJob& job = run.job;
    job.init = InitKind::Noise;
    job.count = static_cast<long>(C) * K;
    job.target = "all";
    job.steps = f->steps;
    job.seed = o->seed;
    job.chunk = f->chunk;
    job.reg = f->reg;
    job.step.loss = LossKind::CrossEntropy;
    job.step.optimizer = parse_optimizer(f->optimizer);
    job.step.lr = f->lr;
    job.step.stop_prob = f->stop_at;
    job.step.early_stop = true;

    run.data = o->data;
    run.device = o->device;
    run.out = o->out;
    run.quiet = cmd->count("--quiet") > 0;
    run.spec = {{"command", "visualize"},
                {"model", run.models.front()},
                {"init", "noise"},
                {"per_class", K},
                {"count", job.count},
                {"target", "all"},
                {"loss", to_string(job.step.loss)},
                {"optimizer", to_string(job.step.optimizer)},
                {"lr", job.step.lr},
                {"steps", job.steps},
                {"stop_at", job.step.stop_prob},
                {"early_stop", true},
                {"seed", job.seed}};

    run.resume = cmd->count("--resume") > 0;
    // classes.png is part of the folder's result set: it is staged and committed with the other files.
    const int D = H * W;
    run.extra_files = [=](const std::vector<float>& images, const std::function<std::string(const std::string&)>& stage) {
      // Image i is aimed at class i mod C: row c of the grid holds images c, c + C, c + 2C, ...
      if (images.size() != static_cast<size_t>(job.count) * D)
        throw InternalError("visualize: expected " + std::to_string(job.count) + " images, got " +
                            std::to_string(images.size() / D));
      std::vector<const float*> cells(static_cast<size_t>(job.count));
      for (int c = 0; c < C; ++c)
        for (int k = 0; k < K; ++k)
          cells[static_cast<size_t>(c) * K + k] = images.data() + (static_cast<size_t>(k) * C + c) * D;
      std::vector<std::string> labels;
      for (int c = 0; c < C; ++c) labels.push_back(std::to_string(c));
      write_image_grid(stage("classes.png"), cells, W, H, K, scale, labels);
    };
    run_job(run, nullptr);
    const std::string grid = (fs::path(run.out) / "classes.png").string();
    std::printf("classes.png (%d x %d, row c = class c): %s\n", C, K, grid.c_str());
    std::printf("results.csv, summary.json, images.npy, grid.png: %s\n", run.out.c_str());
    return 0;
  };
}

}  // namespace nudge::cli
