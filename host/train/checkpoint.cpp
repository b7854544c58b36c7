#include "checkpoint.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>

#include "atomic_file.h"
#include "errors.h"
#include "json_text.h"
#include "safetensors.h"

namespace nudge {

namespace {

constexpr int kCheckpointVersion = 1;
constexpr const char* kCheckpointKey = "nudge.checkpoint";
constexpr const char* kAdamM = "adam.m.";
constexpr const char* kAdamV = "adam.v.";
constexpr const char* kBest = "best.";
// Larger than any checkpoint of a model nudge accepts (the weights' four copies plus the JSON): the read is sized
// from the file, so a bogus multi-GB "checkpoint" is refused before it is read.
constexpr uint64_t kMaxCheckpointBytes = uint64_t{4} << 30;

// The shortest %g text that reads back as the same value ("0.001" for 0.001f, not "0.00100000005"): the spec is
// compared as text and quoted in messages.
template <class T>
std::string exact(T v) {
  char text[40];
  for (int digits = 6;; ++digits) {
    std::snprintf(text, sizeof text, "%.*g", digits, static_cast<double>(v));
    if (static_cast<T>(std::strtod(text, nullptr)) == v || digits >= 17) return text;
  }
}

// FNV-1a over the pixels and labels: a change of any image or label of the split changes it.
uint64_t data_hash(const Dataset& d) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (const std::vector<uint8_t>* part : {&d.pixels, &d.labels})
    for (uint8_t b : *part) h = (h ^ b) * 0x100000001b3ULL;
  return h;
}

// Non-finite doubles (an epoch's images/s when it took no measurable time) have no JSON number: null stands for NaN.
nlohmann::json number(double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(); }
double number_from(const nlohmann::json& j) {
  return j.is_null() ? std::numeric_limits<double>::quiet_NaN() : j.get<double>();
}

nlohmann::json stats_json(const EpochStats& s) {
  return {{"epoch", s.epoch}, {"loss", number(s.loss)}, {"accuracy", number(s.accuracy)},
          {"seconds", number(s.seconds)}, {"images_per_s", number(s.images_per_s)}, {"adv_loss", number(s.adv_loss)},
          {"adv_accuracy", number(s.adv_accuracy)}, {"lr", number(s.lr)}, {"eps", number(s.eps)},
          {"attack_image_steps", s.attack_image_steps}, {"check_clean", number(s.check_clean)},
          {"check_robust", number(s.check_robust)}};
}

EpochStats stats_from(const nlohmann::json& j) {
  EpochStats s;
  s.epoch = j.at("epoch").get<int>();
  s.loss = number_from(j.at("loss"));
  s.accuracy = number_from(j.at("accuracy"));
  s.seconds = number_from(j.at("seconds"));
  s.images_per_s = number_from(j.at("images_per_s"));
  s.adv_loss = number_from(j.at("adv_loss"));
  s.adv_accuracy = number_from(j.at("adv_accuracy"));
  s.lr = number_from(j.at("lr"));
  s.eps = number_from(j.at("eps"));
  s.attack_image_steps = j.at("attack_image_steps").get<long>();
  s.check_clean = number_from(j.at("check_clean"));
  s.check_robust = number_from(j.at("check_robust"));
  return s;
}

bool starts_with(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

// Adam's moments in the backend's flat layout, from the "adam.m.<name>" (or .v.) tensors of every parameter.
std::vector<float> moments(std::map<std::string, Tensor>& tensors, const char* prefix, const Architecture& arch,
                           bool non_negative, const std::string& what) {
  std::vector<float> flat;
  for (const ParamSpec& spec : arch.params()) {
    auto it = tensors.find(prefix + spec.name);
    if (it == tensors.end()) throw InputError(what + ": tensor " + prefix + spec.name + " is missing");
    if (it->second.shape != spec.shape)
      throw InputError(what + ": tensor " + prefix + spec.name + " has shape " + shape_to_string(it->second.shape) +
                       ", the architecture needs " + shape_to_string(spec.shape));
    for (float v : it->second.data)
      if (!std::isfinite(v) || (non_negative && v < 0))
        throw InputError(what + ": tensor " + prefix + spec.name + " holds " + exact(v) + ", which Adam never makes");
    flat.insert(flat.end(), it->second.data.begin(), it->second.data.end());
    tensors.erase(it);
  }
  return flat;
}

// The tensors named `prefix`<parameter> (with an empty prefix: all that are left) as a model file of `arch`, taken out
// of `tensors`; Model::from_safetensors checks names, shapes and values.
Model model_from(std::map<std::string, Tensor>& tensors, const std::string& prefix, const std::string& arch,
                 const std::string& what) {
  SafetensorsFile f;
  f.metadata["nudge.architecture"] = arch;
  for (auto it = tensors.begin(); it != tensors.end();) {
    if (!starts_with(it->first, prefix.c_str())) {
      ++it;
      continue;
    }
    f.tensors.emplace_back(it->first.substr(prefix.size()), std::move(it->second));
    it = tensors.erase(it);
  }
  Model m = Model::from_safetensors(std::move(f), what);
  m.metadata.clear();
  return m;
}

}  // namespace

std::string checkpoint_path_for(const std::string& model_path) { return model_path + ".checkpoint"; }

TrainSpec train_spec(const std::string& arch, const TrainOptions& opt, const Dataset& train) {
  TrainSpec s = {{"--arch", arch},
                 {"--epochs", std::to_string(opt.epochs)},
                 {"--batch", std::to_string(opt.batch)},
                 {"--lr", exact(opt.adam.lr)},
                 {"--lr-schedule", to_string(opt.lr_schedule)},
                 {"--limit", std::to_string(opt.limit)},
                 {"--seed", std::to_string(opt.seed)},
                 // Not options, but constants a newer nudge might change.
                 {"Adam's constants", "beta1 " + exact(opt.adam.beta1) + " beta2 " + exact(opt.adam.beta2) + " eps " +
                                          exact(opt.adam.eps)},
                 {"--adversarial", to_string(opt.adv.method)}};
  const AdversarialConfig& a = opt.adv;
  if (a.method != AdvMethod::None) {
    s.insert(s.end(), {{"--eps", exact(a.eps)},
                       {"--eps-ramp", exact(a.eps_ramp_epochs)},
                       {"--adv-steps", std::to_string(a.steps)},
                       {"--adv-lr", exact(a.step_size)}});
    if (a.method == AdvMethod::Trades) s.emplace_back("--beta", exact(a.beta));
    if (a.method != AdvMethod::Trades) s.emplace_back("--mix-clean", a.mix_clean ? "on" : "off");
    s.insert(s.end(), {{"--check-count", std::to_string(a.check_count)},
                       {"--check-steps", std::to_string(a.check_steps)},
                       {"--check-attack", a.check_apgd ? "apgd-ce" : "pgd"},
                       {"--check-restarts", std::to_string(a.check_restarts)},
                       {"--guard", a.guard ? "on" : "off"},
                       {"--collapse-drop", exact(a.collapse_drop)},
                       {"--overfit-gap", exact(a.overfit_gap)}});
  }
  char hash[17];
  std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(data_hash(train)));
  s.emplace_back("training data", std::to_string(train.count) + " images of " + std::to_string(train.rows) + "x" +
                                      std::to_string(train.cols) + ", FNV-1a " + hash);
  return s;
}

