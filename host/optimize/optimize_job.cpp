#include "optimize_job.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>
#include <utility>

#include "errors.h"

namespace nudge {

namespace {

bool labels_known(InitKind k) { return k == InitKind::Test || k == InitKind::Train; }

long parse_long(const std::string& s, const std::string& flag) {
  char* end = nullptr;
  errno = 0;
  const long v = s.empty() ? 0 : std::strtol(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || errno == ERANGE || v < 0 || v > 2147483647L)
    throw InputError(flag + ": '" + s + "' is not a non-negative integer");
  return v;
}

}  // namespace

std::vector<float> parse_float_list(const std::string& text, const std::string& flag) {
  std::vector<float> out;
  std::stringstream ss(text);
  std::string part;
  while (std::getline(ss, part, ',')) {
    char* end = nullptr;
    const double v = part.empty() ? NAN : std::strtod(part.c_str(), &end);
    if (part.empty() || *end != '\0' || !std::isfinite(v) || !std::isfinite(static_cast<float>(v)))
      throw InputError(flag + ": '" + part + "' is not a number");
    out.push_back(static_cast<float>(v));
  }
  if (out.empty()) throw InputError(flag + ": expected a comma-separated list of numbers");
  return out;
}

std::vector<int> parse_index_list(const std::string& text, const std::string& flag) {
  std::vector<int> out;
  std::stringstream ss(text);
  std::string part;
  while (std::getline(ss, part, ',')) out.push_back(static_cast<int>(parse_long(part, flag)));
  if (out.empty()) throw InputError(flag + ": expected a comma-separated list of indices");
  return out;
}

IndexRange parse_range(const std::string& text, const std::string& flag) {
  const auto colon = text.find(':');
  if (colon == std::string::npos) throw InputError(flag + ": '" + text + "' should be START:END, e.g. 0:1000");
  const long a = parse_long(text.substr(0, colon), flag), b = parse_long(text.substr(colon + 1), flag);
  if (b <= a) throw InputError(flag + ": '" + text + "' is empty (END must be greater than START)");
  return {a, b};
}

float parse_finite(const std::string& text, const std::string& flag) {
  char* end = nullptr;
  errno = 0;
  const double v = text.empty() ? NAN : std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !std::isfinite(v) || !std::isfinite(static_cast<float>(v)))
    throw InputError(flag + ": '" + text + "' is not a finite number");
  return static_cast<float>(v);
}

TargetSpec::TargetSpec(const std::string& t) : text(t) {
  if (t.empty()) return;
  if (t == "all") kind = Kind::All;
  else if (t == "other") kind = Kind::Other;
  else if (t == "next") kind = Kind::Next;
  else if (t == "untargeted") kind = Kind::Untargeted;
  else {
    char* end = nullptr;
    errno = 0;
    const long c = std::strtol(t.c_str(), &end, 10);
    kind = *end == '\0' && errno == 0 ? Kind::Class : Kind::Invalid;
    cls = kind == Kind::Class ? c : -1;
  }
}

