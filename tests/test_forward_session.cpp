// Forward sessions (host/core/forward_session.h): the CPU backend's, which keeps every base's activations and
// recomputes only the rectangle a candidate's change reaches, must give exactly the logits of a full forward pass
// (equality is the promise: every CPU output is computed on its own, host/cpu/column_gemm.h), through many rounds of
// kept and rejected candidates, on the reference model and on padded, strided, average-pooled and multi-channel
// architectures. Then the Square attack gives the same files with it as with the plain session any backend has.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "attacks.h"
#include "backend.h"
#include "cpu_backend.h"
#include "delegating_backend.h"
#include "forward_session.h"
#include "model.h"
#include "reference_math.h"

namespace nudge {
namespace {

std::vector<float> full_logits(Backend& backend, const std::vector<float>& x, int n, int K) {
  std::vector<float> z(static_cast<size_t>(n) * K);
  backend.logit_backprop(x.data(), n, [&](int first, int m, const float* logits, float*) {
    std::copy_n(logits, static_cast<size_t>(m) * K, z.data() + static_cast<size_t>(first) * K);
  }, nullptr);
  return z;
}

TEST(ForwardSession, CpuCandidatesGiveExactlyTheLogitsOfAFullPass) {
  uint32_t seed = 700;
  for (const char* text : {Architecture::reference_string(), "1x28x28:conv8k3p1,relu,pool2,conv16k3p1,relu,pool2,flatten,dense32,relu,dense10",
                           "1x28x28:conv16k4s2p1,relu,conv32k4s2p1,relu,flatten,dense32,relu,dense10",
                           "1x28x28:conv8k5,relu,pool3s2p1,conv8k3p1,relu,avgpool2,flatten,dense10",
                           "3x11x9:conv5k3,pool2,relu,conv4k2,relu,flatten,dense7"}) {
    SCOPED_TRACE(text);
    const Architecture arch = Architecture::parse(text);
    const Model model = ref::random_model(arch, ++seed);
    auto backend = make_cpu_backend();
    backend->load_model(model);
    const int n = 6, D = arch.input.size(), K = arch.num_classes(), H = arch.input.h, W = arch.input.w;
    std::mt19937 rng(++seed);
    std::uniform_real_distribution<float> u(0.0f, 1.0f);
    std::vector<float> bases(static_cast<size_t>(n) * D);
    for (float& v : bases) v = u(rng);
    auto session = backend->begin_forward_session(n, K);
    std::vector<float> z(static_cast<size_t>(n) * K);
    session->set_bases(bases.data(), z.data());
    ASSERT_EQ(0, std::memcmp(z.data(), full_logits(*backend, bases, n, K).data(), z.size() * sizeof(float))) << "bases";
    for (int round = 0; round < 40; ++round) {
      // Candidates for some slots, in a shuffled order: a random rectangle of random size changed in every channel;
      // now and then nothing changed, or the whole image.
      std::vector<int> slots(n);
      for (int i = 0; i < n; ++i) slots[i] = i;
      std::shuffle(slots.begin(), slots.end(), rng);
      slots.resize(1 + rng() % n);
      const int m = static_cast<int>(slots.size());
      std::vector<float> cand(static_cast<size_t>(m) * D);
      for (int i = 0; i < m; ++i) {
        float* c = cand.data() + static_cast<size_t>(i) * D;
        std::copy_n(bases.data() + static_cast<size_t>(slots[i]) * D, D, c);
        const int kind = static_cast<int>(rng() % 8);
        if (kind == 0) continue;
        int h0 = 0, h1 = H, w0 = 0, w1 = W;
        if (kind > 1) {
          h0 = static_cast<int>(rng() % H);
          h1 = std::min(H, h0 + 1 + static_cast<int>(rng() % 5));
          w0 = static_cast<int>(rng() % W);
          w1 = std::min(W, w0 + 1 + static_cast<int>(rng() % 5));
        }
        for (int ch = 0; ch < arch.input.c; ++ch)
          for (int h = h0; h < h1; ++h)
            for (int w = w0; w < w1; ++w) c[(ch * H + h) * W + w] = u(rng);
      }
      std::vector<float> got(static_cast<size_t>(m) * K);
      session->evaluate(slots.data(), cand.data(), m, got.data());
      const std::vector<float> want = full_logits(*backend, cand, m, K);
      ASSERT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * sizeof(float))) << "round " << round;
      std::vector<uint8_t> keep(m);
      for (int i = 0; i < m; ++i) {
        keep[i] = rng() % 3 == 0;
        if (keep[i]) std::copy_n(cand.data() + static_cast<size_t>(i) * D, D, bases.data() + static_cast<size_t>(slots[i]) * D);
      }
      session->resolve(keep.data());
    }
    // After the rounds, every base is still exactly what the session holds.
    std::vector<int> all(n);
    for (int i = 0; i < n; ++i) all[i] = i;
    std::vector<float> again(static_cast<size_t>(n) * K);
    session->evaluate(all.data(), bases.data(), n, again.data());
    EXPECT_EQ(0, std::memcmp(again.data(), full_logits(*backend, bases, n, K).data(), again.size() * sizeof(float)));
    session->resolve(std::vector<uint8_t>(n, 0).data());
  }
}

// The attack end to end: Square through the CPU session and through the plain one (a delegating backend has only
// the default) leaves the same record, entry for entry and image for image.
TEST(ForwardSession, SquareIsTheSameWithEitherSession) {
  const Architecture arch = Architecture::reference();
  const Model model = ref::random_model(arch, 812);
  auto cpu = make_cpu_backend();
  cpu->load_model(model);
  testing_support::DelegatingBackend plain;
  plain.load_model(model);
  const int n = 12, D = arch.input.size(), K = arch.num_classes();
  AttackSet set;
  set.D = D;
  set.K = K;
  set.norm = Norm::Linf;
  std::mt19937 rng(813);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  set.x0.resize(static_cast<size_t>(n) * D);
  for (float& v : set.x0) v = u(rng);
  const std::vector<float> z = full_logits(*cpu, set.x0, n, K);
  for (int i = 0; i < n; ++i) {
    set.point.push_back(static_cast<uint32_t>(100 + i));
    set.eps.push_back(0.05f);
    // The label is the clean prediction, so that every entry starts robust and Square runs its whole budget.
    set.label.push_back(static_cast<int>(std::max_element(z.begin() + i * K, z.begin() + (i + 1) * K) - (z.begin() + i * K)));
  }
  SquareConfig cfg;
  cfg.queries = 300;
  std::vector<int> todo(n);
  for (int i = 0; i < n; ++i) todo[i] = i;
  AttackRecord a, b;
  a.resize(n, D);
  b.resize(n, D);
  const long qa = run_square(*cpu, set, todo, cfg, 28, 28, 5, a, nullptr);
  const long qb = run_square(plain, set, todo, cfg, 28, 28, 5, b, nullptr);
  EXPECT_EQ(qa, qb);
  EXPECT_EQ(a.broken, b.broken);
  EXPECT_EQ(a.step, b.step);
  EXPECT_EQ(0, std::memcmp(a.adv.data(), b.adv.data(), a.adv.size() * sizeof(float)));
}

}  // namespace
}  // namespace nudge
