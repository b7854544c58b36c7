#include "cpu_forward_session.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <utility>

#include "cpu_layers.h"
#include "errors.h"
#include "parallel_errors.h"
#include "pool_math.h"

namespace nudge {

namespace {

// Part of every channel of a map: rows [h0, h1), columns [w0, w1). Dense layers' outputs are one 1 x 1 map of
// `units` channels, so "all of it" is the same rectangle there.
struct Rect {
  int h0 = 0, h1 = 0, w0 = 0, w1 = 0;
  bool empty() const { return h0 >= h1 || w0 >= w1; }
};

enum class StageKind { Conv, Relu, MaxPool, AvgPool, Dense };

// One layer of the inference network (a ReLU right after a conv or dense layer is part of that stage, as in
// CpuNetwork::forward), reading the previous stage's map and writing its own, in one slot's storage.
struct Stage {
  StageKind kind;
  Window win;
  bool relu = false;
  const float* w = nullptr;
  const float* b = nullptr;
  std::vector<float> wt;  // Dense: w transposed, [in, out], made once for the session
  Shape3 in, out;
  size_t in_off = 0, out_off = 0;
};

// The outputs of a window (k, stride, pad) whose inputs meet rows [lo, hi) of a map, clipped to [0, out).
void reach(int lo, int hi, Window win, int out, int& out_lo, int& out_hi) {
  const int first = lo + win.pad - win.k + 1, last = hi - 1 + win.pad;
  out_lo = first <= 0 ? 0 : (first + win.stride - 1) / win.stride;
  out_hi = last < 0 ? 0 : std::min(out, last / win.stride + 1);
}

// What a pending candidate overwrote: blocks of `rows` runs of `cols` floats (run r of channel c at
// offset + c*plane + r*row in its slot), and their old values, in order. Copied element by element: the runs are a
// few floats long, too short for a library copy each.
struct Undo {
  struct Block {
    size_t offset;
    int channels, rows, cols;
    size_t plane, row;
  };
  std::vector<Block> blocks;
  std::vector<float> values;
  void clear() {
    blocks.clear();
    values.clear();
  }
  void save(const float* slot, const Block& b) {
    blocks.push_back(b);
    const size_t at = values.size();
    values.resize(at + static_cast<size_t>(b.channels) * b.rows * b.cols);
    float* v = values.data() + at;
    for (int c = 0; c < b.channels; ++c)
      for (int r = 0; r < b.rows; ++r) {
        const float* src = slot + b.offset + c * b.plane + r * b.row;
        for (int j = 0; j < b.cols; ++j) *v++ = src[j];
      }
  }
  void restore(float* slot) const {
    const float* v = values.data();
    for (const Block& b : blocks)
      for (int c = 0; c < b.channels; ++c)
        for (int r = 0; r < b.rows; ++r) {
          float* dst = slot + b.offset + c * b.plane + r * b.row;
          for (int j = 0; j < b.cols; ++j) dst[j] = *v++;
        }
  }
};

class CpuForwardSession : public ForwardSession {
 public:
  CpuForwardSession(std::vector<Stage> stages, Shape3 input, int classes, int n, int threads)
      : stages_(std::move(stages)), input_(input), K_(classes), n_(n), threads_(threads) {
    slot_floats_ = input_.size();
    for (const Stage& s : stages_) slot_floats_ = std::max(slot_floats_, s.out_off + s.out.size());
    const size_t floats = slot_floats_ * static_cast<size_t>(n_);
    with_memory_named("the kept activations of " + std::to_string(n_) + " images", floats * sizeof(float),
                      [&] { storage_.resize(floats); });
    undo_.resize(n_);
  }

  void set_bases(const float* x, float* logits) override {
    ParallelErrors errors;
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads_) if (!omp_in_parallel())
    for (int s = 0; s < n_; ++s) errors.run([&] {
      float* slot = slot_ptr(s);
      std::copy_n(x + static_cast<size_t>(s) * input_.size(), input_.size(), slot);
      Rect r{0, input_.h, 0, input_.w};
      for (const Stage& st : stages_) r = run_stage(st, slot, r, nullptr);
      std::copy_n(slot + stages_.back().out_off, K_, logits + static_cast<size_t>(s) * K_);
    });
    errors.rethrow();
  }

  void evaluate(const int* slots, const float* cand, int m, float* logits) override {
    if (m > n_) throw InternalError("forward session: more candidates than bases");
    pending_.assign(slots, slots + m);
    ParallelErrors errors;
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads_) if (!omp_in_parallel())
    for (int i = 0; i < m; ++i) errors.run([&] {
      float* slot = slot_ptr(slots[i]);
      Undo& undo = undo_[i];
      undo.clear();
      const Rect r = write_input(slot, cand + static_cast<size_t>(i) * input_.size(), undo);
      if (!r.empty()) {
        Rect reached = r;
        for (const Stage& st : stages_) reached = run_stage(st, slot, reached, &undo);
      }
      std::copy_n(slot + stages_.back().out_off, K_, logits + static_cast<size_t>(i) * K_);
    });
    errors.rethrow();
  }

