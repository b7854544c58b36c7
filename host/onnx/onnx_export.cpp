// A nudge model as an ONNX graph (opset 13): the layers in order (bn as BatchNormalization, dropout as Dropout with
// its ratio, both in inference form), the weights as initializers under nudge's own
// tensor names, raw little-endian float32, so that import reads back the same bits. The batch dimension is symbolic
// ("N"), C, H and W fixed.
#include <cstring>

#include "architecture.h"
#include "atomic_file.h"
#include "errors.h"
#include "onnx_model.h"
#include "onnx_tensors.h"

namespace nudge {

namespace {

constexpr int64_t kOpset = 13;
constexpr int64_t kIrVersion = 7;  // the IR of opset 13 (ONNX 1.8), which every current reader accepts

void set_ints(onnx::NodeProto* n, const char* name, std::vector<int64_t> v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INTS);
  for (int64_t x : v) a->add_ints(x);
}

void set_int(onnx::NodeProto* n, const char* name, int64_t v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::INT);
  a->set_i(v);
}

void set_float(onnx::NodeProto* n, const char* name, float v) {
  auto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto::FLOAT);
  a->set_f(v);
}

// The square window of a Conv or pool: ONNX's kernel_shape, strides and pads [top, left, bottom, right].
void set_window(onnx::NodeProto* n, const LayerSpec& l) {
  set_ints(n, "kernel_shape", {l.kernel, l.kernel});
  set_ints(n, "strides", {l.stride, l.stride});
  set_ints(n, "pads", {l.pad, l.pad, l.pad, l.pad});
}

void add_initializer(onnx::GraphProto* g, const std::string& name, const Tensor& t) {
  auto* init = g->add_initializer();
  init->set_name(name);
  init->set_data_type(onnx::TensorProto::FLOAT);
  for (int64_t d : t.shape) init->add_dims(d);
  std::string raw(t.size() * 4, '\0');
  if (t.size()) std::memcpy(&raw[0], t.data.data(), raw.size());
  init->set_raw_data(std::move(raw));
}

void set_tensor_type(onnx::ValueInfoProto* v, const std::string& name, std::vector<int64_t> dims) {
  v->set_name(name);
  auto* tt = v->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(onnx::TensorProto::FLOAT);
  auto* shape = tt->mutable_shape();
  shape->add_dim()->set_dim_param("N");
  for (int64_t d : dims) shape->add_dim()->set_dim_value(d);
}

}  // namespace

std::string model_to_onnx(const Model& model) {
  assert_params_match_architecture(model, "model_to_onnx");
  onnx::ModelProto m;
  m.set_ir_version(kIrVersion);
  m.set_producer_name("nudge");
  m.set_model_version(1);
  auto* opset = m.add_opset_import();
  opset->set_domain("");
  opset->set_version(kOpset);
  for (const auto& [key, value] : model.metadata) {
    if (key == "nudge.architecture" || key == "nudge.source") continue;
    auto* kv = m.add_metadata_props();
    kv->set_key(key);
    kv->set_value(value);
  }
  auto* arch_prop = m.add_metadata_props();
  arch_prop->set_key("nudge.architecture");
  arch_prop->set_value(model.arch.to_string());

  onnx::GraphProto* g = m.mutable_graph();
  g->set_name("nudge");
  const Architecture& a = model.arch;
  set_tensor_type(g->add_input(), "input", {a.input.c, a.input.h, a.input.w});
  std::string cur = "input";
  size_t p = 0;
  for (size_t i = 0; i < a.layers.size(); ++i) {
    const LayerSpec& l = a.layers[i];
    const bool last = i + 1 == a.layers.size();
    const std::string out = last ? "logits" : "t" + std::to_string(i);
    onnx::NodeProto* n = g->add_node();
    n->add_input(cur);
    n->add_output(out);
    switch (l.kind) {
      case LayerKind::Conv:
        n->set_op_type("Conv");
        n->set_name(l.name);
        n->add_input(l.name + ".weight");
        n->add_input(l.name + ".bias");
        set_window(n, l);
        add_initializer(g, l.name + ".weight", model.params[p]);
        add_initializer(g, l.name + ".bias", model.params[p + 1]);
        p += 2;
        break;
      case LayerKind::Dense:
        n->set_op_type("Gemm");
        n->set_name(l.name);
        n->add_input(l.name + ".weight");
        n->add_input(l.name + ".bias");
        set_int(n, "transB", 1);  // nudge's dense weight is [out, in], as PyTorch's nn.Linear
        add_initializer(g, l.name + ".weight", model.params[p]);
        add_initializer(g, l.name + ".bias", model.params[p + 1]);
        p += 2;
        break;
      case LayerKind::Relu:
        n->set_op_type("Relu");
        n->set_name("relu" + std::to_string(i));
        break;
      case LayerKind::MaxPool:
      case LayerKind::AvgPool:
        n->set_op_type(l.kind == LayerKind::MaxPool ? "MaxPool" : "AveragePool");
        n->set_name((l.kind == LayerKind::MaxPool ? "maxpool" : "avgpool") + std::to_string(i));
        set_window(n, l);
        break;
      case LayerKind::Flatten:
        n->set_op_type("Flatten");
        n->set_name("flatten" + std::to_string(i));
        set_int(n, "axis", 1);
        break;
      case LayerKind::BatchNorm: {
        // Inference form (opset 13 has no training_mode): the running statistics normalise. ONNX's momentum weighs
        // the old running value, PyTorch's (and nudge's) the batch's.
        n->set_op_type("BatchNormalization");
        n->set_name(l.name);
        const char* suffixes[4] = {".weight", ".bias", ".running_mean", ".running_var"};
        for (int k = 0; k < 4; ++k) {
          n->add_input(l.name + suffixes[k]);
          add_initializer(g, l.name + suffixes[k], model.params[p + k]);
        }
        set_float(n, "epsilon", static_cast<float>(kBatchNormEps));
        set_float(n, "momentum", static_cast<float>(1 - kBatchNormMomentum));
        p += 4;
        break;
      }
      case LayerKind::Dropout: {
        // The ratio as an input (opset 12 on); no training_mode input, so every reader runs it as the identity.
        n->set_op_type("Dropout");
        n->set_name("dropout" + std::to_string(i));
        const std::string ratio = n->name() + ".ratio";
        n->add_input(ratio);
        Tensor r(std::vector<int64_t>{});
        r.data[0] = l.drop_probability();
        add_initializer(g, ratio, r);
        break;
      }
    }
    cur = out;
  }
  set_tensor_type(g->add_output(), "logits", {a.num_classes()});
  std::string bytes;
  if (!m.SerializeToString(&bytes)) throw InternalError("ONNX export: the protobuf did not serialize");
  return bytes;
}

void write_onnx_model(const Model& model, const std::string& path) { write_file_atomically(path, model_to_onnx(model)); }

}  // namespace nudge
