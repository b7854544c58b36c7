#include "architecture.h"

#include <cctype>
#include <sstream>

#include "errors.h"
#include "tensor.h"

namespace nudge {

namespace {

[[noreturn]] void bad(const std::string& text, const std::string& why) {
  throw InputError("bad architecture '" + text + "': " + why);
}

// Parses a positive decimal integer that fills `s` entirely; -1 otherwise.
int parse_positive(const std::string& s) {
  if (s.empty() || s.size() > 6) return -1;
  for (char c : s)
    if (!std::isdigit(static_cast<unsigned char>(c))) return -1;
  int v = std::stoi(s);
  return v > 0 ? v : -1;
}

// The digits after a layer's name: a leading number (kernel), then optional letters from `allowed`, each followed by
// a number, in that order: "3s2p1" -> first 3, s 2, p 1. A 0 is accepted for p only ("p0" is the default spelled out).
struct Suffixes {
  bool ok = false;
  int first = -1, s = 0, p = 0;
};

Suffixes parse_suffixes(const std::string& t, const std::string& allowed) {
  Suffixes r;
  size_t i = 0;
  auto number = [&](bool zero_ok) {
    size_t j = i;
    while (j < t.size() && std::isdigit(static_cast<unsigned char>(t[j]))) ++j;
    const std::string digits = t.substr(i, j - i);
    i = j;
    if (zero_ok && digits == "0") return 0;
    return parse_positive(digits);
  };
  r.first = number(false);
  if (r.first < 0) return r;
  size_t next_letter = 0;  // letters must come in the order of `allowed`, each at most once
  while (i < t.size()) {
    const size_t at = allowed.find(t[i], next_letter);
    if (at == std::string::npos) return r;
    next_letter = at + 1;
    const char letter = t[i++];
    const int v = number(letter == 'p');
    if (v < 0) return r;
    (letter == 's' ? r.s : r.p) = v;
  }
  r.ok = true;
  return r;
}

// "0.25" -> 250000: a decimal in [0,1) as "0." and 1 to 6 digits, in millionths; -1 for any other spelling (so that
// every accepted P prints back as it was read, less trailing zeros).
int parse_probability_ppm(const std::string& s) {
  if (s.size() < 3 || s.size() > 8 || s.compare(0, 2, "0.") != 0) return -1;
  int ppm = 0;
  for (size_t i = 2; i < 8; ++i) {
    if (i < s.size() && !std::isdigit(static_cast<unsigned char>(s[i]))) return -1;
    ppm = ppm * 10 + (i < s.size() ? s[i] - '0' : 0);
  }
  return ppm;
}

// Refuses a layer whose output or weights exceed the caps in architecture.h, before anything is sized from it.
void check_layer_size(const std::string& text, const std::string& tok, const Shape3& out, int64_t weights) {
  if (out.size() > kMaxLayerElements)
    bad(text, "'" + tok + "' makes " + std::to_string(out.c) + "x" + std::to_string(out.h) + "x" + std::to_string(out.w) +
                  " = " + std::to_string(out.size()) + " values per image; the limit is " + std::to_string(kMaxLayerElements));
  if (weights > kMaxParamElements)
    bad(text, "'" + tok + "' has " + std::to_string(weights) + " weights; the limit is " + std::to_string(kMaxParamElements));
}

}  // namespace

const char* Architecture::reference_string() {
  return "1x28x28:conv24k3,relu,pool2,conv36k3,relu,pool2,conv64k3,relu,flatten,dense64,relu,dense10";
}

Architecture Architecture::parse(const std::string& text) {
  Architecture a;
  auto colon = text.find(':');
  if (colon == std::string::npos) bad(text, "expected 'CxHxW:layer,layer,...'");
  {
    std::string dims = text.substr(0, colon);
    int v[3];
    std::istringstream ss(dims);
    std::string part;
    int i = 0;
    while (std::getline(ss, part, 'x')) {
      if (i == 3 || (v[i] = parse_positive(part)) < 0) bad(text, "input shape '" + dims + "' is not CxHxW");
      ++i;
    }
    if (i != 3) bad(text, "input shape '" + dims + "' is not CxHxW");
    a.input = {v[0], v[1], v[2]};
    check_layer_size(text, dims, a.input, 0);
  }
  Shape3 cur = a.input;
  bool flat = false;
  int convs = 0, denses = 0, bns = 0;
  std::string prev_tok;
  std::istringstream ss(text.substr(colon + 1));
  std::string tok;
  while (std::getline(ss, tok, ',')) {
    if (a.layers.size() == kMaxLayers) bad(text, "more than " + std::to_string(kMaxLayers) + " layers");
    LayerSpec l{};
    l.in = cur;
    if (tok == "bn") {
      // Only where inference can fold it into the layer before (model_fold.h), which is also where PyTorch models put it.
      const bool after_param_layer = !a.layers.empty() && (a.layers.back().kind == LayerKind::Conv ||
                                                             a.layers.back().kind == LayerKind::Dense);
      if (!after_param_layer)
        bad(text, "'bn' must come right after a conv or dense layer (it is folded into that layer for inference)" +
                      (prev_tok.empty() ? std::string("; here it is the first layer") : "; here it follows '" + prev_tok + "'"));
      l.kind = LayerKind::BatchNorm;
      l.out = cur;
      l.name = "bn" + std::to_string(++bns);
    } else if (tok.rfind("dropout", 0) == 0) {
      l.kind = LayerKind::Dropout;
      l.out = cur;
      l.drop_ppm = parse_probability_ppm(tok.substr(7));
      if (l.drop_ppm <= 0 || l.drop_ppm >= 1000000)
        bad(text, "'" + tok + "' should be dropoutP with P the drop probability, a decimal in (0,1) with at most 6 "
                  "digits after the point, e.g. dropout0.25");
    } else if (tok == "relu") {
      l.kind = LayerKind::Relu;
      l.out = cur;
    } else if (tok == "flatten") {
      if (flat) bad(text, "flatten twice");
      l.kind = LayerKind::Flatten;
      l.out = {static_cast<int>(cur.size()), 1, 1};  // within int: every shape so far passed check_layer_size
      flat = true;
    } else if (tok.rfind("pool", 0) == 0 || tok.rfind("avgpool", 0) == 0) {
      if (flat) bad(text, "'" + tok + "' after flatten");
      const bool avg = tok[0] == 'a';
      l.kind = avg ? LayerKind::AvgPool : LayerKind::MaxPool;
      const char* form = avg ? "avgpoolK[sS], e.g. avgpool2 or avgpool3s2" : "poolK[sS][pP], e.g. pool2 or pool3s2p1";
      const Suffixes f = parse_suffixes(tok.substr(avg ? 7 : 4), avg ? "s" : "sp");
      if (!f.ok) bad(text, "'" + tok + "' should be " + form);
      l.kernel = f.first;
      l.stride = f.s > 0 ? f.s : l.kernel;
      l.pad = f.p;
      if (2 * l.pad > l.kernel) bad(text, "'" + tok + "' pads more than half its window (a window could hold only padding)");
      if (cur.h + 2 * l.pad < l.kernel || cur.w + 2 * l.pad < l.kernel)
        bad(text, "'" + tok + "' on a " + std::to_string(cur.h) + "x" + std::to_string(cur.w) + " map leaves nothing");
      l.out = {cur.c, l.window().out(cur.h), l.window().out(cur.w)};
    } else if (tok.rfind("conv", 0) == 0) {
      if (flat) bad(text, "'" + tok + "' after flatten");
      auto k = tok.find('k');
      if (k == std::string::npos) bad(text, "'" + tok + "' should be convFkK[sS][pP], e.g. conv24k3 or conv16k4s2p1");
      l.kind = LayerKind::Conv;
      l.out_channels = parse_positive(tok.substr(4, k - 4));
      const Suffixes f = parse_suffixes(tok.substr(k + 1), "sp");
      if (l.out_channels < 0 || !f.ok) bad(text, "'" + tok + "' should be convFkK[sS][pP], e.g. conv24k3 or conv16k4s2p1");
      l.kernel = f.first;
      l.stride = f.s > 0 ? f.s : 1;
      l.pad = f.p;
      if (l.kernel > cur.h + 2 * l.pad || l.kernel > cur.w + 2 * l.pad)
        bad(text, "'" + tok + "' kernel is larger than its " + std::to_string(cur.h) + "x" + std::to_string(cur.w) + " input" +
                      (l.pad ? " with its padding" : ""));
      l.out = {l.out_channels, l.window().out(cur.h), l.window().out(cur.w)};
      check_layer_size(text, tok, l.out, int64_t{l.out_channels} * cur.c * l.kernel * l.kernel);
      l.name = "conv" + std::to_string(++convs);
    } else if (tok.rfind("dense", 0) == 0) {
      if (!flat) bad(text, "'" + tok + "' needs a flatten before it");
      l.kind = LayerKind::Dense;
      l.out_channels = parse_positive(tok.substr(5));
      if (l.out_channels < 0) bad(text, "'" + tok + "' should be denseN, e.g. dense64");
      l.out = {l.out_channels, 1, 1};
      check_layer_size(text, tok, l.out, int64_t{l.out_channels} * cur.size());
      l.name = "dense" + std::to_string(++denses);
    } else {
      bad(text, "unknown layer '" + tok + "' (known: convFkK[sS][pP], relu, poolK[sS][pP], avgpoolK[sS], flatten, denseN, "
                "bn, dropoutP)");
    }
    cur = l.out;
    prev_tok = tok;
    a.layers.push_back(l);
  }
  if (a.layers.empty() || a.layers.back().kind != LayerKind::Dense)
    bad(text, "the last layer must be dense (its outputs are the logits)");
  if (a.num_classes() < 2) bad(text, "the last dense layer needs at least 2 outputs");
  return a;
}

std::string Architecture::to_string() const {
  std::ostringstream s;
  s << input.c << 'x' << input.h << 'x' << input.w << ':';
  for (size_t i = 0; i < layers.size(); ++i) {
    const LayerSpec& l = layers[i];
    if (i) s << ',';
    switch (l.kind) {
      case LayerKind::Conv:
        s << "conv" << l.out_channels << 'k' << l.kernel;
        if (l.stride != 1) s << 's' << l.stride;
        if (l.pad) s << 'p' << l.pad;
        break;
      case LayerKind::Relu: s << "relu"; break;
      case LayerKind::MaxPool:
      case LayerKind::AvgPool:
        s << (l.kind == LayerKind::AvgPool ? "avgpool" : "pool") << l.kernel;
        if (l.stride != l.kernel) s << 's' << l.stride;
        if (l.pad) s << 'p' << l.pad;
        break;
      case LayerKind::Flatten: s << "flatten"; break;
      case LayerKind::Dense: s << "dense" << l.out_channels; break;
      case LayerKind::BatchNorm: s << "bn"; break;
      case LayerKind::Dropout: {
        std::string digits = std::to_string(1000000 + l.drop_ppm).substr(1);  // six digits, leading zeros kept
        while (digits.back() == '0') digits.pop_back();  // drop_ppm > 0, so a digit stays
        s << "dropout0." << digits;
        break;
      }
    }
  }
  return s.str();
}

std::vector<ParamSpec> Architecture::params() const {
  std::vector<ParamSpec> p;
  for (size_t i = 0; i < layers.size(); ++i) {
    const LayerSpec& l = layers[i];
    const int layer = static_cast<int>(i);
    if (l.kind == LayerKind::Conv) {
      p.push_back({l.name + ".weight", {l.out_channels, l.in.c, l.kernel, l.kernel}, layer, false, false, ParamInit::Glorot});
      p.push_back({l.name + ".bias", {l.out_channels}, layer, true, false, ParamInit::Zero});
    } else if (l.kind == LayerKind::Dense) {
      p.push_back({l.name + ".weight", {l.out_channels, l.in.size()}, layer, false, false, ParamInit::Glorot});
      p.push_back({l.name + ".bias", {l.out_channels}, layer, true, false, ParamInit::Zero});
    } else if (l.kind == LayerKind::BatchNorm) {
      // PyTorch's names and order (state_dict of BatchNorm2d, less num_batches_tracked, which only matters for
      // momentum=None): the identity transform to start with.
      const int64_t C = l.in.c;
      p.push_back({l.name + ".weight", {C}, layer, false, false, ParamInit::One});
      p.push_back({l.name + ".bias", {C}, layer, true, false, ParamInit::Zero});
      p.push_back({l.name + ".running_mean", {C}, layer, false, true, ParamInit::Zero});
      p.push_back({l.name + ".running_var", {C}, layer, false, true, ParamInit::One});
    }
  }
  return p;
}

bool Architecture::has_training_layers() const {
  for (const LayerSpec& l : layers)
    if (l.kind == LayerKind::BatchNorm || l.kind == LayerKind::Dropout) return true;
  return false;
}

bool Architecture::has_batch_norm() const {
  for (const LayerSpec& l : layers)
    if (l.kind == LayerKind::BatchNorm) return true;
  return false;
}

size_t Architecture::param_count() const {
  size_t n = 0;
  for (const ParamSpec& p : params()) n += Tensor::element_count(p.shape);
  return n;
}

std::string shape_to_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace nudge