  void resolve(const uint8_t* keep) override {
    const int m = static_cast<int>(pending_.size());
#pragma omp parallel for schedule(dynamic, 16) num_threads(threads_) if (!omp_in_parallel())
    for (int i = 0; i < m; ++i)
      if (!keep[i]) undo_[i].restore(slot_ptr(pending_[i]));
    pending_.clear();
  }

 private:
  float* slot_ptr(int s) { return storage_.data() + static_cast<size_t>(s) * slot_floats_; }

  // Writes the pixels where the candidate differs from the base (bit for bit) and returns their bounding rectangle.
  Rect write_input(float* slot, const float* cand, Undo& undo) const {
    const int H = input_.h, W = input_.w;
    Rect r{H, 0, W, 0};
    for (int c = 0; c < input_.c; ++c)
      for (int h = 0; h < H; ++h) {
        const size_t row = static_cast<size_t>(c * H + h) * W;
        if (std::memcmp(slot + row, cand + row, sizeof(float) * W) == 0) continue;  // most rows are the same
        for (int w = 0; w < W; ++w) {
          const size_t q = row + w;
          if (std::memcmp(slot + q, cand + q, sizeof(float)) == 0) continue;
          r.h0 = std::min(r.h0, h);
          r.h1 = std::max(r.h1, h + 1);
          r.w0 = std::min(r.w0, w);
          r.w1 = std::max(r.w1, w + 1);
        }
      }
    if (r.empty()) return r;
    undo.save(slot, Undo::Block{static_cast<size_t>(r.h0) * W + r.w0, input_.c, r.h1 - r.h0, r.w1 - r.w0,
                                static_cast<size_t>(H) * W, static_cast<size_t>(W)});
    for (int c = 0; c < input_.c; ++c)
      for (int h = r.h0; h < r.h1; ++h) {
        const size_t q = static_cast<size_t>(c * H + h) * W + r.w0;
        std::copy_n(cand + q, r.w1 - r.w0, slot + q);
      }
    return r;
  }

  // Recomputes the outputs of `st` that inputs in `changed` reach (all of them for a dense layer or a convolution
  // that is not plain) and returns them; saves what it overwrites when undo is given.
  static Rect run_stage(const Stage& st, float* slot, Rect changed, Undo* undo) {
    if (changed.empty()) return changed;  // the same inputs: the same outputs
    const float* in = slot + st.in_off;
    float* out = slot + st.out_off;
    Rect r{0, st.out.h, 0, st.out.w};
    const bool whole = st.kind == StageKind::Dense || (st.kind == StageKind::Conv && !st.win.plain());
    if (!whole && st.kind != StageKind::Relu) {
      reach(changed.h0, changed.h1, st.win, st.out.h, r.h0, r.h1);
      reach(changed.w0, changed.w1, st.win, st.out.w, r.w0, r.w1);
    } else if (st.kind == StageKind::Relu) {
      r = changed;
    }
    if (r.empty()) return r;
    const int Hi = st.in.h, Wi = st.in.w, Ho = st.out.h, Wo = st.out.w;
    if (undo) {
      if (whole) r = Rect{0, Ho, 0, Wo};
      undo->save(slot, Undo::Block{st.out_off + static_cast<size_t>(r.h0) * Wo + r.w0, st.out.c, r.h1 - r.h0,
                                   r.w1 - r.w0, static_cast<size_t>(Ho) * Wo, static_cast<size_t>(Wo)});
    }
    switch (st.kind) {
      case StageKind::Conv:
        if (whole)
          cpu::conv2d_forward(in, 1, st.in, st.w, st.b, st.out.c, st.win, out, st.relu);
        else
          cpu::conv2d_forward_rect(in, st.in, st.w, st.b, st.out.c, st.win.k, out, r.h0, r.h1, r.w0, r.w1, st.relu);
        break;
      case StageKind::Dense:
        cpu::dense_forward_wt(in, 1, st.in.size(), st.wt.data(), st.b, st.out.c, out, st.relu);
        break;
      case StageKind::Relu:
        for (int c = 0; c < st.out.c; ++c)
          for (int h = r.h0; h < r.h1; ++h)
            for (int w = r.w0; w < r.w1; ++w) {
              const size_t q = static_cast<size_t>(c * Ho + h) * Wo + w;
              out[q] = in[q] > 0 ? in[q] : 0.0f;
            }
        break;
      case StageKind::MaxPool:
        if (st.win.k == 2 && st.win.stride == 2 && st.win.pad == 0) {
          // The common window: the same comparisons as maxpool_window_argmax (row-major, strictly greater).
          for (int c = 0; c < st.out.c; ++c) {
            const float* plane = in + static_cast<size_t>(c) * Hi * Wi;
            float* o = out + static_cast<size_t>(c) * Ho * Wo;
            for (int h = r.h0; h < r.h1; ++h) {
              const float* r0 = plane + 2 * h * Wi;
              const float* r1 = r0 + Wi;
              for (int w = r.w0; w < r.w1; ++w) {
                float v = r0[2 * w];
                v = r0[2 * w + 1] > v ? r0[2 * w + 1] : v;
                v = r1[2 * w] > v ? r1[2 * w] : v;
                v = r1[2 * w + 1] > v ? r1[2 * w + 1] : v;
                o[h * Wo + w] = v;
              }
            }
          }
          break;
        }
        [[fallthrough]];
      case StageKind::AvgPool:
        for (int c = 0; c < st.out.c; ++c) {
          const float* plane = in + static_cast<size_t>(c) * Hi * Wi;
          float* o = out + static_cast<size_t>(c) * Ho * Wo;
          for (int h = r.h0; h < r.h1; ++h)
            for (int w = r.w0; w < r.w1; ++w)
              o[h * Wo + w] = st.kind == StageKind::MaxPool ? plane[maxpool_window_argmax(plane, Hi, Wi, st.win, h, w)]
                                                            : avgpool_window_mean(plane, Wi, st.win, h, w);
        }
        break;
    }
    return r;
  }

