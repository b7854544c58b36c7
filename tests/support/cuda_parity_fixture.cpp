#include "cuda_parity_fixture.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <stdexcept>
#include <string>

#include "architecture.h"
#include "cpu_backend.h"
#include "cpu_layers.h"
#include "optimize_types.h"

#if NUDGE_HAVE_CUDA
#include "cuda_backend.h"
#endif

namespace nudge::test {

#if NUDGE_HAVE_CUDA

Model test_model(uint64_t seed, const Architecture& arch) {
  Model m = Model::glorot(arch, seed);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> d(-0.1f, 0.1f);
  const auto specs = m.arch.params();
  for (size_t i = 0; i < specs.size(); ++i)
    if (specs[i].is_bias)
      for (float& b : m.params[i].data) b = d(rng);
  return m;
}

bool away_from_ties(const Model& m, const float* x, double margin) {
  const Architecture& a = m.arch;
  std::vector<float> cur(x, x + a.input.size()), next;
  size_t p = 0;
  auto scale_of = [](const std::vector<float>& v) {
    float s = 0;
    for (float f : v) s = std::max(s, std::fabs(f));
    return static_cast<double>(s);
  };
  for (const LayerSpec& l : a.layers) {
    next.assign(l.out.size(), 0.0f);
    switch (l.kind) {
      case LayerKind::Conv:
        cpu::conv2d_forward(cur.data(), 1, l.in, m.params[p].ptr(), m.params[p + 1].ptr(), l.out_channels,
                            l.window(), next.data());
        p += 2;
        break;
      case LayerKind::Dense:
        cpu::dense_forward(cur.data(), 1, l.in.size(), m.params[p].ptr(), m.params[p + 1].ptr(), l.out_channels,
                           next.data());
        p += 2;
        break;
      case LayerKind::Relu: {
        const double lim = margin * scale_of(cur);
        for (float v : cur)
          if (std::fabs(v) < lim) return false;
        cpu::relu_forward(cur.data(), cur.size(), next.data());
        break;
      }
      case LayerKind::MaxPool: {
        const double lim = margin * scale_of(cur);
        const Window win = l.window();
        for (int c = 0; c < l.in.c; ++c)
          for (int oh = 0; oh < l.out.h; ++oh)
            for (int ow = 0; ow < l.out.w; ++ow) {
              float top = -INFINITY, second = -INFINITY;
              for (int i = 0; i < win.k; ++i)
                for (int j = 0; j < win.k; ++j) {
                  const int h = oh * win.stride - win.pad + i, w = ow * win.stride - win.pad + j;
                  if (h < 0 || h >= l.in.h || w < 0 || w >= l.in.w) continue;  // padding: never a candidate
                  const float v = cur[(static_cast<size_t>(c) * l.in.h + h) * l.in.w + w];
                  if (v > top) {
                    second = top;
                    top = v;
                  } else if (v > second) {
                    second = v;
                  }
                }
              if (!(top == 0 && second == 0) && top - second < lim) return false;
            }
        std::vector<int32_t> idx(l.out.size());
        cpu::maxpool_forward(cur.data(), 1, l.in, win, next.data(), idx.data());
        break;
      }
      case LayerKind::AvgPool: cpu::avgpool_forward(cur.data(), 1, l.in, l.window(), next.data()); break;
      case LayerKind::Flatten: next = cur; break;
      case LayerKind::BatchNorm:
      case LayerKind::Dropout: return false;  // the GPU runs models folded (model_fold.h): not a parity case
    }
    cur.swap(next);
  }
  std::vector<float> z = cur;
  std::sort(z.begin(), z.end());
  const double lim = margin * scale_of(z);
  for (size_t j = 1; j < z.size(); ++j)
    if (z[j] - z[j - 1] < lim) return false;
  return true;
}

std::vector<float> clean_images(const Model& m, int n, std::mt19937_64& rng) {
  const int D = m.arch.input.size();
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> out(static_cast<size_t>(n) * D), img(D);
  int attempts = 0;
  for (int i = 0; i < n;) {
    if (++attempts > 100 * n + 100) throw std::runtime_error("clean_images: could not draw images away from ties");
    for (float& v : img) v = u(rng);
    if (!away_from_ties(m, img.data(), 1e-5)) continue;
    std::copy(img.begin(), img.end(), out.begin() + static_cast<size_t>(i) * D);
    ++i;
  }
  return out;
}

double max_abs(const std::vector<float>& v) {
  double s = 0;
  for (float f : v) s = std::max(s, static_cast<double>(std::fabs(f)));
  return s;
}

void CudaBackendParity::SetUp() {
  NUDGE_REQUIRE_CUDA_DEVICE();
  const std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
  rng_.seed(test::test_seed() ^ std::hash<std::string>{}(name));
  model_ = test_model(rng_(), architecture());
  cpu_ = make_cpu_backend();
  gpu_ = make_cuda_backend();
  std::printf("[   INFO   ] %s vs %s\n", gpu_->name().c_str(), cpu_->name().c_str());
  cpu_->load_model(model_);
  gpu_->load_model(model_);
  D_ = model_.arch.input.size();
  K_ = model_.arch.num_classes();
}

void CudaBackendParity::make_targets(int n, std::vector<float>* dist, std::vector<int32_t>* kind,
                                     std::vector<int32_t>* cls) {
  dist->assign(static_cast<size_t>(n) * K_, 0.0f);
  kind->resize(n);
  cls->resize(n);
  std::uniform_int_distribution<int> c(0, K_ - 1);
  for (int i = 0; i < n; ++i) {
    (*kind)[i] = i % 3;
    (*cls)[i] = c(rng_);
    float* t = dist->data() + static_cast<size_t>(i) * K_;
    if ((*kind)[i] == static_cast<int>(TargetKind::OneHot)) t[(*cls)[i]] = 1.0f;
    if ((*kind)[i] == static_cast<int>(TargetKind::Soft)) {
      t[(*cls)[i]] = 0.6f;
      t[((*cls)[i] + 1) % K_] = 0.3f;
      t[((*cls)[i] + 4) % K_] = 0.1f;
    }
  }
}

#endif  // NUDGE_HAVE_CUDA

}  // namespace nudge::test