void validate_job(const OptimizeJob& job, int classes) {
  const bool soft = !job.target_dist.empty();
  if (soft && !job.target.empty()) throw InputError("give either --target or --target-dist, not both");
  if (!soft && job.target.empty()) throw InputError("no target: give --target CLASS|all|other|next|untargeted or --target-dist");
  if (soft) {
    if (static_cast<int>(job.target_dist.size()) != classes)
      throw InputError("target distribution has " + std::to_string(job.target_dist.size()) + " entries; the model has " +
                       std::to_string(classes) + " classes");
    double sum = 0;
    for (size_t i = 0; i < job.target_dist.size(); ++i) {
      if (job.target_dist[i] < 0)
        throw InputError("target distribution entry " + std::to_string(i) + " is negative (" +
                         std::to_string(job.target_dist[i]) + ")");
      sum += job.target_dist[i];
    }
    if (std::fabs(sum - 1.0) > 1e-6)
      throw InputError("target distribution sums to " + std::to_string(sum) + "; it must sum to 1 (within 1e-6)");
    if (job.step.loss == LossKind::CarliniWagner)
      throw InputError("--loss cw needs a one-hot or untargeted target, not a distribution");
  } else {
    const TargetSpec& t = job.target;
    if (t.kind == TargetSpec::Kind::Invalid)
      throw InputError("--target '" + t.text + "': expected a class number, all, other, next or untargeted");
    if (t.needs_labels() && !labels_known(job.init))
      throw InputError("--target " + t.text + " needs true labels: start from dataset images (--init test or train)");
    if (t.kind == TargetSpec::Kind::Class && (t.cls < 0 || t.cls >= classes))
      throw InputError("--target " + t.text + ": the model has " + std::to_string(classes) + " classes (0-" +
                       std::to_string(classes - 1) + ")");
  }
  for (float e : job.eps)
    if (!(e >= 0)) throw InputError("--eps must be >= 0 (got " + std::to_string(e) + ")");
  if (!job.eps.empty() && job.step.norm == Norm::None) throw InputError("--eps needs --norm linf or l2");
  if (job.random_start && job.eps.empty()) throw InputError("--random-start needs --eps");
  if (job.steps < 0) throw InputError("--steps must be >= 0");
  if (job.restarts < 1 || job.restarts > kMaxRestarts)
    throw InputError("--restarts " + std::to_string(job.restarts) + ": must be 1 to " + std::to_string(kMaxRestarts));
  if (job.eps.size() > kMaxEpsValues)
    throw InputError("--eps lists " + std::to_string(job.eps.size()) + " values; the limit is " + std::to_string(kMaxEpsValues));
  if (!(job.step.lr > 0) || !std::isfinite(job.step.lr)) throw InputError("--lr must be a finite number > 0 (got " + std::to_string(job.step.lr) + ")");
  if (!(job.step.cw_kappa >= 0) || !std::isfinite(job.step.cw_kappa))
    throw InputError("--kappa must be a finite number >= 0 (got " + std::to_string(job.step.cw_kappa) + ")");
  if (!std::isfinite(job.step.stop_prob) || job.step.stop_prob > 1) throw InputError("--stop-at must be a probability <= 1");
  if (!(job.step.stop_kl >= 0) || !std::isfinite(job.step.stop_kl)) throw InputError("--stop-kl must be a finite number >= 0");
  if (job.chunk < 0) throw InputError("--chunk must be >= 1");
  const RegularizerConfig& r = job.reg;
  const std::pair<const char*, float> weights[] = {{"--tv", r.tv},           {"--l2", r.l2},
                                                   {"--l1", r.l1},           {"--blur-sigma", r.blur_sigma},
                                                   {"--blur-decay", r.blur_decay}, {"--prior-decay", r.prior_decay}};
  for (const auto& [flag, w] : weights)
    if (!std::isfinite(w)) throw InputError(std::string(flag) + " must be a finite number (got " + std::to_string(w) + ")");
  if (r.tv < 0 || r.l2 < 0 || r.l1 < 0) throw InputError("--tv, --l2 and --l1 weights must be >= 0");
  if (!(r.l2_center >= 0 && r.l2_center <= 1)) throw InputError("--l2-center must be in [0, 1] (got " + std::to_string(r.l2_center) + ")");
  if (!(r.prior_decay > 0 && r.prior_decay <= 1)) throw InputError("--prior-decay must be in (0, 1]");
  if (r.jitter < 0 || r.jitter > 8) throw InputError("--jitter must be between 0 and 8 pixels");
  if (r.settle_steps < 0) throw InputError("--settle must be >= 0");
  if (r.blur_every < 0) throw InputError("--blur-every must be >= 0");
  if (r.blur_every > 0 && !(r.blur_sigma > 0 && r.blur_sigma <= 5)) throw InputError("--blur-sigma must be in (0, 5]");
  if (!(r.blur_decay > 0 && r.blur_decay <= 1)) throw InputError("--blur-decay must be in (0, 1]");
  if (r.sigmoid && !job.eps.empty()) throw InputError("--sigmoid cannot be combined with an --eps ball");
  if (!std::isfinite(r.pca_prior) || !std::isfinite(r.pca_anchor) || r.pca_prior < 0 || r.pca_anchor < 0)
    throw InputError("--pca-prior and --pca-anchor must be finite numbers >= 0");
  if (!r.pca && (r.pca_prior > 0 || r.pca_anchor > 0)) throw InputError("--pca-prior and --pca-anchor need --pca FILE");
  if (r.pca && !job.eps.empty()) throw InputError("--pca cannot be combined with an --eps ball");
  if (r.pca && r.sigmoid) throw InputError("--pca and --sigmoid are two parametrisations; give one");
  if (job.pca_start_components < 0)
    throw InputError("--start-components must be >= 0 (got " + std::to_string(job.pca_start_components) + ")");
  if (job.init != InitKind::Images && job.indices.empty() && job.range.empty() && job.count < 1)
    throw InputError("--count must be >= 1 (got " + std::to_string(job.count) + ")");
}

std::vector<RowTarget> targets_for(const OptimizeJob& job, long source, int label, int classes) {
  if (!job.target_dist.empty()) return {{TargetKind::Soft, -1}};
  switch (job.target.kind) {
    case TargetSpec::Kind::All: return {{TargetKind::OneHot, static_cast<int>(source % classes)}};
    case TargetSpec::Kind::Next: return {{TargetKind::OneHot, (label + 1) % classes}};
    case TargetSpec::Kind::Untargeted: return {{TargetKind::Untargeted, label}};
    case TargetSpec::Kind::Other: {
      std::vector<RowTarget> out;
      for (int c = 0; c < classes; ++c)
        if (c != label) out.push_back({TargetKind::OneHot, c});
      return out;
    }
    case TargetSpec::Kind::Class: return {{TargetKind::OneHot, static_cast<int>(job.target.cls)}};
    case TargetSpec::Kind::None:
    case TargetSpec::Kind::Invalid: break;
  }
  throw InternalError("targets_for: a job without a valid target (validate_job refuses it)");
}

std::string target_name(const RowTarget& t) {
  switch (t.kind) {
    case TargetKind::OneHot: return std::to_string(t.cls);
    case TargetKind::Untargeted: return "untargeted";
    case TargetKind::Soft: return "dist";
  }
  return "?";
}

}  // namespace nudge
