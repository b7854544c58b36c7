// Every cuDNN call of nudge lives in this file (see cudnn_conv.h for the algorithm policy).
#include "cudnn_conv.h"

#include <cudnn.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "cuda_check.h"
#include "cuda_context.h"
#include "errors.h"

namespace nudge::cuda {

namespace {

enum class Pass { Forward = 0, BackwardData = 1, BackwardFilter = 2 };

const char* pass_name(Pass p) {
  switch (p) {
    case Pass::Forward: return "cuDNN conv forward";
    case Pass::BackwardData: return "cuDNN conv backward data";
    case Pass::BackwardFilter: return "cuDNN conv backward filter";
  }
  return "cuDNN conv";
}

// The algorithm for one pass over one shape, and the math type to run it with.
struct Plan {
  int algo = 0;
  cudnnMathType_t math = CUDNN_FMA_MATH;
};

// One heuristic suggestion, whatever the pass.
struct Candidate {
  int algo;
  cudnnStatus_t status;
  size_t memory;
  cudnnDeterminism_t determinism;
  cudnnMathType_t math;
};

template <class Perf>
std::vector<Candidate> candidates_of(const std::vector<Perf>& perf, int returned) {
  std::vector<Candidate> c;
  for (int i = 0; i < returned; ++i)
    c.push_back({static_cast<int>(perf[i].algo), perf[i].status, perf[i].memory, perf[i].determinism, perf[i].mathType});
  return c;
}

const char* algo_name(Pass pass, int algo) {
  static const char* const fwd[] = {"IMPLICIT_GEMM", "IMPLICIT_PRECOMP_GEMM", "GEMM", "DIRECT",
                                    "FFT", "FFT_TILING", "WINOGRAD", "WINOGRAD_NONFUSED"};
  static const char* const bwd_data[] = {"ALGO_0", "ALGO_1", "FFT", "FFT_TILING", "WINOGRAD", "WINOGRAD_NONFUSED"};
  static const char* const bwd_filter[] = {"ALGO_0", "ALGO_1", "FFT", "ALGO_3", "WINOGRAD", "WINOGRAD_NONFUSED",
                                           "FFT_TILING"};
  const auto pick = [algo](const char* const* names, int count) {
    return algo >= 0 && algo < count ? names[algo] : "?";
  };
  switch (pass) {
    case Pass::Forward: return pick(fwd, 8);
    case Pass::BackwardData: return pick(bwd_data, 6);
    case Pass::BackwardFilter: return pick(bwd_filter, 7);
  }
  return "?";
}

// With NUDGE_CUDA_LOG=<file>, one line per algorithm choice (once per pass, shape and batch bucket: the plan cache
// below makes each choice once), appended to that file: which cuDNN algorithms ran is otherwise unknowable after a
// GPU run. Users' stderr never sees it. The file is opened per line; choices are a handful per run.
void log_choice(const char* pass, int c, int h, int w, int K, Window win, long batch_key, int algo, const char* name,
                bool fma) {
  const char* path = std::getenv("NUDGE_CUDA_LOG");
  if (!path || !*path) return;
  if (FILE* f = std::fopen(path, "a")) {
    std::fprintf(f, "%s: in %dx%dx%d, %d filters %dx%d stride %d pad %d, batch %s %ld: algo %d (%s), %s math\n",
                 pass, c, h, w, K, win.k, win.k, win.stride, win.pad, batch_key < 0 ? "exactly" : "bucket",
                 batch_key < 0 ? -batch_key : batch_key, algo, name, fma ? "FMA" : "tensor-op");
    std::fclose(f);
  }
}

// (pass, C, H, W, K, k, stride, pad, batch key) -> plan. Batch key: the power-of-two bucket, or -n for an
// exact-shape choice.
using PlanKey = std::tuple<int, int, int, int, int, int, int, int, long>;

long batch_bucket(int n) {
  long b = 1;
  while (b < n) b <<= 1;
  return b;
}

}  // namespace

struct CudnnState::Impl {
  cudnnHandle_t handle = nullptr;
  bool allow_tf32 = false;
  std::map<PlanKey, Plan> plans;
};

CudnnState::CudnnState(cudaStream_t stream, bool allow_tf32) : impl_(std::make_unique<Impl>()) {
  impl_->allow_tf32 = allow_tf32;
  CUDNN_CHECK(cudnnCreate(&impl_->handle));
  const cudnnStatus_t st = cudnnSetStream(impl_->handle, stream);
  if (st != CUDNN_STATUS_SUCCESS) {
    cudnnDestroy(impl_->handle);
    CUDNN_CHECK(st);
  }
}

CudnnState::~CudnnState() {
  if (impl_ && impl_->handle) cudnnDestroy(impl_->handle);
}

std::string cudnn_version_string() {
  const size_t v = cudnnGetVersion();  // major*10000 + minor*100 + patch since cuDNN 9
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

struct ConvOp::Impl {
  CudaContext& ctx;
  Shape3 in;
  int K;
  Window win;
  int Ho = 0, Wo = 0;
  int max_slice = 1;  // images per call so that no tensor passes INT_MAX elements
  cudnnTensorDescriptor_t x_desc = nullptr, y_desc = nullptr;
  cudnnFilterDescriptor_t w_desc = nullptr;
  cudnnConvolutionDescriptor_t conv_desc = nullptr;
  int desc_n = -1;  // batch size the tensor descriptors describe now

  Impl(CudaContext& c, Shape3 i, int K_, Window w_) : ctx(c), in(i), K(K_), win(w_) {
    if (in.c <= 0 || in.h <= 0 || in.w <= 0 || K <= 0 || win.k <= 0 || win.stride <= 0 || win.pad < 0 ||
        in.h + 2 * win.pad < win.k || in.w + 2 * win.pad < win.k)
      throw InternalError("cuDNN convolution: no output for " + shape_text());
    Ho = win.out(in.h);
    Wo = win.out(in.w);
    const long widest = std::max<long>(static_cast<long>(in.size()), static_cast<long>(K) * Ho * Wo);
    max_slice = static_cast<int>(std::max<long>(1, INT_MAX / widest));
    try {
      make_descriptors();
    } catch (...) {
      release();  // the destructor does not run for a constructor that throws
      throw;
    }
  }

  ~Impl() { release(); }

  std::string shape_text() const {
    return "input " + std::to_string(in.c) + "x" + std::to_string(in.h) + "x" + std::to_string(in.w) + ", " +
           std::to_string(K) + " filters " + std::to_string(win.k) + "x" + std::to_string(win.k) + " stride " +
           std::to_string(win.stride) + " pad " + std::to_string(win.pad);
  }

  void make_descriptors() {
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&x_desc));
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&y_desc));
    CUDNN_CHECK(cudnnCreateFilterDescriptor(&w_desc));
    CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&conv_desc));
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(w_desc, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, K, in.c, win.k, win.k));
    // PyTorch's and the CPU twin's "convolution" is a cross-correlation: no kernel flip. The same zero padding and
    // stride in both directions, no dilation.
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(conv_desc, win.pad, win.pad, win.stride, win.stride, 1, 1,
                                                CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    // Every buffer is sized from Window::out; should cuDNN see another output size, its passes would read and write
    // outside them.
    set_batch(1);
    int n = 0, c = 0, h = 0, w = 0;
    CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(conv_desc, x_desc, w_desc, &n, &c, &h, &w));
    if (n != 1 || c != K || h != Ho || w != Wo)
      throw InternalError("cuDNN convolution: for " + shape_text() + " cuDNN's output is " + std::to_string(c) + "x" +
                          std::to_string(h) + "x" + std::to_string(w) + ", not the " + std::to_string(K) + "x" +
                          std::to_string(Ho) + "x" + std::to_string(Wo) + " of Window::out that the network is "
                          "sized for");
  }

  void release() {
    if (conv_desc) cudnnDestroyConvolutionDescriptor(conv_desc);
    if (w_desc) cudnnDestroyFilterDescriptor(w_desc);
    if (y_desc) cudnnDestroyTensorDescriptor(y_desc);
    if (x_desc) cudnnDestroyTensorDescriptor(x_desc);
    conv_desc = nullptr;
    w_desc = nullptr;
    y_desc = nullptr;
    x_desc = nullptr;
  }

  void set_batch(int n) {
    if (n == desc_n) return;
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(x_desc, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, in.c, in.h, in.w));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(y_desc, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, n, K, Ho, Wo));
    desc_n = n;
  }

  // Workspace for `algo` of `pass` at the descriptors' current batch, with `math` set on the descriptor.
  cudnnStatus_t workspace_size(Pass pass, int algo, cudnnMathType_t math, size_t* bytes) {
    CUDNN_CHECK(cudnnSetConvolutionMathType(conv_desc, math));
    cudnnHandle_t h = ctx.cudnn().impl().handle;
    switch (pass) {
      case Pass::Forward:
        return cudnnGetConvolutionForwardWorkspaceSize(h, x_desc, w_desc, conv_desc, y_desc,
                                                       static_cast<cudnnConvolutionFwdAlgo_t>(algo), bytes);
      case Pass::BackwardData:
        return cudnnGetConvolutionBackwardDataWorkspaceSize(h, w_desc, y_desc, conv_desc, x_desc,
                                                            static_cast<cudnnConvolutionBwdDataAlgo_t>(algo), bytes);
      case Pass::BackwardFilter:
        return cudnnGetConvolutionBackwardFilterWorkspaceSize(h, x_desc, y_desc, conv_desc, w_desc,
                                                              static_cast<cudnnConvolutionBwdFilterAlgo_t>(algo), bytes);
    }
    return CUDNN_STATUS_BAD_PARAM;
  }

  // The heuristics' ranked suggestions for `pass` at the descriptors' current batch.
  std::vector<Candidate> suggestions(Pass pass) {
    cudnnHandle_t h = ctx.cudnn().impl().handle;
    CUDNN_CHECK(cudnnSetConvolutionMathType(conv_desc, ctx.allow_tf32() ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH));
    int max_count = 0, returned = 0;
    switch (pass) {
      case Pass::Forward: {
        CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(h, &max_count));
        std::vector<cudnnConvolutionFwdAlgoPerf_t> perf(std::max(1, max_count));
        CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, x_desc, w_desc, conv_desc, y_desc,
                                                           static_cast<int>(perf.size()), &returned, perf.data()));
        return candidates_of(perf, returned);
      }
      case Pass::BackwardData: {
        CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(h, &max_count));
        std::vector<cudnnConvolutionBwdDataAlgoPerf_t> perf(std::max(1, max_count));
        CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, w_desc, y_desc, conv_desc, x_desc,
                                                                static_cast<int>(perf.size()), &returned, perf.data()));
        return candidates_of(perf, returned);
      }
      case Pass::BackwardFilter: {
        CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(h, &max_count));
        std::vector<cudnnConvolutionBwdFilterAlgoPerf_t> perf(std::max(1, max_count));
        CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, x_desc, y_desc, conv_desc, w_desc,
                                                                  static_cast<int>(perf.size()), &returned, perf.data()));
        return candidates_of(perf, returned);
      }
    }
    return {};
  }

  // Picks a plan for the descriptors' current batch: the heuristics' order, deterministic algorithms first, only
  // those that report success and fit the workspace limit. Without TF32 every candidate runs with FMA math (FP32
  // data has an FMA implementation of every legacy algorithm); tensor-op-only suggestions are skipped.
  Plan choose(Pass pass) {
    const std::vector<Candidate> cands = suggestions(pass);
    const bool tf32 = ctx.allow_tf32();
    for (int strict = 1; strict >= 0; --strict)
      for (const Candidate& c : cands) {
        if (c.status != CUDNN_STATUS_SUCCESS) continue;
        if (strict && c.determinism != CUDNN_DETERMINISTIC) continue;
        if (!tf32 && c.math != CUDNN_FMA_MATH && c.math != CUDNN_DEFAULT_MATH) continue;
        const cudnnMathType_t math = tf32 ? c.math : CUDNN_FMA_MATH;
        size_t ws = 0;
        if (workspace_size(pass, c.algo, math, &ws) != CUDNN_STATUS_SUCCESS || ws > ctx.workspace_limit()) continue;
        return {c.algo, math};
      }
    // Nothing suitable suggested: these support every shape with little or no workspace (and are deterministic).
    switch (pass) {
      case Pass::Forward: return {CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_FMA_MATH};
      case Pass::BackwardData: return {CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, CUDNN_FMA_MATH};
      case Pass::BackwardFilter: return {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, CUDNN_FMA_MATH};
    }
    return {};
  }

  PlanKey key(Pass pass, long batch_key) const {
    return {static_cast<int>(pass), in.c, in.h, in.w, K, win.k, win.stride, win.pad, batch_key};
  }

  void log_plan(Pass pass, long batch_key, const Plan& p) const {
    log_choice(pass_name(pass), in.c, in.h, in.w, K, win, batch_key, p.algo, algo_name(pass, p.algo),
               p.math == CUDNN_FMA_MATH || p.math == CUDNN_DEFAULT_MATH);
  }

  // Sets the descriptors to batch n and returns the plan and its workspace size for it.
  Plan plan_and_size(Pass pass, int n, size_t* ws_bytes) {
    auto& plans = ctx.cudnn().impl().plans;
    const long bucket = batch_bucket(n);
    auto it = plans.find(key(pass, bucket));
    if (it == plans.end()) {
      set_batch(static_cast<int>(std::min<long>(bucket, max_slice)));
      it = plans.emplace(key(pass, bucket), choose(pass)).first;
      log_plan(pass, bucket, it->second);
    }
    set_batch(n);
    Plan plan = it->second;
    if (workspace_size(pass, plan.algo, plan.math, ws_bytes) != CUDNN_STATUS_SUCCESS) {
      // The bucket's algorithm refuses this exact batch: choose for the exact shape.
      auto exact = plans.find(key(pass, -static_cast<long>(n)));
      if (exact == plans.end()) {
        exact = plans.emplace(key(pass, -static_cast<long>(n)), choose(pass)).first;
        log_plan(pass, -static_cast<long>(n), exact->second);
      }
      plan = exact->second;
      CUDNN_CHECK(workspace_size(pass, plan.algo, plan.math, ws_bytes));
    }
    return plan;
  }

  // The same, with the context's workspace grown to fit.
  Plan plan_for(Pass pass, int n, void** ws, size_t* ws_bytes) {
    const Plan plan = plan_and_size(pass, n, ws_bytes);
    *ws = ctx.workspace(*ws_bytes);
    return plan;
  }
};

