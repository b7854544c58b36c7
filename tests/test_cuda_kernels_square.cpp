// Square's kernels (kernels/square.cu, square_l2.cu) against the host lanes running the same row code
// (host/core/square_rows.h, square_l2_rows.h): each kernel on fresh random rows of a shuffled partial list, with
// outputs poisoned and guarded. Every output must match bit for bit: the L-inf rows do no arithmetic beyond
// clamp01(x0 +- eps) and a logit difference, and the L2 rows add their lane partials in lane order on both and keep
// nvcc from contracting products into FMAs (nudge_dmul, nudge_dadd). (Whole runs: tests/test_cuda_attack_runs.cpp.)
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "apgd_rows.h"
#include "cuda_kernel_fixtures.h"
#include "cuda_test_util.h"
#include "optimize_math.h"
#include "square_l2_rows.h"
#include "square_rows.h"
#include "attacks.h"

#if NUDGE_HAVE_CUDA
#include "square.cuh"
#endif

namespace nudge {
namespace {

#if NUDGE_HAVE_CUDA

using test::all_equal;
using test::CudaKernels;
using test::GuardedBuffer;

constexpr int kH = 28, kW = 28, kD = kH * kW, kK = 10;

struct SquareCase {
  int entries;
  std::vector<float> x0, best, eps;
  std::vector<int32_t> label;
  std::vector<uint32_t> point;
  std::vector<SquareEntry> entry;
};

struct DeviceSquare {
  GuardedBuffer<float> x0, best, eps;
  GuardedBuffer<int32_t> label;
  GuardedBuffer<uint32_t> point;
  GuardedBuffer<SquareEntry> entry;
  cuda::SquareState s;
  explicit DeviceSquare(const SquareCase& c)
      : x0(c.x0), best(c.best), eps(c.eps), label(c.label), point(c.point), entry(c.entry) {
    s.entries = c.entries;
    s.H = kH;
    s.W = kW;
    s.K = kK;
    s.x0 = x0.get();
    s.label = label.get();
    s.eps = eps.get();
    s.point = point.get();
    s.best = best.get();
    s.entry = entry.get();
    s.seed = 31;
    s.attack = 4;
    s.restart = 2;
  }
  ::testing::AssertionResult guards() const {
    for (const auto* b : {&x0, &best, &eps})
      if (!b->guard_intact()) return ::testing::AssertionFailure() << "a float state array was overrun";
    if (!entry.guard_intact() || !label.guard_intact() || !point.guard_intact())
      return ::testing::AssertionFailure() << "an entry array was overrun";
    return ::testing::AssertionSuccess();
  }
};

std::vector<float> entry_floats(const std::vector<SquareEntry>& v) {
  std::vector<float> out;
  for (const SquareEntry& e : v)
    out.insert(out.end(), {e.margin, static_cast<float>(e.done), static_cast<float>(e.broken_step)});
  return out;
}

class CudaSquareKernels : public CudaKernels {
 protected:
  // x0 with black and white pixels (where the clip and the sign flip matter) among grey ones; best images a start
  // away; entry states with margins near 0 (so that accepted, rejected and breaking rows all occur), some done.
  SquareCase make_case(int entries) {
    SquareCase c;
    c.entries = entries;
    const size_t md = static_cast<size_t>(entries) * kD;
    c.x0 = uniform(md, 0.0f, 1.0f);
    for (size_t i = 0; i < md; ++i)
      if (randint(0, 3) == 0) c.x0[i] = randint(0, 1) ? 1.0f : 0.0f;
    for (int e = 0; e < entries; ++e) {
      c.eps.push_back(randint(0, 1) ? 0.3f : 0.1f);
      c.label.push_back(randint(0, kK - 1));
      c.point.push_back(static_cast<uint32_t>(randint(0, 100000)));
      SquareEntry s{};
      s.margin = uniform01() * 2 - 0.5f;
      s.done = randint(0, 4) == 0;
      s.broken_step = s.done ? randint(0, 50) : 0;
      c.entry.push_back(s);
    }
    c.best.resize(md);
    for (size_t i = 0; i < md; ++i) {
      const float e = c.eps[i / kD];
      c.best[i] = clamp01(c.x0[i] + (randint(0, 1) ? e : -e));
    }
    return c;
  }
};

TEST_F(CudaSquareKernels, StartIsTheHostRowsStart) {
  SquareCase c = make_case(53);
  DeviceSquare d(c);
  d.best.poison();
  cuda::square_start_cuda(d.s, 0);
  for (int e = 0; e < c.entries; ++e) {
    HostLanes b;
    const ApgdKey k{31, 4, 2, c.point[e]};
    square_linf_start_row(b, k, c.eps[e], c.x0.data() + e * kD, c.best.data() + e * kD, kH, kW);
  }
  EXPECT_TRUE(all_equal("start", d.best.download(), c.best));
  EXPECT_TRUE(
      all_equal("entries", entry_floats(d.entry.download()), entry_floats(std::vector<SquareEntry>(c.entries))));
  EXPECT_TRUE(d.guards());
}

TEST_F(CudaSquareKernels, ProposeAndAcceptAreTheHostRows) {
  int kinds[4] = {0, 0, 0, 0};  // rows accepted, rejected, broken; proposals whose drawn sign changed nothing
  for (int side : {1, 4, 13, kH - 1}) {
    SCOPED_TRACE("side " + std::to_string(side));
    const int entries = 61, count = 45, it = 3 + side;
    SquareCase c = make_case(entries);
    DeviceSquare d(c);
    const std::vector<int32_t> list = sample(count, entries);
    GuardedBuffer<int32_t> list_d(list);
    GuardedBuffer<float> cand_d(static_cast<size_t>(count) * kD);
    GuardedBuffer<uint8_t> keep_d(count);
    cand_d.poison();
    cuda::SquareRows r;
    r.count = count;
    r.list = list_d.get();
    r.cand = cand_d.get();
    r.keep = keep_d.get();

    // Done entries' rows are skipped: they must keep the poison, which is what the buffer holds before the launch.
    std::vector<float> cand = cand_d.download();
    cuda::square_propose_cuda(d.s, r, it, side, 0);
    std::vector<int> flags(kRowLanes + 1);
    const std::vector<float> got_cand = cand_d.download();
    for (int i = 0; i < count; ++i) {
      const int e = list[i];
      if (c.entry[e].done) continue;
      // Would the drawn sign change nothing (the flip's branch)? Side 1 on black and white pixels makes it common.
      const ApgdKey k{31, 4, 2, c.point[e]};
      const int vh = square_corner(attack_draw(31, 4, 2, c.point[e], c.eps[e], it, 0), kH, side);
      const int vw = square_corner(attack_draw(31, 4, 2, c.point[e], c.eps[e], it, 1), kW, side);
      const float sign = attack_draw(31, 4, 2, c.point[e], c.eps[e], it, 2) < 0.5f ? -1.0f : 1.0f;
      bool unchanged = true;
      for (int h = vh; h < vh + side; ++h)
        for (int w = vw; w < vw + side; ++w) {
          const size_t q = static_cast<size_t>(e) * kD + h * kW + w;
          unchanged &= clamp01(c.x0[q] + sign * c.eps[e]) == c.best[q];
        }
      kinds[3] += unchanged;
      HostLanes b;
      square_linf_propose_row(b, flags.data(), k, c.eps[e], it, side,
                              c.x0.data() + e * kD, c.best.data() + e * kD, cand.data() + static_cast<size_t>(i) * kD,
                              kH, kW);
    }
    EXPECT_TRUE(all_equal("candidates", got_cand, cand));

    // Logits whose margins fall on both sides of each entry's kept margin, some below 0.
    std::vector<float> logits = normal(static_cast<size_t>(count) * kK, 0.3f);
    for (int i = 0; i < count; ++i) {
      const int e = list[i];
      float* z = logits.data() + static_cast<size_t>(i) * kK;
      z[c.label[e]] = z[argmax_except(z, kK, c.label[e])] + c.entry[e].margin + (uniform01() - 0.5f);
    }
    GuardedBuffer<float> logits_d(logits);
    r.logits = logits_d.get();
    cuda::square_accept_cuda(d.s, r, it, 0);
    std::vector<uint8_t> keep(count);
    for (int i = 0; i < count; ++i) {
      const int e = list[i];
      const float margin = attack_margin(logits.data() + static_cast<size_t>(i) * kK, kK, c.label[e]);
      bool take = false;
      const SquareEntry next = square_accept_entry(c.entry[e], margin, it, &take);
      if (!c.entry[e].done) kinds[take ? 0 : 1]++, kinds[2] += next.done;
      HostLanes b;
      square_accept_row(b, &c.entry[e], margin, it, cand.data() + static_cast<size_t>(i) * kD, c.best.data() + e * kD,
                        kD, &keep[i]);
    }
    EXPECT_TRUE(all_equal("entries", entry_floats(d.entry.download()), entry_floats(c.entry)));
    EXPECT_TRUE(all_equal("keep", keep_d.download(), keep));
    EXPECT_TRUE(all_equal("best", d.best.download(), c.best));
    EXPECT_TRUE(d.guards());
    EXPECT_TRUE(cand_d.guard_intact());
    EXPECT_TRUE(keep_d.guard_intact());
    EXPECT_TRUE(logits_d.guard_intact());
  }
  EXPECT_GT(kinds[0], 0) << "no candidate was accepted";
  EXPECT_GT(kinds[1], 0) << "no candidate was rejected";
  EXPECT_GT(kinds[2], 0) << "no entry broke";
  EXPECT_GT(kinds[3], 0) << "no proposal took the sign flip";
}

TEST_F(CudaSquareKernels, AcceptAtTheStartTakesEveryEntrysMargin) {
  const int entries = 70;
  SquareCase c = make_case(entries);
  for (SquareEntry& s : c.entry) s = SquareEntry{};  // as the start kernel leaves them
  DeviceSquare d(c);
  std::vector<int32_t> identity(entries);
  for (int e = 0; e < entries; ++e) identity[e] = e;
  const std::vector<float> logits = normal(static_cast<size_t>(entries) * kK, 1.0f);
  GuardedBuffer<int32_t> list_d(identity);
  GuardedBuffer<float> logits_d(logits);
  GuardedBuffer<uint8_t> keep_d(entries);
  cuda::SquareRows r;
  r.count = entries;
  r.list = list_d.get();
  r.logits = logits_d.get();
  r.keep = keep_d.get();
  cuda::square_accept_cuda(d.s, r, 0, 0);
  std::vector<uint8_t> keep(entries);
  for (int e = 0; e < entries; ++e) {
    HostLanes b;
    square_accept_row(b, &c.entry[e], attack_margin(logits.data() + e * kK, kK, c.label[e]), 0, nullptr,
                      c.best.data() + e * kD, kD, &keep[e]);
  }
  EXPECT_TRUE(all_equal("entries", entry_floats(d.entry.download()), entry_floats(c.entry)));
  EXPECT_TRUE(all_equal("keep", keep_d.download(), keep));
  EXPECT_TRUE(all_equal("best (unchanged)", d.best.download(), c.best));
  EXPECT_TRUE(d.guards());
}

TEST_F(CudaSquareKernels, L2StartAndProposeAreTheHostRows) {
  const std::vector<double> table = square_l2_pattern_table(kH - 1);
  GuardedBuffer<double> table_d(table);
  std::vector<double> nu(kD), partial(kApgdPartials);
  for (int side : {3, 7, 13, 27}) {
    SCOPED_TRACE("side " + std::to_string(side));
    const int entries = 61, count = 45, it = 3 + side;
    SquareCase c = make_case(entries);
    for (float& e : c.eps) e *= 10;  // L2 radii, 1 and 3
    DeviceSquare d(c);
    d.s.patterns = table_d.get();
    // The start, every entry.
    // The start on buffers of its own, so that the propose below still sees the case's entry states.
    GuardedBuffer<float> start_d(c.best);
    GuardedBuffer<SquareEntry> start_entry_d(c.entry);
    cuda::SquareState st = d.s;
    st.best = start_d.get();
    st.entry = start_entry_d.get();
    start_d.poison();
    cuda::square_l2_start_cuda(st, 0);
    EXPECT_TRUE(all_equal("start entries", entry_floats(start_entry_d.download()),
                          entry_floats(std::vector<SquareEntry>(c.entries))));
    std::vector<float> start(c.best.size());
    for (int e = 0; e < entries; ++e) {
      HostLanes b;
      square_l2_start_row(b, partial.data(), nu.data(), ApgdKey{31, 4, 2, c.point[e]}, c.eps[e],
                          c.x0.data() + e * kD, start.data() + e * kD, kH, kW, table.data());
    }
    EXPECT_TRUE(all_equal("start", start_d.download(), start));
    // The candidates of a partial list, from the case's best images.
    const std::vector<int32_t> list = sample(count, entries);
    GuardedBuffer<int32_t> list_d(list);
    GuardedBuffer<float> cand_d(static_cast<size_t>(count) * kD);
    GuardedBuffer<uint8_t> keep_d(count);
    cand_d.poison();
    cuda::SquareRows r;
    r.count = count;
    r.list = list_d.get();
    r.cand = cand_d.get();
    r.keep = keep_d.get();
    std::vector<float> want = cand_d.download();  // done entries' rows are skipped and keep the poison
    cuda::square_l2_propose_cuda(d.s, r, it, side, 0);
    const std::vector<float> got = cand_d.download();
    for (int i = 0; i < count; ++i) {
      const int e = list[i];
      if (c.entry[e].done) continue;
      HostLanes b;
      square_l2_propose_row(b, partial.data(), nu.data(), ApgdKey{31, 4, 2, c.point[e]}, c.eps[e], it, side,
                            c.x0.data() + e * kD, c.best.data() + e * kD, want.data() + static_cast<size_t>(i) * kD,
                            kH, kW, table.data());
    }
    EXPECT_TRUE(all_equal("candidates", got, want));
    EXPECT_TRUE(d.guards());
    EXPECT_TRUE(start_d.guard_intact());
    EXPECT_TRUE(start_entry_d.guard_intact());
    EXPECT_TRUE(cand_d.guard_intact());
    EXPECT_TRUE(table_d.guard_intact());
  }
}

#else  // !NUDGE_HAVE_CUDA

TEST(CudaSquareKernels, Skipped) { NUDGE_GPU_SKIP("built without CUDA"); }

#endif

}  // namespace
}  // namespace nudge