std::string spec_difference(const TrainSpec& then, const TrainSpec& now) {
  const std::map<std::string, std::string> old(then.begin(), then.end());
  std::vector<std::string> lines;
  auto differs = [&](const std::string& key, const std::string* was, const std::string* is) {
    if (was && is) return "the checkpoint was made with " + key + " " + *was + ", this command says " + *is;
    if (was) return "the checkpoint was made with " + key + " " + *was + ", this command has no " + key;
    return "the checkpoint was made without " + key + ", this command says " + *is;
  };
  std::vector<std::string> names;  // of every difference, for the count after the first
  std::map<std::string, bool> seen;
  for (const auto& [key, value] : now) {
    seen[key] = true;
    auto it = old.find(key);
    if (it == old.end()) {
      lines.push_back(differs(key, nullptr, &value));
      names.push_back(key);
    } else if (it->second != value) {
      lines.push_back(differs(key, &it->second, &value));
      names.push_back(key);
    }
  }
  for (const auto& [key, value] : then)
    if (!seen.count(key)) {
      lines.push_back(differs(key, &value, nullptr));
      names.push_back(key);
    }
  if (lines.empty()) return "";
  std::string text = lines[0];
  if (names.size() > 1) {
    text += " (and " + std::to_string(names.size() - 1) + " more: ";
    for (size_t i = 1; i < names.size(); ++i) text += (i > 1 ? ", " : "") + names[i];
    text += ")";
  }
  return text;
}

