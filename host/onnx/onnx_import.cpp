// ONNX graph -> nudge architecture string + tensors (BatchNormalization and Dropout become nudge's bn and dropoutP,
// which inference folds), then Model::from_safetensors for every check a safetensors model
// gets (names, shapes, finite weights of sane magnitude). The graph is walked as a chain from its input: each value
// must feed exactly one node (shape computations, which read only a value's static shape, aside), so branches and
// skip connections are refused by name, and a node is never visited twice, so a cycle cannot loop.
#include <cmath>
#include <map>
#include <set>

#include "architecture.h"
#include "atomic_file.h"
#include "errors.h"
#include "onnx_model.h"
#include "onnx_tensors.h"
#include "safetensors.h"

namespace nudge {

bool onnx_supported() { return true; }

namespace {

using onnx_io::ints_to_string;

// A graph larger than this is not an MNIST-scale CNN; refusing it bounds the walk.
constexpr int kMaxNodes = 4096;

// The symbolic batch dimension in shape computations.
constexpr int64_t kBatch = -2;

std::string node_label(const onnx::NodeProto& n, int index) {
  const std::string name = n.name().empty() ? "#" + std::to_string(index) : "'" + n.name() + "'";
  return "node " + name + " (" + n.op_type() + ")";
}

// The nudge layers built so far and the tensors they own, with the running shape.
struct ChainBuilder {
  std::string what;
  Shape3 cur;
  bool flat = false;
  std::vector<std::string> tokens;
  std::vector<std::pair<std::string, Tensor>> tensors;
  int convs = 0, denses = 0, bns = 0;
  // The value the last conv or dense layer wrote, while nothing has come after it: an Add reading exactly that value
  // can be folded into the layer's bias, and a BatchNormalization reading it becomes the layer's bn.
  std::string param_output;
  bool dropped_softmax = false;

  Tensor& last_bias() { return tensors.back().second; }

  void add_conv(const Tensor& w, const Tensor& b, Window win) {
    const int K = static_cast<int>(w.shape[0]);
    tokens.push_back("conv" + std::to_string(K) + "k" + std::to_string(win.k) +
                     (win.stride != 1 ? "s" + std::to_string(win.stride) : "") +
                     (win.pad ? "p" + std::to_string(win.pad) : ""));
    const std::string name = "conv" + std::to_string(++convs);
    tensors.push_back({name + ".weight", w});
    tensors.push_back({name + ".bias", b});
    cur = {K, win.out(cur.h), win.out(cur.w)};
  }
  void add_dense(const Tensor& w, const Tensor& b) {
    if (!flat) {
      tokens.push_back("flatten");
      flat = true;
    }
    tokens.push_back("dense" + std::to_string(w.shape[0]));
    const std::string name = "dense" + std::to_string(++denses);
    tensors.push_back({name + ".weight", w});
    tensors.push_back({name + ".bias", b});
    cur = {static_cast<int>(w.shape[0]), 1, 1};
  }
  // scale, B, mean, var: PyTorch's weight, bias, running_mean, running_var.
  void add_batch_norm(const std::vector<Tensor>& p) {
    tokens.push_back("bn");
    const std::string name = "bn" + std::to_string(++bns);
    const char* suffixes[4] = {".weight", ".bias", ".running_mean", ".running_var"};
    for (int k = 0; k < 4; ++k) tensors.push_back({name + suffixes[k], p[k]});
  }
  void add_dropout(int ppm) {
    std::string digits = std::to_string(1000000 + ppm).substr(1);
    while (digits.back() == '0') digits.pop_back();
    tokens.push_back("dropout0." + digits);
  }
  void add_pool(bool avg, Window win) {
    tokens.push_back(std::string(avg ? "avgpool" : "pool") + std::to_string(win.k) +
                     (win.stride != win.k ? "s" + std::to_string(win.stride) : "") +
                     (win.pad ? "p" + std::to_string(win.pad) : ""));
    cur = {cur.c, win.out(cur.h), win.out(cur.w)};
  }
  void add_flatten() {
    if (flat) return;  // already [N, features]: Flatten is a no-op
    tokens.push_back("flatten");
    cur = {static_cast<int>(cur.size()), 1, 1};
    flat = true;
  }
};

class Importer {
 public:
  Importer(const onnx::ModelProto& model, const std::string& what) : m_(model), g_(model.graph()), what_(what) {}

  Model run();

 private:
  const onnx::ModelProto& m_;
  const onnx::GraphProto& g_;
  std::string what_;
  std::map<std::string, const onnx::TensorProto*> constants_;  // initializers and Constant nodes' values
  std::map<std::string, std::vector<int>> consumers_;          // value -> nodes reading it
  std::map<std::string, int> producer_;                        // value -> node writing it
  std::vector<bool> visited_;
  // Static shapes of the chain's values ([N, C, H, W] or [N, F], N as kBatch), for Shape nodes.
  std::map<std::string, std::vector<int64_t>> shapes_;
  ChainBuilder b_;
  Shape3 input_;