  std::vector<Stage> stages_;
  Shape3 input_;
  int K_, n_, threads_;
  size_t slot_floats_ = 0;
  std::vector<float> storage_;
  std::vector<Undo> undo_;    // per candidate of the pending evaluate
  std::vector<int> pending_;  // its slots
};

}  // namespace

bool cpu_forward_session_follows(const Architecture& arch) {
  for (const LayerSpec& l : arch.layers)
    switch (l.kind) {
      case LayerKind::Conv:
      case LayerKind::Dense:
      case LayerKind::Relu:
      case LayerKind::MaxPool:
      case LayerKind::AvgPool:
      case LayerKind::Flatten: break;
      default: return false;  // bn and dropout: folded away for inference, so not expected here
    }
  return true;
}

std::unique_ptr<ForwardSession> make_cpu_forward_session(const Architecture& arch, const std::vector<const float*>& params,
                                                         int n, int threads) {
  if (!cpu_forward_session_follows(arch)) return nullptr;
  std::vector<Stage> stages;
  size_t offset = arch.input.size();
  size_t prev_out = 0;  // where the current map lies in a slot (the input image at 0)
  Shape3 prev_shape = arch.input;
  size_t p = 0;
  for (size_t i = 0; i < arch.layers.size(); ++i) {
    const LayerSpec& l = arch.layers[i];
    Stage st;
    st.in = prev_shape;
    st.in_off = prev_out;
    st.win = l.window();
    switch (l.kind) {
      case LayerKind::Conv:
      case LayerKind::Dense:
        st.kind = l.kind == LayerKind::Conv ? StageKind::Conv : StageKind::Dense;
        st.w = params[p];
        st.b = params[p + 1];
        p += 2;
        st.relu = i + 1 < arch.layers.size() && arch.layers[i + 1].kind == LayerKind::Relu;
        if (l.kind == LayerKind::Dense) {
          const int in = static_cast<int>(l.in.size()), units = l.out_channels;
          st.in = Shape3{in, 1, 1};
          st.wt.resize(static_cast<size_t>(in) * units);
          for (int o = 0; o < units; ++o)
            for (int j = 0; j < in; ++j) st.wt[static_cast<size_t>(j) * units + o] = st.w[static_cast<size_t>(o) * in + j];
        }
        st.out = l.kind == LayerKind::Dense ? Shape3{l.out_channels, 1, 1} : l.out;
        break;
      case LayerKind::Relu: st.kind = StageKind::Relu; st.out = l.out; break;
      case LayerKind::MaxPool: st.kind = StageKind::MaxPool; st.out = l.out; break;
      case LayerKind::AvgPool: st.kind = StageKind::AvgPool; st.out = l.out; break;
      case LayerKind::Flatten: continue;  // the same floats, read as a vector by the dense layer after it
      default: throw InternalError("forward session: a layer cpu_forward_session_follows refuses");
    }
    st.out_off = offset;
    offset += st.out.size();
    prev_out = st.out_off;
    prev_shape = st.out;
    const bool relu_done = st.relu;
    stages.push_back(std::move(st));
    if (relu_done) ++i;
  }
  if (stages.empty()) return nullptr;
  return std::make_unique<CpuForwardSession>(std::move(stages), arch.input, arch.num_classes(), n, threads);
}

}  // namespace nudge