std::string serialize_checkpoint(const TrainCheckpoint& c) {
  const TrainProgress& p = c.progress;
  const Architecture& arch = p.model.arch;
  const std::vector<ParamSpec> specs = arch.params();
  assert_params_match_architecture(p.model, "serialize_checkpoint");
  const size_t total = arch.param_count();
  if (p.optimizer.adam_m.size() != total || p.optimizer.adam_v.size() != total)
    throw InternalError("serialize_checkpoint: Adam's moments do not fit the model");

  nlohmann::json j;
  j["version"] = kCheckpointVersion;
  for (const auto& [key, value] : c.spec) j["spec"].push_back({key, value});
  j["device"] = c.device;
  j["epoch"] = p.epoch;
  j["adam_step"] = p.optimizer.step;
  j["resumed_after"] = c.resumed_after;
  const TrainSummary& s = p.summary;
  j["summary"] = {{"trained_images", s.trained_images}, {"check_images", s.check_images},
                  {"kept_epoch", s.kept_epoch}, {"collapsed", s.collapsed}, {"guard_message", s.guard_message},
                  {"epochs", nlohmann::json::array()}};
  for (const EpochStats& e : s.epochs) j["summary"]["epochs"].push_back(stats_json(e));

  SafetensorsFile f;
  f.metadata["nudge.architecture"] = arch.to_string();
  f.metadata[kCheckpointKey] = json_text(j);
  size_t offset = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const size_t n = p.model.params[i].size();
    Tensor m(specs[i].shape), v(specs[i].shape);
    std::copy_n(p.optimizer.adam_m.begin() + offset, n, m.data.begin());
    std::copy_n(p.optimizer.adam_v.begin() + offset, n, v.data.begin());
    offset += n;
    f.tensors.emplace_back(specs[i].name, p.model.params[i]);
    f.tensors.emplace_back(kAdamM + specs[i].name, std::move(m));
    f.tensors.emplace_back(kAdamV + specs[i].name, std::move(v));
    if (!p.best.params.empty()) f.tensors.emplace_back(kBest + specs[i].name, p.best.params[i]);
  }
  return serialize_safetensors(f);
}

TrainCheckpoint parse_checkpoint(const std::string& bytes, const std::string& what) {
  SafetensorsFile f = parse_safetensors(bytes, what);
  auto meta = f.metadata.find(kCheckpointKey);
  auto arch_text = f.metadata.find("nudge.architecture");
  if (meta == f.metadata.end() || arch_text == f.metadata.end())
    throw InputError(what + " is not a nudge train checkpoint (no " + kCheckpointKey + " metadata)");
  TrainCheckpoint c;
  TrainProgress& p = c.progress;
  try {
    const nlohmann::json j = nlohmann::json::parse(meta->second);
    const int version = j.at("version").get<int>();
    if (version != kCheckpointVersion)
      throw InputError(what + " has checkpoint format " + std::to_string(version) + "; this nudge reads format " +
                       std::to_string(kCheckpointVersion) + " (run without --resume to start afresh)");
    for (const auto& kv : j.at("spec")) c.spec.emplace_back(kv.at(0).get<std::string>(), kv.at(1).get<std::string>());
    c.device = j.at("device").get<std::string>();
    p.epoch = j.at("epoch").get<int>();
    p.optimizer.step = j.at("adam_step").get<long>();
    c.resumed_after = j.at("resumed_after").get<std::vector<int>>();
    const nlohmann::json& s = j.at("summary");
    p.summary.trained_images = s.at("trained_images").get<int>();
    p.summary.check_images = s.at("check_images").get<int>();
    p.summary.kept_epoch = s.at("kept_epoch").get<int>();
    p.summary.collapsed = s.at("collapsed").get<bool>();
    p.summary.guard_message = s.at("guard_message").get<std::string>();
    for (const auto& e : s.at("epochs")) p.summary.epochs.push_back(stats_from(e));
  } catch (const nlohmann::json::exception& e) {
    throw InputError(what + ": its " + kCheckpointKey + " metadata is malformed (" + e.what() + ")");
  }
  if (p.epoch < 1 || p.optimizer.step < 0 || static_cast<size_t>(p.epoch) != p.summary.epochs.size())
    throw InputError(what + ": epoch " + std::to_string(p.epoch) + " does not fit its " +
                     std::to_string(p.summary.epochs.size()) + " epochs of stats");
  std::map<std::string, Tensor> tensors;
  for (auto& [name, t] : f.tensors) tensors[name] = std::move(t);
  Architecture arch;
  try {
    arch = Architecture::parse(arch_text->second);
  } catch (const InputError& e) {
    throw InputError(what + ": " + e.what());
  }
  p.optimizer.adam_m = moments(tensors, kAdamM, arch, false, what);
  p.optimizer.adam_v = moments(tensors, kAdamV, arch, true, what);
  bool has_best = false;
  for (const auto& nt : tensors) has_best |= starts_with(nt.first, kBest);
  if (has_best) p.best = model_from(tensors, kBest, arch_text->second, what);
  p.model = model_from(tensors, "", arch_text->second, what);  // what is left: the weights, and nothing else
  return c;
}

TrainCheckpoint read_checkpoint(const std::string& path) {
  return parse_checkpoint(read_file(path, kMaxCheckpointBytes), path);
}

}  // namespace nudge
