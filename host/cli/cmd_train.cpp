// nudge train: fit a model on the training split (standard or adversarial training), report its test accuracy, save
// it atomically with its recipe in the metadata and a JSON training log beside it. After every epoch it writes a
// checkpoint (train/checkpoint.h) beside the model; SIGINT/SIGTERM stop the run with it kept, and the same command
// with --resume continues to the very model an uninterrupted run writes. One job at a time per --out (a lock file).
#include <nlohmann/json.hpp>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>

#include "atomic_file.h"
#include "backend.h"
#include "checkpoint.h"
#include "commands.h"
#include "dataset.h"
#include "errors.h"
#include "evaluate.h"
#include "file_lock.h"
#include "interrupt.h"
#include "job_setup.h"
#include "make_backend.h"
#include "model_file.h"
#include "nondigits.h"
#include "train.h"
#include "json_text.h"

namespace nudge::cli {

namespace {

struct AdvFlags {
  std::string method, lr_schedule = "constant", guard = "on", log, check_attack = "pgd";
  float eps = 0.3f, adv_lr = -1, beta = 6.0f, collapse_drop = 0.2f, overfit_gap = 0.5f;
  double eps_ramp = 0;
  int adv_steps = -1, check_count = 500, check_steps = 20, check_restarts = 1;
  bool mix_clean = false;
};

CLI::Validator positive_float() {
  return CLI::Validator(
      [](std::string& s) {
        char* end = nullptr;
        const double v = std::strtod(s.c_str(), &end);
        return v > 0 && std::isfinite(v) && *end == '\0' ? std::string() : "must be a finite number > 0 (got " + s + ")";
      },
      "POSITIVE");
}

// "data/models/robust.safetensors" -> "data/models/robust.train.json".
std::string log_path_for(const std::string& model_path) {
  const std::string ext = ".safetensors";
  std::string stem = model_path;
  if (stem.size() > ext.size() && stem.compare(stem.size() - ext.size(), ext.size(), ext) == 0)
    stem.resize(stem.size() - ext.size());
  return stem + ".train.json";
}

nlohmann::json recipe_json(const std::string& arch, const TrainOptions& opt, const TrainSummary& sum) {
  nlohmann::json r;
  r["architecture"] = arch;
  r["method"] = opt.adv.method == AdvMethod::None ? "standard" : to_string(opt.adv.method);
  r["epochs"] = opt.epochs;
  r["batch"] = opt.batch;
  r["optimizer"] = "adam";
  r["lr"] = opt.adam.lr;
  r["lr_schedule"] = to_string(opt.lr_schedule);
  r["seed"] = opt.seed;
  r["data"] = "MNIST train, first " + std::to_string(sum.trained_images) + " images";
  if (opt.adv.method != AdvMethod::None) {
    const AdversarialConfig& a = opt.adv;
    r["norm"] = "linf";
    r["eps"] = a.eps;
    r["eps_ramp_epochs"] = a.eps_ramp_epochs;
    r["attack_steps"] = a.method == AdvMethod::Fgsm ? 1 : a.steps;
    r["attack_step_size"] = a.step_size;
    if (a.method == AdvMethod::Trades) r["beta"] = a.beta;
    if (a.method != AdvMethod::Trades) r["mix_clean"] = a.mix_clean;
    r["held_out_check"] = {{"images", sum.check_images}, {"attack", a.check_apgd ? "apgd-ce" : "pgd"}, {"steps", a.check_steps},
                           {"restarts", a.check_restarts}, {"guard", a.guard}, {"collapse_drop", a.collapse_drop},
                           {"overfit_gap", a.overfit_gap}};
    r["kept_epoch"] = sum.kept_epoch;
    r["collapsed"] = sum.collapsed;
  }
  return r;
}

// Removes the temporaries that a killed earlier job left of `path` (held under this job's lock).
void remove_dead_temporaries_of(const std::string& path) {
  const std::filesystem::path p(path);
  remove_stale_temporaries(p.has_parent_path() ? p.parent_path().string() : ".", p.filename().string());
}

// Tests stop a run right after epoch k's checkpoint, deterministically, as a SIGINT arriving then would
// (NUDGE_TEST_INTERRUPT_AFTER_EPOCH=k; tests/test_train_resume.cpp).
void interrupt_for_tests(int epoch) {
  const char* k = std::getenv("NUDGE_TEST_INTERRUPT_AFTER_EPOCH");
  if (k && std::atoi(k) == epoch) std::raise(SIGINT);
}

}  // namespace

Runner add_train_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("train", "train a CNN on the training split and save it");
  auto o = std::make_shared<CommonOptions>();
  o->out = "model.safetensors";
  auto t = std::make_shared<TrainOptions>();
  auto f = std::make_shared<AdvFlags>();
  auto arch = std::make_shared<std::string>(Architecture::reference_string());
  auto resume = std::make_shared<bool>(false);
  add_common_options(*cmd, *o, false, "where to write the trained model (safetensors)");
  auto init = std::make_shared<std::string>();
  auto open_set = std::make_shared<int>(0);
  auto augment = std::make_shared<int>(0);
  auto open_families = std::make_shared<std::string>("uniform,gauss,constant,shuffled,patches,shapes");
  auto* arch_opt = cmd->add_option("--arch", *arch, "architecture string")->capture_default_str();
  cmd->add_option("--init", *init, "start from this model's weights (.safetensors or .onnx, e.g. a network initialised "
                  "by PyTorch) instead of Glorot's; its architecture is the run's")->excludes(arch_opt);
  cmd->add_option("--open-set", *open_set, "add N synthetic non-digits to every batch as an extra class, \"not a "
                  "digit\" (the default architecture then has 11 outputs)")->check(CLI::Range(0, 100000));
  cmd->add_option("--augment-shift", *augment, "shift every training digit by up to this many pixels each way (a "
                  "new shift per epoch; 0: none)")->check(CLI::Range(0, 8));
  cmd->add_option("--open-set-families", *open_families, "the non-digits' families: uniform, gauss, constant, "
                  "shuffled, patches, shapes, blocks, noise")->capture_default_str();
  // Int ranges, not CLI::PositiveNumber, whose message prints DBL_MAX in full ("0 not in range 0.000000 to 1797...").
  const int kMaxInt = std::numeric_limits<int>::max();
  cmd->add_option("--epochs", t->epochs, "epochs")->capture_default_str()->check(CLI::Range(1, kMaxInt));
  cmd->add_option("--batch", t->batch, "batch size")->capture_default_str()->check(CLI::Range(1, kMaxInt));
  cmd->add_option("--lr", t->adam.lr, "Adam learning rate (the peak of a cyclic schedule)")->capture_default_str()->check(positive_float());
  cmd->add_option("--lr-schedule", f->lr_schedule, "constant | step (/10 at 1/2 and 3/4 of the epochs) | cyclic (0 -> lr at 2/5 -> 0)")
      ->capture_default_str()->check(CLI::IsMember({"constant", "step", "cyclic"}));
  cmd->add_option("--limit", t->limit, "train on the first N images only (0 = all)")->capture_default_str()->check(CLI::Range(0, kMaxInt));
  auto* adv = cmd->add_option("--adversarial", f->method, "adversarial training: pgd (Madry) | trades | fgsm (Fast-AT)")
                  ->check(CLI::IsMember({"pgd", "trades", "fgsm"}));
  auto needs_adv = [&](CLI::Option* opt) { opt->needs(adv); };
  needs_adv(cmd->add_option("--eps", f->eps, "L-inf radius of the training attack")->capture_default_str()->check(positive_float()));
  needs_adv(cmd->add_option("--eps-ramp", f->eps_ramp, "grow eps linearly from 0 over the first EPOCHS epochs")
                ->capture_default_str()->check(CLI::Range(0.0, 1e6)));
  needs_adv(cmd->add_option("--adv-steps", f->adv_steps, "attack steps per batch (default: pgd 10, trades 10, fgsm 1)")
                ->check(CLI::Range(1, 100000)));
  needs_adv(cmd->add_option("--adv-lr", f->adv_lr, "attack step size (default: 2.5 eps / steps; fgsm 1.25 eps)")->check(positive_float()));
  needs_adv(cmd->add_option("--beta", f->beta, "TRADES: weight of the KL term")->capture_default_str()->check(positive_float()));
  needs_adv(cmd->add_flag("--mix-clean", f->mix_clean, "pgd/fgsm: train on the clean and the attacked batch, half each"));
  needs_adv(cmd->add_option("--check-count", f->check_count, "held-out training images for the per-epoch robust check (0 = none)")
                ->capture_default_str()->check(CLI::Range(0, 59999)));
  needs_adv(cmd->add_option("--check-steps", f->check_steps, "PGD steps of the check (step 2.5 eps / steps)")
                ->capture_default_str()->check(CLI::Range(1, 100000)));
  needs_adv(cmd->add_option("--check-attack", f->check_attack, "the check's attack: pgd | apgd-ce (stronger; sees masking after Fast-AT)")
                ->capture_default_str()->check(CLI::IsMember({"pgd", "apgd-ce"})));
  needs_adv(cmd->add_option("--check-restarts", f->check_restarts, "random restarts of the check")
                ->capture_default_str()->check(CLI::Range(1, 1000)));
  needs_adv(cmd->add_option("--guard", f->guard, "on: stop and keep the best epoch when the check's robust accuracy collapses")
                ->capture_default_str()->check(CLI::IsMember({"on", "off"})));
  needs_adv(cmd->add_option("--collapse-drop", f->collapse_drop, "a fall of robust accuracy below the best epoch's by this much is a collapse")
                ->capture_default_str()->check(CLI::Range(0.0, 1.0)));
  needs_adv(cmd->add_option("--overfit-gap", f->overfit_gap, "from epoch 2 on, training-attack accuracy above the "
                            "check's robust accuracy by this much is a collapse (1: never)")
                ->capture_default_str()->check(CLI::Range(0.0, 1.0)));
  cmd->add_option("--log", f->log, "JSON training log (default: beside the model, NAME.train.json)");
  cmd->add_flag("--resume", *resume, "continue an interrupted run from its checkpoint (OUT.checkpoint); every other "
                "option must be as before");
  return [=]() {
    std::unique_ptr<Model> init_model;
    if (!init->empty()) {
      init_model = std::make_unique<Model>(load_model_file(*init));
      init_model->metadata.clear();  // the trained model's metadata is its own recipe, not its start's
    }
    std::string arch_text = *arch;
    // An open-set model needs one output more than the digits; the default architecture gets it.
    if (*open_set > 0 && !init_model && arch_text == Architecture::reference_string())
      arch_text = arch_text.substr(0, arch_text.rfind("dense10")) + "dense11";
    const Architecture a = init_model ? init_model->arch : Architecture::parse(arch_text);
    const Dataset train = load_dataset(o->data, "train");
    const Dataset test = load_dataset(o->data, "test");
    if (a.input.c != 1 || a.input.h != train.rows || a.input.w != train.cols)
      throw InputError("architecture input " + std::to_string(a.input.c) + "x" + std::to_string(a.input.h) + "x" +
                       std::to_string(a.input.w) + " does not fit the data's 1x" + std::to_string(train.rows) + "x" +
                       std::to_string(train.cols) + " images");
    if (a.num_classes() < 10) throw InputError("architecture has " + std::to_string(a.num_classes()) + " outputs; the data has 10 classes");
    TrainOptions opt = *t;
    opt.seed = o->seed;
    opt.augment_shift = *augment;
    if (*open_set > 0) {
      if (a.num_classes() != 11)
        throw InputError("--open-set needs an architecture with 11 outputs (10 digits and \"not a digit\"); it has " +
                         std::to_string(a.num_classes()));
      opt.open_set_per_batch = *open_set;
      opt.open_set_families = parse_nondigit_families(*open_families);
    }
    opt.lr_schedule = parse_lr_schedule(f->lr_schedule);
    if (!f->method.empty()) {
      AdversarialConfig& ad = opt.adv;
      ad.method = parse_adv_method(f->method);
      ad.eps = f->eps;
      ad.eps_ramp_epochs = f->eps_ramp;
      ad.steps = f->adv_steps > 0 ? f->adv_steps : ad.method == AdvMethod::Fgsm ? 1 : 10;
      if (ad.method == AdvMethod::Fgsm && ad.steps != 1) throw InputError("--adversarial fgsm takes one step (got --adv-steps " + std::to_string(ad.steps) + ")");
      ad.step_size = f->adv_lr > 0 ? f->adv_lr : ad.method == AdvMethod::Fgsm ? 1.25f * ad.eps : 2.5f * ad.eps / ad.steps;
      ad.beta = f->beta;
      if (f->mix_clean && ad.method == AdvMethod::Trades) throw InputError("--mix-clean is for pgd and fgsm; TRADES always trains on both");
      ad.mix_clean = f->mix_clean;
      ad.check_count = f->check_count;
      ad.check_steps = f->check_steps;
      ad.check_restarts = f->check_restarts;
      ad.check_apgd = f->check_attack == "apgd-ce";
      ad.guard = f->guard == "on";
      ad.collapse_drop = f->collapse_drop;
      ad.overfit_gap = f->overfit_gap;
      if (ad.check_count >= train.count) throw InputError("--check-count " + std::to_string(ad.check_count) + " leaves no training images");
    }
    const std::string log = f->log.empty() ? log_path_for(o->out) : f->log;
    // Opened now so that an unwritable destination fails before training, not after it.
    AtomicFile out(o->out);
    AtomicFile log_file(log);
    // The model, its log and its checkpoint belong to one job at a time. The lock file goes when the job does.
    const FileLock lock(o->out + ".lock", "--out " + o->out, command_line(), true);
    const std::string ckpt = checkpoint_path_for(o->out);
    for (const std::string& p : {o->out, ckpt, f->log.empty() ? log : std::string()})
      if (!p.empty()) remove_dead_temporaries_of(p);
    TrainSpec spec = train_spec(a.to_string(), opt, train);
    // A resume must start from the same weights: the start file's content, not its name.
    const std::string init_digest = init_model ? file_digest(*init) : "";
    if (init_model) spec.emplace_back("--init", init_digest);
    if (*augment > 0) spec.emplace_back("--augment-shift", std::to_string(*augment));
    if (*open_set > 0) {
      spec.emplace_back("--open-set", std::to_string(*open_set));
      spec.emplace_back("--open-set-families", *open_families);
    }
    const bool had_checkpoint = std::filesystem::exists(ckpt);
    TrainCheckpoint resumed;
    TrainHooks hooks;
    if (*resume) {
      if (!had_checkpoint)
        throw InputError("--resume: there is no checkpoint " + ckpt + " to continue (nudge train writes one after "
                         "every epoch and removes it when the run finishes); run without --resume to start afresh");
      resumed = read_checkpoint(ckpt);
      const std::string diff = spec_difference(resumed.spec, spec);
      if (!diff.empty()) throw InputError("--resume: " + diff + " (" + ckpt + ")");
      if (resumed.progress.model.arch.to_string() != a.to_string())
        throw InputError(ckpt + ": its weights are for " + resumed.progress.model.arch.to_string() +
                         ", not the --arch it records");
      resumed.resumed_after.push_back(resumed.progress.epoch);
      hooks.resume = &resumed.progress;
    }
    // After the checks above, so that a refused resume says only why.
    auto backend = make_backend(o->device);
    if (const std::string why = backend->training_refusal(a); !why.empty()) throw InputError(why);
    if (hooks.resume) {
      std::fprintf(stderr, "nudge train: resuming from %s after epoch %d of %d\n", ckpt.c_str(),
                   resumed.progress.epoch, opt.epochs);
      if (resumed.device != backend->name())
        std::fprintf(stderr, "nudge train: note: the checkpoint was made on %s and this run is on %s, so the model "
                     "need not be bit-identical to an uninterrupted run's\n", resumed.device.c_str(),
                     backend->name().c_str());
    } else if (had_checkpoint) {
      std::fprintf(stderr, "nudge train: %s holds an earlier, interrupted run; this run starts afresh and replaces it "
                   "after its first epoch (add --resume to continue that run instead)\n", ckpt.c_str());
    }
    const int images = std::min(t->limit ? t->limit : train.count, train.count - (opt.adv.method == AdvMethod::None ? 0 : opt.adv.check_count));
    check_trainable_with_batch_norm(a, opt, images, opt.open_set_per_batch);  // before the run's banner
    std::fprintf(stderr, "nudge train: %s, %d params, %d images x %d epochs, batch %d, %s, on %s\n", a.to_string().c_str(),
                 static_cast<int>(a.param_count()), images, t->epochs, t->batch,
                 opt.adv.method == AdvMethod::None ? "standard training"
                     : ("adversarial " + std::string(to_string(opt.adv.method)) + " eps " + std::to_string(opt.adv.eps).substr(0, 5) +
                        ", " + std::to_string(opt.adv.method == AdvMethod::Fgsm ? 1 : opt.adv.steps) + " steps of " +
                        std::to_string(opt.adv.step_size).substr(0, 6)).c_str(),
                 backend->name().c_str());
    int saved_epoch = hooks.resume ? hooks.resume->epoch : 0;
    hooks.epoch_done = [&](const TrainProgress& p) {
      TrainCheckpoint c;
      c.spec = spec;
      c.device = backend->name();
      c.resumed_after = resumed.resumed_after;
      c.progress = p;
      write_file_atomically(ckpt, serialize_checkpoint(c));
      saved_epoch = p.epoch;
      interrupt_for_tests(p.epoch);
    };
    Model model = init_model ? *init_model : Model::glorot(a, o->seed);
    TrainSummary sum;
    EvalResult ev;
    try {
      train_model(*backend, model, train, opt, &sum, hooks);
      backend->load_model(model);
      ev = evaluate_model(*backend, test, a.num_classes());
      throw_if_interrupted("the final evaluation");
    } catch (Interrupted& e) {
      e.kept = saved_epoch > 0
                   ? "epoch " + std::to_string(saved_epoch) + " of " + std::to_string(opt.epochs) + " is saved in " +
                         ckpt + " (" + o->out + " was not written); to continue, run the same command with --resume"
                   : "no epoch had finished, so nothing of this run was kept" +
                         (had_checkpoint ? "; the earlier checkpoint " + ckpt + " is as it was" : std::string());
      throw;
    }
    double seconds = 0;
    long attack_steps = 0;
    for (const auto& s : sum.epochs) {
      seconds += s.seconds;
      attack_steps += s.attack_image_steps;
    }
    nlohmann::json recipe = recipe_json(a.to_string(), opt, sum);
    if (init_model) recipe["init"] = *init + " (" + init_digest + ")";
    std::map<std::string, std::string> meta = {
        {"nudge.test_accuracy", std::to_string(ev.accuracy())},
        {"nudge.train", "epochs=" + std::to_string(opt.epochs) + " batch=" + std::to_string(opt.batch) +
                            " lr=" + std::to_string(opt.adam.lr) + " seed=" + std::to_string(opt.seed)}};
    if (opt.augment_shift > 0) recipe["augment"] = "shift up to " + std::to_string(opt.augment_shift) + " px";
    if (opt.open_set_per_batch > 0) {
      std::string families;
      for (NonDigitFamily f : opt.open_set_families) families += (families.empty() ? "" : ",") + to_string(f);
      recipe["open_set"] = {{"non_digits_per_batch", opt.open_set_per_batch}, {"families", families},
                            {"class", kNotADigit}, {"class_index", 10}};
      meta[kClassesKey] = std::string("0,1,2,3,4,5,6,7,8,9,") + kNotADigit;
    }
    meta["nudge.recipe"] = json_text(recipe);
    out.write(model.serialize(meta));
    nlohmann::json j;
    j["model"] = o->out;
    j["recipe"] = recipe;
    j["device"] = backend->name();
    j["seconds"] = seconds;
    j["attack_image_steps"] = attack_steps;
    j["test_accuracy"] = ev.accuracy();
    if (!sum.guard_message.empty()) j["guard"] = sum.guard_message;
    if (!resumed.resumed_after.empty()) j["resumed_after_epochs"] = resumed.resumed_after;
    for (const auto& s : sum.epochs) {
      nlohmann::json e = {{"epoch", s.epoch}, {"seconds", s.seconds}, {"images_per_s", s.images_per_s},
                          {"clean_loss", s.loss}, {"clean_accuracy", s.accuracy}, {"lr", s.lr}};
      if (opt.adv.method != AdvMethod::None) {
        e["eps"] = s.eps;
        e[opt.adv.method == AdvMethod::Trades ? "kl" : "adv_loss"] = s.adv_loss;
        e["adv_accuracy"] = s.adv_accuracy;
        e["attack_image_steps"] = s.attack_image_steps;
        if (s.check_robust >= 0) {
          e["check_clean_accuracy"] = s.check_clean;
          e["check_robust_accuracy"] = s.check_robust;
        }
      }
      j["epochs"].push_back(e);
    }
    log_file.write(json_text(j, 2) + "\n");
    out.commit();
    log_file.commit();
    std::error_code ignored;  // a checkpoint left behind would only offer to resume a finished run
    std::filesystem::remove(ckpt, ignored);
    std::printf("trained %d epochs in %.1fs; test accuracy %.2f%% (%d/%d); saved %s (log %s)%s\n",
                static_cast<int>(sum.epochs.size()), seconds, 100 * ev.accuracy(), ev.correct, ev.count,
                o->out.c_str(), log.c_str(), sum.collapsed ? "; the guard stopped training (see the log)" : "");
    return 0;
  };
}

}  // namespace nudge::cli
