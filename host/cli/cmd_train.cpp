// nudge train: fit a model on the training split, report its test accuracy, save it atomically.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <memory>

#include "atomic_file.h"
#include "backend.h"
#include "commands.h"
#include "dataset.h"
#include "errors.h"
#include "evaluate.h"
#include "train.h"

namespace nudge::cli {

Runner add_train_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("train", "train a CNN on the training split and save it");
  auto o = std::make_shared<CommonOptions>();
  o->out = "model.safetensors";
  auto t = std::make_shared<TrainOptions>();
  auto arch = std::make_shared<std::string>(Architecture::reference_string());
  add_common_options(*cmd, *o, false, "where to write the trained model (safetensors)");
  cmd->add_option("--arch", *arch, "architecture string")->capture_default_str();
  // Int ranges, not CLI::PositiveNumber, whose message prints DBL_MAX in full ("0 not in range 0.000000 to 1797...").
  const int kMaxInt = std::numeric_limits<int>::max();
  cmd->add_option("--epochs", t->epochs, "epochs")->capture_default_str()->check(CLI::Range(1, kMaxInt));
  cmd->add_option("--batch", t->batch, "batch size")->capture_default_str()->check(CLI::Range(1, kMaxInt));
  cmd->add_option("--lr", t->adam.lr, "Adam learning rate")->capture_default_str()->check(CLI::Validator(
      [](std::string& s) {
        char* end = nullptr;
        const double v = std::strtod(s.c_str(), &end);
        return v > 0 && std::isfinite(v) && *end == '\0' ? std::string() : "must be a finite number > 0 (got " + s + ")";
      },
      "POSITIVE"));
  cmd->add_option("--limit", t->limit, "train on the first N images only (0 = all)")->capture_default_str()->check(CLI::Range(0, kMaxInt));
  return [=]() {
    const Architecture a = Architecture::parse(*arch);
    const Dataset train = load_dataset(o->data, "train");
    const Dataset test = load_dataset(o->data, "test");
    if (a.input.c != 1 || a.input.h != train.rows || a.input.w != train.cols)
      throw InputError("architecture input " + std::to_string(a.input.c) + "x" + std::to_string(a.input.h) + "x" +
                       std::to_string(a.input.w) + " does not fit the data's 1x" + std::to_string(train.rows) + "x" +
                       std::to_string(train.cols) + " images");
    if (a.num_classes() < 10) throw InputError("architecture has " + std::to_string(a.num_classes()) + " outputs; the data has 10 classes");
    // Opened now so that an unwritable destination fails before training, not after it.
    AtomicFile out(o->out);
    auto backend = make_backend(o->device);
    std::fprintf(stderr, "nudge train: %s, %d params, %d images x %d epochs, batch %d, on %s\n", a.to_string().c_str(),
                 static_cast<int>(a.param_count()), t->limit ? std::min(t->limit, train.count) : train.count, t->epochs,
                 t->batch, backend->name().c_str());
    TrainOptions opt = *t;
    opt.seed = o->seed;
    Model model = Model::glorot(a, o->seed);
    const auto stats = train_model(*backend, model, train, opt);
    double seconds = 0;
    for (const auto& s : stats) seconds += s.seconds;
    backend->load_model(model);
    const EvalResult ev = evaluate_model(*backend, test, a.num_classes());
    out.write(model.serialize({{"nudge.test_accuracy", std::to_string(ev.accuracy())},
                               {"nudge.train", "epochs=" + std::to_string(opt.epochs) + " batch=" +
                                                   std::to_string(opt.batch) + " lr=" + std::to_string(opt.adam.lr) +
                                                   " seed=" + std::to_string(opt.seed)}}));
    out.commit();
    std::printf("trained %d epochs in %.1fs; test accuracy %.2f%% (%d/%d); saved %s\n", opt.epochs, seconds,
                100 * ev.accuracy(), ev.correct, ev.count, o->out.c_str());
    return 0;
  };
}

}  // namespace nudge::cli
