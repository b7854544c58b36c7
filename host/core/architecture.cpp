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
  int convs = 0, denses = 0;
  std::istringstream ss(text.substr(colon + 1));
  std::string tok;
  while (std::getline(ss, tok, ',')) {
    if (a.layers.size() == kMaxLayers) bad(text, "more than " + std::to_string(kMaxLayers) + " layers");
    LayerSpec l{};
    l.in = cur;
    if (tok == "relu") {
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
      bad(text, "unknown layer '" + tok + "' (known: convFkK[sS][pP], relu, poolK[sS][pP], avgpoolK[sS], flatten, denseN)");
    }
    cur = l.out;
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
    }
  }
  return s.str();
}

std::vector<ParamSpec> Architecture::params() const {
  std::vector<ParamSpec> p;
  for (size_t i = 0; i < layers.size(); ++i) {
    const LayerSpec& l = layers[i];
    if (l.kind == LayerKind::Conv) {
      p.push_back({l.name + ".weight", {l.out_channels, l.in.c, l.kernel, l.kernel}, static_cast<int>(i), false});
      p.push_back({l.name + ".bias", {l.out_channels}, static_cast<int>(i), true});
    } else if (l.kind == LayerKind::Dense) {
      p.push_back({l.name + ".weight", {l.out_channels, l.in.size()}, static_cast<int>(i), false});
      p.push_back({l.name + ".bias", {l.out_channels}, static_cast<int>(i), true});
    }
  }
  return p;
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