ConvOp::ConvOp(CudaContext& ctx, Shape3 in, int K, Window win) : impl_(std::make_unique<Impl>(ctx, in, K, win)) {}

ConvOp::~ConvOp() = default;

size_t ConvOp::workspace_bound(int max_n, bool weight_gradients) {
  Impl& m = *impl_;
  if (max_n <= 0) return 0;
  const int top = std::min(max_n, m.max_slice);
  size_t most = 0;
  for (long b = 1;; b <<= 1) {
    const int n = static_cast<int>(std::min<long>(b, top));
    for (Pass pass : {Pass::Forward, Pass::BackwardData, Pass::BackwardFilter}) {
      if (pass == Pass::BackwardFilter && !weight_gradients) continue;
      size_t bytes = 0;
      m.plan_and_size(pass, n, &bytes);
      most = std::max(most, bytes);
    }
    if (n == top) break;
  }
  return most;
}

void ConvOp::forward(const float* x, const float* w, float* y, int n) {
  Impl& m = *impl_;
  const float one = 1.0f, zero = 0.0f;
  for (int first = 0; first < n; first += m.max_slice) {
    const int count = std::min(m.max_slice, n - first);
    void* ws = nullptr;
    size_t ws_bytes = 0;
    const Plan p = m.plan_for(Pass::Forward, count, &ws, &ws_bytes);
    CUDNN_CHECK(cudnnConvolutionForward(m.ctx.cudnn().impl().handle, &one, m.x_desc,
                                        x + static_cast<size_t>(first) * m.in.size(), m.w_desc, w, m.conv_desc,
                                        static_cast<cudnnConvolutionFwdAlgo_t>(p.algo), ws, ws_bytes, &zero,
                                        m.y_desc, y + static_cast<size_t>(first) * m.K * m.Ho * m.Wo));
    m.ctx.after_op(pass_name(Pass::Forward));
  }
}