  [[noreturn]] void refuse(const std::string& why) const { throw InputError(what_ + ": " + why); }
  [[noreturn]] void refuse_node(int i, const std::string& why) const {
    refuse(node_label(g_.node(i), i) + ": " + why);
  }

  void index_graph();
  std::string graph_input();
  const onnx::TensorProto& constant(int node, int input_index, const char* role);
  bool is_constant(const std::string& name) const { return constants_.count(name) > 0; }
  int next_node(const std::string& value);
  std::vector<int64_t> evaluate_ints(const std::string& value, int depth);
  std::vector<int64_t> evaluate_ints_uncached(const std::string& value, int depth);
  std::map<std::string, std::vector<int64_t>> int_cache_;
  std::set<std::string> evaluating_;
  std::vector<int64_t> current_shape() const;
  Window window_of(int node, const std::vector<int64_t>& kernel, bool pads_allowed);
  void translate(int i, std::string& cur);
  void conv(int i);
  void pool(int i, bool avg);
  void global_average_pool(int i);
  void batch_norm(int i, const std::string& cur);
  bool dropout(int i);  // whether it added a layer
  void gemm(int i);
  void matmul(int i, const std::string& cur);
  void add_bias(int i, const std::string& cur);
  void reshape(int i);
  void require_inputs(int i, int min, int max);
  void require_unused_extra_outputs(int i);
};

void Importer::index_graph() {
  if (g_.node_size() > kMaxNodes)
    refuse("the graph has " + std::to_string(g_.node_size()) + " nodes; nudge reads at most " + std::to_string(kMaxNodes));
  for (const auto& t : g_.initializer()) constants_[t.name()] = &t;
  if (g_.sparse_initializer_size() > 0) refuse("the graph has sparse initializers, which nudge does not read");
  for (int i = 0; i < g_.node_size(); ++i) {
    const auto& n = g_.node(i);
    if (!n.domain().empty() && n.domain() != "ai.onnx")
      refuse(node_label(n, i) + " is from the operator set '" + n.domain() + "'; nudge reads the standard ONNX ops only");
    if (n.op_type() == "Constant") {
      const auto* v = onnx_io::find_attribute(n, "value");
      if (!v || v->type() != onnx::AttributeProto::TENSOR || n.output_size() != 1)
        refuse_node(i, "only a Constant with a 'value' tensor is supported");
      constants_[n.output(0)] = &v->t();
    }
    for (const auto& in : n.input())
      if (!in.empty()) consumers_[in].push_back(i);
    for (const auto& out : n.output()) {
      if (out.empty()) continue;
      if (!producer_.emplace(out, i).second) refuse("value '" + out + "' is written by two nodes");
    }
  }
  visited_.assign(g_.node_size(), false);
  for (int i = 0; i < g_.node_size(); ++i)
    if (g_.node(i).op_type() == "Constant") visited_[i] = true;
}

std::string Importer::graph_input() {
  const onnx::ValueInfoProto* input = nullptr;
  for (const auto& in : g_.input()) {
    if (is_constant(in.name())) continue;  // IR < 4 lists initializers as inputs too
    if (input) refuse("the graph has several inputs ('" + input->name() + "', '" + in.name() + "'); nudge feeds one image tensor");
    input = &in;
  }
  if (!input) refuse("the graph has no input");
  const std::string& name = input->name();
  if (!input->type().has_tensor_type()) refuse("input '" + name + "' is not a tensor");
  const auto& tt = input->type().tensor_type();
  if (tt.elem_type() != onnx::TensorProto::FLOAT) refuse("input '" + name + "' is not float32");
  if (!tt.has_shape()) refuse("input '" + name + "' has no shape; nudge needs [N, C, H, W] with fixed C, H and W");
  const auto& shape = tt.shape();
  if (shape.dim_size() != 4)
    refuse("input '" + name + "' has " + std::to_string(shape.dim_size()) +
           " dimensions; nudge feeds images as [N, C, H, W]");
  int chw[3];
  const char* names[3] = {"C", "H", "W"};
  for (int d = 1; d < 4; ++d) {
    const auto& dim = shape.dim(d);
    if (!dim.has_dim_value())
      refuse("input '" + name + "' has a symbolic dimension " + names[d - 1] + " = '" + dim.dim_param() +
             "'; nudge needs fixed C, H and W (export with a fixed input size)");
    if (dim.dim_value() <= 0 || dim.dim_value() > 65536)
      refuse("input '" + name + "' has dimension " + names[d - 1] + " = " + std::to_string(dim.dim_value()));
    chw[d - 1] = static_cast<int>(dim.dim_value());
  }
  b_.cur = {chw[0], chw[1], chw[2]};
  input_ = b_.cur;
  if (b_.cur.size() > kMaxLayerElements)
    refuse("input '" + name + "' has " + std::to_string(b_.cur.size()) + " values per image; the limit is " +
           std::to_string(kMaxLayerElements));
  shapes_[name] = current_shape();
  return name;
}

std::vector<int64_t> Importer::current_shape() const {
  if (b_.flat) return {kBatch, b_.cur.c};
  return {kBatch, b_.cur.c, b_.cur.h, b_.cur.w};
}

const onnx::TensorProto& Importer::constant(int i, int input_index, const char* role) {
  const auto& n = g_.node(i);
  if (input_index >= n.input_size() || n.input(input_index).empty())
    refuse_node(i, std::string("needs its ") + role + " as input " + std::to_string(input_index));
  const std::string& name = n.input(input_index);
  auto it = constants_.find(name);
  if (it == constants_.end())
    refuse_node(i, std::string("its ") + role + " '" + name + "' is computed in the graph; nudge needs it as an initializer");
  return *it->second;
}

void Importer::require_inputs(int i, int min, int max) {
  const int n = g_.node(i).input_size();
  if (n < min || n > max)
    refuse_node(i, "has " + std::to_string(n) + " inputs; nudge reads " + std::to_string(min) +
                       (max > min ? " to " + std::to_string(max) : ""));
}

void Importer::require_unused_extra_outputs(int i) {
  const auto& n = g_.node(i);
  for (int o = 1; o < n.output_size(); ++o) {
    if (n.output(o).empty()) continue;
    if (consumers_.count(n.output(o)))
      refuse_node(i, "its output '" + n.output(o) + "' is used; nudge reads only the first output");
    for (const auto& go : g_.output())
      if (go.name() == n.output(o)) refuse_node(i, "its output '" + n.output(o) + "' is a graph output");
  }
}

// The one node that reads `value` as data. Shape nodes only read a value's static shape, which the importer
// knows, so they are not a branch; they are evaluated when a Reshape asks for its target shape.
int Importer::next_node(const std::string& value) {
  auto it = consumers_.find(value);
  std::vector<int> readers;
  if (it != consumers_.end())
    for (int i : it->second)
      if (g_.node(i).op_type() != "Shape") readers.push_back(i);
  if (readers.empty()) return -1;
  if (readers.size() > 1) {
    std::string list;
    for (size_t k = 0; k < readers.size() && k < 4; ++k) list += (k ? ", " : "") + node_label(g_.node(readers[k]), readers[k]);
    refuse("value '" + value + "' feeds " + std::to_string(readers.size()) + " nodes (" + list +
           "): nudge reads sequential models only; branches and skip connections are not supported");
  }
  const int i = readers[0];
  if (visited_[i]) refuse(node_label(g_.node(i), i) + " is reached twice: the graph has a cycle");
  return i;
}

// Integer values computed from constants and static shapes: what PyTorch writes for x.view(x.size(0), -1) with a
// dynamic batch (Shape -> Gather -> Unsqueeze -> Concat -> Reshape). The batch is kBatch.
std::vector<int64_t> Importer::evaluate_ints(const std::string& value, int depth) {
  // Each value is computed once: a graph whose shape nodes share inputs (or loop) costs one visit per value, not one
  // per path, so no input can make this exponential; a value met again while it is being computed is a cycle.
  if (auto hit = int_cache_.find(value); hit != int_cache_.end()) return hit->second;
  if (!evaluating_.insert(value).second) refuse("the shape computation of '" + value + "' depends on itself: the graph has a cycle");
  std::vector<int64_t> v = evaluate_ints_uncached(value, depth);
  evaluating_.erase(value);
  int_cache_[value] = v;
  return v;
}

std::vector<int64_t> Importer::evaluate_ints_uncached(const std::string& value, int depth) {
  if (depth > 32) refuse("the shape computation feeding '" + value + "' is too deep");
  if (auto c = constants_.find(value); c != constants_.end())
    return onnx_io::decode_int_tensor(*c->second, "tensor '" + value + "'");
  auto p = producer_.find(value);
  if (p == producer_.end()) refuse("value '" + value + "' is neither computed nor an initializer");
  const int i = p->second;
  const auto& n = g_.node(i);
  const std::string who = node_label(n, i);
  visited_[i] = true;
  // Every op here reads its first input; Gather also its second.
  const int needs = n.op_type() == "Gather" ? 2 : n.op_type() == "Concat" ? 0 : 1;
  if (n.input_size() < needs) refuse(who + " has " + std::to_string(n.input_size()) + " inputs; it needs " + std::to_string(needs));
  if (n.op_type() == "Shape") {
    auto s = shapes_.find(n.input(0));
    if (s == shapes_.end()) refuse(who + " reads '" + n.input(0) + "', whose shape nudge does not know");
    if (onnx_io::find_attribute(n, "start") || onnx_io::find_attribute(n, "end"))
      refuse(who + ": attributes 'start' and 'end' are not supported");
    return s->second;
  }
  if (n.op_type() == "Gather") {
    const auto data = evaluate_ints(n.input(0), depth + 1);
    const auto idx = evaluate_ints(n.input(1), depth + 1);
    if (onnx_io::int_attribute(n, "axis", 0, who) != 0) refuse(who + ": only axis 0 is supported in shape computations");
    std::vector<int64_t> out;
    for (int64_t k : idx) {
      if (k < 0) k += static_cast<int64_t>(data.size());
      if (k < 0 || k >= static_cast<int64_t>(data.size())) refuse(who + ": index out of range");
      out.push_back(data[static_cast<size_t>(k)]);
    }
    return out;
  }
  if (n.op_type() == "Unsqueeze" || n.op_type() == "Squeeze" || n.op_type() == "Cast" || n.op_type() == "Identity")
    return evaluate_ints(n.input(0), depth + 1);  // 0-d <-> 1-d: the values are what matters here
  if (n.op_type() == "Concat") {
    std::vector<int64_t> out;
    for (const auto& in : n.input()) {
      const auto part = evaluate_ints(in, depth + 1);
      out.insert(out.end(), part.begin(), part.end());
      if (out.size() > 64) refuse(who + ": shape too long");
    }
    return out;
  }
  refuse(who + " in a shape computation: nudge evaluates Shape, Gather, Unsqueeze, Squeeze, Cast and Concat only");
}

// kernel_shape / strides / pads / dilations / auto_pad of a Conv or pool as nudge's square, symmetric Window.
Window Importer::window_of(int i, const std::vector<int64_t>& kernel, bool pads_allowed) {
  const auto& n = g_.node(i);
  const std::string who = node_label(n, i);
  if (kernel.size() != 2) refuse_node(i, "kernel " + ints_to_string(kernel) + " is not 2-D");
  if (kernel[0] != kernel[1]) refuse_node(i, "attribute 'kernel_shape' = " + ints_to_string(kernel) + " is not square; nudge's windows are k x k");
  if (kernel[0] < 1 || kernel[0] > 4096) refuse_node(i, "kernel size " + std::to_string(kernel[0]));
  Window w;
  w.k = static_cast<int>(kernel[0]);
  const bool is_pool = n.op_type() != "Conv";
  bool has;
  auto strides = onnx_io::ints_attribute(n, "strides", who, &has);
  if (!has) strides = {1, 1};  // ONNX's default for Conv and for pools alike
  if (strides.size() != 2 || strides[0] != strides[1] || strides[0] < 1 || strides[0] > 4096)
    refuse_node(i, "attribute 'strides' = " + ints_to_string(strides) + " is not supported (nudge needs equal strides)");
  w.stride = static_cast<int>(strides[0]);
  auto dil = onnx_io::ints_attribute(n, "dilations", who, &has);
  for (int64_t d : dil)
    if (d != 1) refuse_node(i, "attribute 'dilations' = " + ints_to_string(dil) + " is not supported (no dilated windows)");
  const std::string auto_pad = onnx_io::string_attribute(n, "auto_pad", "NOTSET", who);
  auto pads = onnx_io::ints_attribute(n, "pads", who, &has);
  if (auto_pad == "VALID") {
    pads = {0, 0, 0, 0};
  } else if (auto_pad == "SAME_UPPER" || auto_pad == "SAME_LOWER") {
    if (w.stride != 1 || w.k % 2 == 0)
      refuse_node(i, "attribute 'auto_pad' = " + auto_pad + " with an even kernel or a stride pads unevenly; nudge pads symmetrically");
    pads = std::vector<int64_t>(4, (w.k - 1) / 2);
  } else if (auto_pad != "NOTSET") {
    refuse_node(i, "attribute 'auto_pad' = '" + auto_pad + "' is not supported");
  } else if (!has) {
    pads = {0, 0, 0, 0};
  }
  if (pads.size() != 4 || pads[0] != pads[1] || pads[0] != pads[2] || pads[0] != pads[3] || pads[0] < 0 || pads[0] > 4096)
    refuse_node(i, "attribute 'pads' = " + ints_to_string(pads) + " is not supported (nudge pads every side equally)");
  w.pad = static_cast<int>(pads[0]);
  if (w.pad && !pads_allowed)
    refuse_node(i, "attribute 'pads' = " + ints_to_string(pads) + " is not supported (nudge's average pooling has no padding)");
  if (is_pool && onnx_io::int_attribute(n, "ceil_mode", 0, who) != 0) {
    // ceil_mode changes nothing when the windows tile the padded map exactly.
    const auto tiles = [&](int in) { return (in + 2 * w.pad - w.k) % w.stride == 0; };
    if (!tiles(b_.cur.h) || !tiles(b_.cur.w))
      refuse_node(i, "attribute 'ceil_mode' = 1 is not supported (it adds a partial window on this map)");
  }
  if (b_.cur.h + 2 * w.pad < w.k || b_.cur.w + 2 * w.pad < w.k)
    refuse_node(i, "its " + std::to_string(w.k) + "x" + std::to_string(w.k) + " window does not fit the " +
                       std::to_string(b_.cur.h) + "x" + std::to_string(b_.cur.w) + " map");
  return w;
}

void Importer::conv(int i) {
  const auto& n = g_.node(i);
  const std::string who = node_label(n, i);
  require_inputs(i, 2, 3);
  if (b_.flat) refuse_node(i, "a convolution after the features were flattened");
  if (onnx_io::int_attribute(n, "group", 1, who) != 1)
    refuse_node(i, "attribute 'group' = " + std::to_string(onnx_io::int_attribute(n, "group", 1, who)) +
                       " is not supported (no grouped or depthwise convolutions)");
  const Tensor w = onnx_io::decode_float_tensor(constant(i, 1, "weight"), who + " weight");
  if (w.shape.size() != 4) refuse_node(i, "weight has shape " + shape_to_string(w.shape) + "; expected [K, C, k, k]");
  if (w.shape[1] != b_.cur.c)
    refuse_node(i, "weight has " + std::to_string(w.shape[1]) + " input channels; its input has " + std::to_string(b_.cur.c));
  if (w.shape[0] < 1) refuse_node(i, "weight has no filters");
  bool has;
  auto kernel = onnx_io::ints_attribute(n, "kernel_shape", who, &has);
  if (has && (kernel.size() != 2 || kernel[0] != w.shape[2] || kernel[1] != w.shape[3]))
    refuse_node(i, "attribute 'kernel_shape' = " + ints_to_string(kernel) + " disagrees with the weight's " + shape_to_string(w.shape));
  const Window win = window_of(i, {w.shape[2], w.shape[3]}, true);
  Tensor bias({w.shape[0]});
  if (n.input_size() == 3 && !n.input(2).empty()) {
    bias = onnx_io::decode_float_tensor(constant(i, 2, "bias"), who + " bias");
    if (bias.shape != std::vector<int64_t>{w.shape[0]})
      refuse_node(i, "bias has shape " + shape_to_string(bias.shape) + "; expected [" + std::to_string(w.shape[0]) + "]");
  }
  b_.add_conv(w, bias, win);
}

void Importer::pool(int i, bool avg) {
  const auto& n = g_.node(i);
  const std::string who = node_label(n, i);
  require_inputs(i, 1, 1);
  if (b_.flat) refuse_node(i, "pooling after the features were flattened");
  bool has;
  const auto kernel = onnx_io::ints_attribute(n, "kernel_shape", who, &has);
  if (!has) refuse_node(i, "attribute 'kernel_shape' is missing");
  // storage_order only lays out the Indices output, which require_unused_extra_outputs has already found unused.
  const Window win = window_of(i, kernel, !avg);
  if (!avg && 2 * win.pad > win.k)
    refuse_node(i, "attribute 'pads' = " + std::to_string(win.pad) + " is more than half the window");
  b_.add_pool(avg, win);
}

void Importer::global_average_pool(int i) {
  require_inputs(i, 1, 1);
  if (b_.flat) refuse_node(i, "pooling after the features were flattened");
  if (b_.cur.h != b_.cur.w)
    refuse_node(i, "on a " + std::to_string(b_.cur.h) + "x" + std::to_string(b_.cur.w) + " map; nudge's pools are square");
  b_.add_pool(true, Window{b_.cur.h, b_.cur.h, 0});
}

// y = scale (x - mean) / sqrt(var + eps) + B right after the layer that wrote x: nudge's bn, with its four tensors,
// so that the model can be trained further (nudge train --init); inference folds it (model_fold.h). nudge's eps is
// PyTorch's 1e-5: another epsilon is moved into the variance, var + eps = (var + eps - 1e-5) + 1e-5, exact in the
// inference form up to the variance's float rounding. The momentum attribute is not read (nudge trains with 0.1).
void Importer::batch_norm(int i, const std::string& cur) {
  const auto& n = g_.node(i);
  const std::string who = node_label(n, i);
  require_inputs(i, 5, 5);
  if (onnx_io::int_attribute(n, "training_mode", 0, who) != 0)
    refuse_node(i, "attribute 'training_mode' = 1 (batch statistics); export the model in eval mode");
  if (!b_.tokens.empty() && b_.tokens.back().rfind("dropout", 0) == 0)
    refuse_node(i, "follows a Dropout; nudge's bn comes directly after its Conv, Gemm or MatMul");
  if (b_.param_output != cur)
    refuse_node(i, "does not directly follow a Conv, Gemm or MatMul; nudge folds batch normalisation into the layer before it");
  const int C = b_.cur.c;
  const char* roles[4] = {"scale", "B", "mean", "var"};
  std::vector<Tensor> p;
  for (int k = 0; k < 4; ++k) {
    p.push_back(onnx_io::decode_float_tensor(constant(i, k + 1, roles[k]), who + " " + roles[k]));
    if (p.back().size() != static_cast<size_t>(C))
      refuse_node(i, std::string(roles[k]) + " has " + std::to_string(p.back().size()) + " values; the layer has " +
                         std::to_string(C) + " channels");
  }
  const float eps = onnx_io::float_attribute(n, "epsilon", 1e-5f, who);
  for (int o = 0; o < C; ++o) {
    const double var = p[3].data[o];
    if (!(var + eps > 0)) refuse_node(i, "var + epsilon is not positive for channel " + std::to_string(o));
    // 1e-5f is PyTorch's and Keras-free exporters' 1e-5 written as a float: the same epsilon.
    if (eps != static_cast<float>(kBatchNormEps)) {
      p[3].data[o] = static_cast<float>(var + eps - kBatchNormEps);
      if (p[3].data[o] < 0)
        refuse_node(i, "epsilon " + std::to_string(eps) + " with variance " + std::to_string(var) + " for channel " +
                           std::to_string(o) + " cannot be written with nudge's epsilon 1e-5");
    }
  }
  b_.add_batch_norm(p);
}

// nudge's dropoutP with the node's ratio (input 1 from opset 12, an attribute before; 0.5 by default): the identity
// outside training, as in the graph, and what nudge train --init trains with. A ratio of 0 is no layer at all.
bool Importer::dropout(int i) {
  const auto& n = g_.node(i);
  const std::string who = node_label(n, i);
  require_inputs(i, 1, 3);
  // A training_mode input, if given, must be a constant false.
  if (n.input_size() >= 3 && !n.input(2).empty()) {
    const auto mode = onnx_io::decode_int_tensor(constant(i, 2, "training_mode"), who + " training_mode");
    if (!mode.empty() && mode[0] != 0) refuse_node(i, "runs in training mode; export the model in eval mode");
  }
  float ratio = onnx_io::float_attribute(n, "ratio", 0.5f, who);
  if (n.input_size() >= 2 && !n.input(1).empty()) {
    const Tensor r = onnx_io::decode_float_tensor(constant(i, 1, "ratio"), who + " ratio");
    if (r.size() != 1) refuse_node(i, "ratio has " + std::to_string(r.size()) + " values; expected one");
    ratio = r.data[0];
  }
  if (!(ratio >= 0 && ratio < 1)) refuse_node(i, "ratio " + std::to_string(ratio) + " is not in [0, 1)");
  const int ppm = static_cast<int>(std::lround(static_cast<double>(ratio) * 1e6));
  if (ppm >= 1000000) refuse_node(i, "ratio " + std::to_string(ratio) + " rounds to 1 in nudge's 6 decimals");
  if (ppm == 0) return false;
  b_.add_dropout(ppm);
  return true;
}

void Importer::gemm(int i) {
  const auto& n = g_.node(i);
  const std::string who = node_label(n, i);
  require_inputs(i, 2, 3);
  if (onnx_io::int_attribute(n, "transA", 0, who) != 0) refuse_node(i, "attribute 'transA' = 1 is not supported");
  const int64_t transB = onnx_io::int_attribute(n, "transB", 0, who);
  const float alpha = onnx_io::float_attribute(n, "alpha", 1.0f, who);
  const float beta = onnx_io::float_attribute(n, "beta", 1.0f, who);
  if (!b_.flat) refuse_node(i, "reads a 4-D value; a Flatten must come before it");
  const Tensor B = onnx_io::decode_float_tensor(constant(i, 1, "weight"), who + " weight");
  if (B.shape.size() != 2) refuse_node(i, "weight has shape " + shape_to_string(B.shape) + "; expected 2-D");
  const int64_t in = transB ? B.shape[1] : B.shape[0], out = transB ? B.shape[0] : B.shape[1];
  if (in != b_.cur.c)
    refuse_node(i, "weight " + shape_to_string(B.shape) + (transB ? " (transposed)" : "") + " takes " + std::to_string(in) +
                       " features; its input has " + std::to_string(b_.cur.c));
  if (out < 1) refuse_node(i, "weight has no outputs");
  Tensor w({out, in});
  for (int64_t o = 0; o < out; ++o)
    for (int64_t k = 0; k < in; ++k)
      w.data[static_cast<size_t>(o * in + k)] = alpha * B.data[static_cast<size_t>(transB ? o * in + k : k * out + o)];
  Tensor bias({out});
  if (n.input_size() == 3 && !n.input(2).empty()) {
    const Tensor C = onnx_io::decode_float_tensor(constant(i, 2, "bias"), who + " bias");
    if (C.size() != static_cast<size_t>(out) || (C.shape.size() == 2 && C.shape[0] != 1) || C.shape.size() > 2)
      refuse_node(i, "bias has shape " + shape_to_string(C.shape) + "; expected [" + std::to_string(out) + "]");
    for (int64_t o = 0; o < out; ++o) bias.data[static_cast<size_t>(o)] = beta * C.data[static_cast<size_t>(o)];
  }
  b_.add_dense(w, bias);
}

// MatMul by a [in, out] initializer (tf2onnx's dense layer); the Add of its bias, if any, follows as its own node.
void Importer::matmul(int i, const std::string& cur) {
  const auto& n = g_.node(i);
  const std::string who = node_label(n, i);
  require_inputs(i, 2, 2);
  if (n.input(0) != cur) refuse_node(i, "multiplies by the activation from the left; nudge reads x * W only");
  if (!b_.flat) refuse_node(i, "reads a 4-D value; a Flatten must come before it");
  const Tensor B = onnx_io::decode_float_tensor(constant(i, 1, "weight"), who + " weight");
  if (B.shape.size() != 2 || B.shape[0] != b_.cur.c)
    refuse_node(i, "weight has shape " + shape_to_string(B.shape) + "; its input has " + std::to_string(b_.cur.c) + " features");
  const int64_t in = B.shape[0], out = B.shape[1];
  if (out < 1) refuse_node(i, "weight has no outputs");
  Tensor w({out, in});
  for (int64_t o = 0; o < out; ++o)
    for (int64_t k = 0; k < in; ++k) w.data[static_cast<size_t>(o * in + k)] = B.data[static_cast<size_t>(k * out + o)];
  b_.add_dense(w, Tensor({out}));
}

// Add of a per-channel constant right after a conv or dense layer: into its bias.
void Importer::add_bias(int i, const std::string& cur) {
  const auto& n = g_.node(i);
  const std::string who = node_label(n, i);
  require_inputs(i, 2, 2);
  if (b_.param_output != cur) refuse_node(i, "nudge reads Add only as the bias right after a Conv, Gemm or MatMul");
  const int other = n.input(0) == cur ? 1 : 0;
  const Tensor c = onnx_io::decode_float_tensor(constant(i, other, "bias"), who + " bias");
  const int64_t C = b_.cur.c;
  // Shapes that broadcast per channel: [C], [1, C] after a dense layer; [C, 1, 1], [1, C, 1, 1] after a conv.
  std::vector<int64_t> squeezed;
  for (int64_t d : c.shape)
    if (d != 1) squeezed.push_back(d);
  const bool per_channel = c.size() == static_cast<size_t>(C) && (squeezed.size() == 1 || C == 1) &&
                           (b_.flat ? c.shape.size() <= 2 && c.shape.back() == C
                                    : (c.shape.size() == 3 || c.shape.size() == 4) && c.shape[c.shape.size() - 3] == C);
  if (!per_channel)
    refuse_node(i, "adds a tensor of shape " + shape_to_string(c.shape) + "; nudge folds only a per-channel bias of " +
                       std::to_string(C) + " values");
  Tensor& bias = b_.last_bias();
  for (int64_t o = 0; o < C; ++o) bias.data[static_cast<size_t>(o)] += c.data[static_cast<size_t>(o)];
}

void Importer::reshape(int i) {
  const auto& n = g_.node(i);
  const std::string who = node_label(n, i);
  require_inputs(i, 2, 2);
  if (onnx_io::int_attribute(n, "allowzero", 0, who) != 0) refuse_node(i, "attribute 'allowzero' = 1 is not supported");
  const std::vector<int64_t> target = evaluate_ints(n.input(1), 0);
  const int64_t features = b_.cur.size();
  // [N, C*H*W] in any spelling: the batch as 0 (copy), -1 (infer), the batch itself, or a fixed batch size that the
  // export baked in; the features as -1 or their count.
  const bool flatten = target.size() == 2 &&
                       (target[1] == features || (target[1] == -1 && target[0] != -1)) &&
                       (target[0] == 0 || target[0] == -1 || target[0] == kBatch || target[0] > 0);
  if (!flatten) {
    std::string shown = "[";
    for (size_t k = 0; k < target.size(); ++k) shown += (k ? "," : "") + (target[k] == kBatch ? "N" : std::to_string(target[k]));
    refuse_node(i, "reshapes to " + shown + "]; nudge reads a Reshape only as the flatten to [N, " + std::to_string(features) + "]");
  }
  b_.add_flatten();
}

void Importer::translate(int i, std::string& cur) {
  const auto& n = g_.node(i);
  const std::string& op = n.op_type();
  const std::string who = node_label(n, i);
  visited_[i] = true;
  if (n.output_size() < 1 || n.output(0).empty()) refuse_node(i, "has no output");
  require_unused_extra_outputs(i);
  // The activation must be the node's data input (Add may have it on either side).
  if (op != "Add" && n.input(0) != cur)
    refuse_node(i, "reads the activation '" + cur + "' as a parameter; nudge expects it as the first input");
  for (int k = 1; k < n.input_size(); ++k)
    if (n.input(k) == cur && op != "Add") refuse_node(i, "reads the activation twice");
  bool keeps_param_output = false;
  if (op == "Conv") {
    conv(i);
    keeps_param_output = true;
  } else if (op == "Gemm") {
    gemm(i);
    keeps_param_output = true;
  } else if (op == "MatMul") {
    matmul(i, cur);
    keeps_param_output = true;
  } else if (op == "Add") {
    add_bias(i, cur);
    keeps_param_output = true;
  } else if (op == "BatchNormalization") {
    batch_norm(i, cur);
  } else if (op == "Relu") {
    require_inputs(i, 1, 1);
    b_.tokens.push_back("relu");
  } else if (op == "MaxPool") {
    pool(i, false);
  } else if (op == "AveragePool") {
    pool(i, true);
  } else if (op == "GlobalAveragePool") {
    global_average_pool(i);
  } else if (op == "Flatten") {
    require_inputs(i, 1, 1);
    const int64_t axis = onnx_io::int_attribute(n, "axis", 1, who);
    if (axis != 1) refuse_node(i, "attribute 'axis' = " + std::to_string(axis) + " is not supported (nudge flattens to [N, C*H*W])");
    b_.add_flatten();
  } else if (op == "Reshape") {
    reshape(i);
  } else if (op == "Pad") {
    // torch.onnx writes AvgPool2d (count_include_pad, the default) as Pad + AveragePool, with all-zero pads when the
    // pool has none: an identity. A real pad would count zeros into the average, which nudge's avgpool does not do.
    require_inputs(i, 1, 3);
    if (onnx_io::string_attribute(n, "mode", "constant", who) != "constant") refuse_node(i, "only constant padding is supported");
    std::vector<int64_t> pads;
    if (n.input_size() >= 2 && !n.input(1).empty()) pads = evaluate_ints(n.input(1), 0);
    else pads = onnx_io::ints_attribute(n, "pads", who);  // opset < 11
    for (int64_t v : pads)
      if (v != 0) refuse_node(i, "pads " + ints_to_string(pads) + " are not supported (only an all-zero Pad, which changes nothing)");
    keeps_param_output = b_.param_output == cur;
  } else if (op == "Dropout") {
    // A bias Add after a real dropout is no longer the layer's bias in training.
    keeps_param_output = !dropout(i) && b_.param_output == cur;
  } else if (op == "Identity") {
    require_inputs(i, 1, 1);
    keeps_param_output = b_.param_output == cur;
  } else if (op == "Softmax" || op == "LogSoftmax") {
    require_inputs(i, 1, 1);
    const int64_t axis = onnx_io::int_attribute(n, "axis", -1, who);
    if (!b_.flat || (axis != 1 && axis != -1)) refuse_node(i, "nudge drops a final softmax over the classes only");
    if (next_node(n.output(0)) != -1) refuse_node(i, "is not the last node; nudge drops a softmax only at the end");
    b_.dropped_softmax = true;
  } else {
    refuse_node(i, "op " + op +
                       " is not supported (nudge reads Conv, Relu, MaxPool, AveragePool, GlobalAveragePool, Pad (all zeros), "
                       "BatchNormalization, Flatten, Reshape, Gemm, MatMul, Add, Dropout, Identity, Softmax, "
                       "LogSoftmax)");
  }
  cur = n.output(0);
  b_.param_output = keeps_param_output ? cur : "";
  shapes_[cur] = current_shape();
}

Model Importer::run() {
  index_graph();
  if (g_.output_size() != 1) refuse("the graph has " + std::to_string(g_.output_size()) + " outputs; nudge reads one (the logits)");
  const std::string output = g_.output(0).name();
  std::string cur = graph_input();
  while (cur != output) {
    const int i = next_node(cur);
    if (i < 0) refuse("value '" + cur + "' is read by no node and is not the graph's output '" + output + "'");
    translate(i, cur);
  }
  if (next_node(cur) != -1) refuse("the graph's output '" + output + "' is also read by other nodes");
  for (int i = 0; i < g_.node_size(); ++i)
    if (!visited_[i]) refuse(node_label(g_.node(i), i) + " is not on the path from the input to the output");
  if (b_.tokens.empty() || b_.tokens.back().rfind("dense", 0) != 0)
    refuse("the graph must end in a Gemm or MatMul (its outputs are the logits), optionally followed by a softmax");
  std::string arch = std::to_string(input_.c) + "x" + std::to_string(input_.h) + "x" + std::to_string(input_.w) + ":";
  for (size_t k = 0; k < b_.tokens.size(); ++k) arch += (k ? "," : "") + b_.tokens[k];
  SafetensorsFile f;
  f.metadata["nudge.architecture"] = arch;
  std::string source = "onnx";
  if (!m_.producer_name().empty()) source += " from " + m_.producer_name() + " " + m_.producer_version();
  for (const auto& op : m_.opset_import())
    if (op.domain().empty() || op.domain() == "ai.onnx") source += ", opset " + std::to_string(op.version());
  if (b_.dropped_softmax) source += ", final softmax dropped";
  f.metadata["nudge.source"] = source;
  // The file's metadata comes back (nudge's export writes the model's there: the training recipe and the like);
  // the architecture is the graph's, and the source is this import.
  for (const auto& kv : m_.metadata_props())
    if (kv.key() != "nudge.architecture" && kv.key() != "nudge.source") f.metadata[kv.key()] = kv.value();
  f.tensors = std::move(b_.tensors);
  // Architecture::parse (inside) re-derives every shape from the string and applies the size caps; the tensors are
  // then checked against it like any safetensors model's.
  return Model::from_safetensors(std::move(f), what_);
}

}  // namespace

Model model_from_onnx(const std::string& bytes, const std::string& what) {
  if (bytes.size() > kMaxOnnxBytes) throw InputError(what + ": " + std::to_string(bytes.size()) + " bytes; the limit is " + std::to_string(kMaxOnnxBytes));
  onnx::ModelProto model;
  if (!model.ParseFromArray(bytes.data(), static_cast<int>(bytes.size())))
    throw InputError(what + ": not a readable ONNX file (the protobuf does not parse)");
  if (!model.has_graph()) throw InputError(what + ": the ONNX file has no graph");
  return Importer(model, what).run();
}

Model read_onnx_model(const std::string& path) { return model_from_onnx(read_file(path, kMaxOnnxBytes), path); }

}  // namespace nudge
