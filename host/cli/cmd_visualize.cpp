// nudge visualize: class prototypes. A preset of the regularised optimize job (a recipe of image priors, an ensemble
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

const char* kDefaultPca = "data/models/mnist_pca64.safetensors";

// The two recipes (docs/visualize.md has the measurements behind each value).
//   pca (the default): the image is the PCA basis' mean plus a combination of its 64 components, clamped, and the
//     coefficients are optimized. Each image starts as a random draw of the basis' Gaussian in its 32 leading
//     components, so prototypes start as different digit-like blurs: that keeps a class's prototypes apart. Two
//     penalties act on the coefficients, both in units of each component's variance: the Gaussian's log-density
//     (0.01), and a pull toward the image's own start (0.05; more prototypes reach the bar). Jitter 3. Both fade by 0.97 per update from update 100 on, and
//     no iterate before update 100 counts. Three models, the robust one included.
//   strokes (the first recipe): pixels are optimized from uniform noise. A heavy early blur that fades, jitter, TV
//     and L1 decay toward black (MNIST's digits are saturated strokes on black) shape the image for 150 updates;
//     then TV and L1 fade until both CNNs give the class >= 0.99.
RegularizerConfig pca_recipe() {
  RegularizerConfig r;
  r.pca_path = kDefaultPca;
  r.pca_prior = 0.01f;
  r.pca_anchor = 0.05f;
  r.jitter = 3;
  r.settle_steps = 100;
  r.prior_decay = 0.97f;
  return r;
}

RegularizerConfig strokes_recipe() {
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

struct VisualizeFlags {
  std::string recipe = "pca";
  std::string init;  // empty: the recipe's (pca draws, or uniform noise)
  int start_components = 32;
  int per_class = 10;
  // Most prototypes meet the bar at update 100 (pca) or 150-300 (strokes); the jittered pca stragglers need up to ~800.
  int steps = 800;
  static constexpr int kStrokesSteps = 400;
  float lr = 0.1f;
  float stop_at = 0.99f;
  std::string optimizer = "adam";
  int chunk = 0;
  int scale = 0;  // 0: by K
  RegularizerConfig reg = pca_recipe();  // what the flags write into (so --help shows the default recipe)
};

// Every prototype must convince every model of the ensemble: optimizing against one lets the image keep features only
// that model reads (docs/visualize.md). The pca recipe adds the PGD-trained model, whose gradients point at features
// a person sees (Santurkar et al. 2019); the strokes recipe uses the two plain CNNs it was tuned with.
std::vector<std::string> default_models(const std::string& recipe) {
  std::vector<std::string> m = {"data/models/mnist_cnn.safetensors", "data/models/mnist_cnn_seed2.safetensors"};
  if (recipe == "pca") m.push_back("data/models/mnist_cnn_robust.safetensors");
  return m;
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
  for (const std::string& m : default_models("pca")) model_default += (model_default.empty() ? "" : " ") + m;
  cmd->add_option("--model", *models,
                  "model to visualize; repeat for an ensemble every prototype must convince (default for --recipe "
                  "strokes: the first two)")
      ->default_str(model_default);
  cmd->add_option("--judge", *judge,
                  "independent model that scores the prototypes afterwards (default " + std::string(kDefaultJudge) +
                      " when it exists; never optimized against)");
  cmd->add_option("--per-class", f->per_class, "prototypes per class (K); the grid is 10 x K")->capture_default_str();
  cmd->add_option("--steps", f->steps, "update budget per image (--recipe strokes: 400)")->capture_default_str();
  cmd->add_option("--lr", f->lr, "step size")->capture_default_str();
  cmd->add_option("--optimizer", f->optimizer, "adam | sgd | sign")->capture_default_str();
  cmd->add_option("--stop-at", f->stop_at, "confidence every model must give the class (then the image is frozen)")
      ->capture_default_str();
  cmd->add_option("--recipe", f->recipe, "pca (a data-manifold prior; the default) | strokes (pixel priors from noise)")
      ->capture_default_str();
  cmd->add_option("--init", f->init,
                  "start images: pca | noise | gauss | gray | test | train | a folder (default: pca for --recipe pca, "
                  "noise for strokes)");
  cmd->add_option("--start-components", f->start_components, "--init pca: leading components the starts draw")
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
    if (f->recipe != "pca" && f->recipe != "strokes")
      throw InputError("--recipe must be pca or strokes (got '" + f->recipe + "')");
    // Flags the user gave override the recipe's values.
    const RegularizerConfig reg = f->recipe == "pca" ? f->reg : given_regularizers(*cmd, f->reg, strokes_recipe());
    const std::string init = !f->init.empty() ? f->init : f->recipe == "pca" ? "pca" : "noise";

    JobRun run;
    run.models = models->empty() ? default_models(f->recipe) : *models;
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
    job.init = parse_init(init, &job.image_dir);
    job.pca_start_components = f->start_components;
    job.count = static_cast<long>(C) * K;
    job.target = "all";
    job.steps = f->recipe == "strokes" && cmd->count("--steps") == 0 ? VisualizeFlags::kStrokesSteps : f->steps;
    job.seed = o->seed;
    job.chunk = f->chunk;
    job.reg = reg;
    if (reg.pca_path == kDefaultPca && !fs::exists(kDefaultPca))
      throw InputError("--recipe pca needs the basis " + std::string(kDefaultPca) +
                       " (made by nudge pca, run from the repository root); give --pca FILE or --recipe strokes");
    load_pca_prior(job);
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
                {"recipe", f->recipe},
                {"init", init},
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

    if (job.init == InitKind::Pca) run.spec["start_components"] = job.pca_start_components;
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