void ConvOp::backward_data(const float* dy, const float* w, float* dx, int n) {
  Impl& m = *impl_;
  const float one = 1.0f, zero = 0.0f;
  for (int first = 0; first < n; first += m.max_slice) {
    const int count = std::min(m.max_slice, n - first);
    void* ws = nullptr;
    size_t ws_bytes = 0;
    const Plan p = m.plan_for(Pass::BackwardData, count, &ws, &ws_bytes);
    CUDNN_CHECK(cudnnConvolutionBackwardData(m.ctx.cudnn().impl().handle, &one, m.w_desc, w, m.y_desc,
                                             dy + static_cast<size_t>(first) * m.K * m.Ho * m.Wo, m.conv_desc,
                                             static_cast<cudnnConvolutionBwdDataAlgo_t>(p.algo), ws, ws_bytes, &zero,
                                             m.x_desc, dx + static_cast<size_t>(first) * m.in.size()));
    m.ctx.after_op(pass_name(Pass::BackwardData));
  }
}

void ConvOp::backward_filter(const float* x, const float* dy, float* dw, int n) {
  Impl& m = *impl_;
  const float one = 1.0f, zero = 0.0f;
  if (n == 0) {
    // An empty batch has a zero gradient; cuDNN rejects N = 0.
    CUDA_CHECK(cudaMemsetAsync(dw, 0, sizeof(float) * m.K * m.in.c * m.win.k * m.win.k, m.ctx.stream()));
    return;
  }
  for (int first = 0; first < n; first += m.max_slice) {
    const int count = std::min(m.max_slice, n - first);
    void* ws = nullptr;
    size_t ws_bytes = 0;
    const Plan p = m.plan_for(Pass::BackwardFilter, count, &ws, &ws_bytes);
    // Later slices accumulate into the first one's result.
    CUDNN_CHECK(cudnnConvolutionBackwardFilter(m.ctx.cudnn().impl().handle, &one, m.x_desc,
                                               x + static_cast<size_t>(first) * m.in.size(), m.y_desc,
                                               dy + static_cast<size_t>(first) * m.K * m.Ho * m.Wo, m.conv_desc,
                                               static_cast<cudnnConvolutionBwdFilterAlgo_t>(p.algo), ws, ws_bytes,
                                               first == 0 ? &zero : &one, m.w_desc, dw));
    m.ctx.after_op(pass_name(Pass::BackwardFilter));
  }
}

}  // namespace nudge::cuda
