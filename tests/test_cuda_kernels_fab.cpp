// FAB-T's kernels (kernels/fab.cu) against the host lanes running the same row code (host/core/fab_rows.h), and the
// device's sort (sort_pairs, kernels/block_lanes.cuh) against std::sort, on fresh random rows, with outputs poisoned
// and guarded. Every output must match bit for bit: (key, idx) is a total order, so both sorts give the one sorted
// sequence; the rows add their lane partials in lane order on both executors, and neither contracts a product into
// an FMA (fab.cu is built with --fmad=false, the host rows with -ffp-contract=off). The pixel counts: 784 (MNIST),
// an odd 300, and 3,072 (CIFAR), whose update scratch (79.9 KB) needs more than the default 48 KiB of shared memory
// per block. (Whole runs: tests/test_cuda_attack_runs.cpp.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "row_lanes.h"
#include "cuda_kernel_fixtures.h"
#include "cuda_test_util.h"
#include "fab_rows.h"
#include "optimize_math.h"

#if NUDGE_HAVE_CUDA
#include "fab.cuh"
#endif

namespace nudge {
namespace {

#if NUDGE_HAVE_CUDA

using test::all_equal;
using test::CudaKernels;
using test::GuardedBuffer;

constexpr int kK = 10;
// Fewer pixels than lanes (idle lanes, one sorted position each), an odd count, MNIST's, and one whose update
// scratch needs more than the default 48 KiB of shared memory.
constexpr int kPixelCounts[] = {100, 300, 784, 3072};

// The host's state of `entries` entries and the device copies the kernels read and write.
struct FabCase {
  int entries, D;
  std::vector<float> x0, x, adv, eps;
  std::vector<int32_t> label, target;
  std::vector<FabEntry> entry;
};

struct DeviceFab {
  GuardedBuffer<float> x0, x, adv, eps;
  GuardedBuffer<int32_t> label, target;
  GuardedBuffer<FabEntry> entry;
  cuda::FabState s;
  explicit DeviceFab(const FabCase& c)
      : x0(c.x0), x(c.x), adv(c.adv), eps(c.eps), label(c.label), target(c.target), entry(c.entry) {
    s.entries = c.entries;
    s.D = c.D;
    s.K = kK;
    s.x0 = x0.get();
    s.label = label.get();
    s.target = target.get();
    s.eps = eps.get();
    s.x = x.get();
    s.adv = adv.get();
    s.entry = entry.get();
  }
  ::testing::AssertionResult guards() const {
    for (const auto* b : {&x0, &x, &adv, &eps})
      if (!b->guard_intact()) return ::testing::AssertionFailure() << "a float state array was overrun";
    if (!entry.guard_intact() || !label.guard_intact() || !target.guard_intact())
      return ::testing::AssertionFailure() << "an entry array was overrun";
    return ::testing::AssertionSuccess();
  }
};

std::vector<int32_t> entry_ints(const std::vector<FabEntry>& v) {
  std::vector<int32_t> out;
  for (const FabEntry& e : v) out.insert(out.end(), {e.broken_step, static_cast<int32_t>(e.done)});
  return out;
}

// What a row of the update test is made to be (by its position in the list, so that every kind occurs).
enum RowKind { kDoneBefore, kBreaks, kTooFar, kReaches, kOutOfReach, kOnThePlane, kRowKinds };

class CudaFabKernels : public CudaKernels {
 protected:
  // x0 with black and white pixels (keys at the box's limits, which tie) among grey ones; the iterates a small step
  // away (half of eps: misclassified rows break unless their eps is cut below the distance).
  FabCase make_case(int entries, int D, Norm norm) {
    FabCase c;
    c.entries = entries;
    c.D = D;
    const size_t md = static_cast<size_t>(entries) * D;
    c.x0 = uniform(md, 0.0f, 1.0f);
    for (size_t i = 0; i < md; ++i)
      if (randint(0, 3) == 0) c.x0[i] = randint(0, 2) ? 0.0f : 1.0f;
    const float eps = norm == Norm::L2 ? 2.0f : 0.3f;
    const float amp = norm == Norm::L2 ? 0.5f * eps / std::sqrt(static_cast<float>(D)) : 0.5f * eps;
    const std::vector<float> step = uniform(md, -amp, amp);
    c.x.resize(md);
    for (size_t i = 0; i < md; ++i) c.x[i] = clamp01(c.x0[i] + step[i]);
    c.adv = uniform(md, 0.0f, 1.0f);
    c.eps.assign(entries, eps);
    for (int e = 0; e < entries; ++e) {
      c.label.push_back(randint(0, kK - 1));
      c.target.push_back((c.label.back() + randint(1, kK - 1)) % kK);
      c.entry.push_back(FabEntry{});
    }
    return c;
  }

  // The update against the host rows at each of `pixel_counts` (below).
  void check_update(const std::vector<int>& pixel_counts);
};

// Keys as the projections make them: rooms in [0, 1], many at exactly 0 or 1 (black and white pixels), L2's +inf of
// coordinates that do not move, a -0.0 among the zeros, and repeats; idx the identity (as the rows pass them) or a
// permutation.
TEST_F(CudaFabKernels, SortPairsIsStdSort) {
  for (int n : {784, 300, 3072, 1024, 8192, 1, 2}) {
    SCOPED_TRACE("n " + std::to_string(n));
    const int rows = 6, cap = fab_sort_capacity(n);
    std::vector<double> key(static_cast<size_t>(rows) * cap, NAN);
    std::vector<int32_t> idx(key.size(), -7);
    std::vector<double> want_key(key);
    std::vector<int32_t> want_idx(idx);
    for (int r = 0; r < rows; ++r) {
      double* k = key.data() + static_cast<size_t>(r) * cap;
      int32_t* j = idx.data() + static_cast<size_t>(r) * cap;
      for (int p = 0; p < n; ++p) {
        const int kind = randint(0, 9);
        k[p] = kind < 3 ? 0.0 : kind < 5 ? 1.0 : kind == 5 && r % 2 ? INFINITY : static_cast<double>(uniform01());
        if (kind == 6) k[p] = k[randint(0, p)];  // a repeat of an earlier key
        j[p] = p;
      }
      k[randint(0, n - 1)] = -0.0;
      if (r >= rows / 2) {
        const std::vector<int32_t> perm = sample(n, n);
        std::copy(perm.begin(), perm.end(), j);
      }
      std::vector<std::pair<double, int32_t>> pairs;
      for (int p = 0; p < n; ++p) pairs.emplace_back(k[p], j[p]);
      std::sort(pairs.begin(), pairs.end());
      for (int p = 0; p < cap; ++p) {
        // The padding sorts last, in position order.
        want_key[static_cast<size_t>(r) * cap + p] = p < n ? pairs[p].first : INFINITY;
        want_idx[static_cast<size_t>(r) * cap + p] = p < n ? pairs[p].second : p;
      }
      // The host executor's sort (identity idx only, as it requires) is std::sort's too.
      if (r < rows / 2) {
        std::vector<double> hk(k, k + n);
        std::vector<int32_t> hj(j, j + n);
        HostLanes b;
        sort_pairs(b, hk.data(), hj.data(), n, cap);
        EXPECT_TRUE(all_equal("host keys", hk,
                              std::vector<double>(want_key.begin() + static_cast<size_t>(r) * cap,
                                                  want_key.begin() + static_cast<size_t>(r) * cap + n)));
        EXPECT_TRUE(all_equal("host idx", hj,
                              std::vector<int32_t>(want_idx.begin() + static_cast<size_t>(r) * cap,
                                                   want_idx.begin() + static_cast<size_t>(r) * cap + n)));
      }
    }
    GuardedBuffer<double> key_d(key);
    GuardedBuffer<int32_t> idx_d(idx);
    cuda::fab_sort_pairs_cuda(key_d.get(), idx_d.get(), rows, n, 0);
    EXPECT_TRUE(all_equal("keys", key_d.download(), want_key));
    EXPECT_TRUE(all_equal("idx", idx_d.download(), want_idx));
    EXPECT_TRUE(key_d.guard_intact());
    EXPECT_TRUE(idx_d.guard_intact());
  }
}

TEST_F(CudaFabKernels, StartResetsEveryEntry) {
  FabCase c = make_case(53, 784, Norm::Linf);
  for (FabEntry& e : c.entry) e = FabEntry{3, 1};
  DeviceFab d(c);
  d.x.poison();
  d.adv.poison();
  cuda::fab_start_cuda(d.s, 0);
  EXPECT_TRUE(all_equal("x", d.x.download(), c.x0));
  EXPECT_TRUE(all_equal("adv", d.adv.download(), std::vector<float>(c.adv.size(), 0.0f)));
  EXPECT_TRUE(all_equal("entries", entry_ints(d.entry.download()), entry_ints(std::vector<FabEntry>(c.entries))));
  EXPECT_TRUE(d.guards());
}

// Logits with ties for the largest (the first one is the prediction) over a shuffled partial list.
TEST_F(CudaFabKernels, BoundaryIsTheHostRows) {
  const int entries = 61, count = 45;
  const FabCase c = make_case(entries, 16, Norm::Linf);
  DeviceFab d(c);
  const std::vector<int32_t> list = sample(count, entries);
  std::vector<float> logits = normal(static_cast<size_t>(count) * kK, 3.0f);
  for (int i = 0; i < count; ++i)
    if (randint(0, 3) == 0) {
      float* z = logits.data() + static_cast<size_t>(i) * kK;
      z[randint(0, kK - 1)] = *std::max_element(z, z + kK);
    }
  GuardedBuffer<int32_t> list_d(list), pred_d(count);
  GuardedBuffer<float> logits_d(logits), dlogits_d(static_cast<size_t>(count) * kK), g_d(count);
  cuda::FabRows r;
  r.count = count;
  r.list = list_d.get();
  r.logits = logits_d.get();
  r.dlogits = dlogits_d.get();
  r.g = g_d.get();
  r.pred = pred_d.get();
  cuda::fab_boundary_cuda(d.s, r, 0);
  std::vector<float> want_g(count), want_dz(static_cast<size_t>(count) * kK);
  std::vector<int32_t> want_pred(count);
  for (int i = 0; i < count; ++i) {
    const int e = list[i];
    int pred = 0;
    want_g[i] = fab_boundary_one(logits.data() + static_cast<size_t>(i) * kK, kK, c.label[e], c.target[e],
                                 want_dz.data() + static_cast<size_t>(i) * kK, &pred);
    want_pred[i] = pred;
  }
  EXPECT_TRUE(all_equal("g", g_d.download(), want_g));
  EXPECT_TRUE(all_equal("dlogits", dlogits_d.download(), want_dz));
  EXPECT_TRUE(all_equal("pred", pred_d.download(), want_pred));
  for (const auto* b : {&logits_d, &dlogits_d, &g_d}) EXPECT_TRUE(b->guard_intact());
  EXPECT_TRUE(pred_d.guard_intact());
  EXPECT_TRUE(d.guards());
}

// One update over a shuffled partial list, for each pixel count, norm, and with a step (need_grad) or without (the
// last evaluation). The rows are built to reach every branch: done before, misclassified within eps (broken) and
// beyond it (pulled back), and correctly classified rows whose plane is within the box's reach, out of it (input
// gradients 1e-4 of the others') or passes through the iterate itself (g = 0). Input gradients have exact zeros,
// coordinates that never move.
void CudaFabKernels::check_update(const std::vector<int>& pixel_counts) {
  int kinds[kRowKinds] = {};
  for (int D : pixel_counts)
    for (Norm norm : {Norm::Linf, Norm::L2})
      for (bool need_grad : {true, false}) {
        SCOPED_TRACE("D " + std::to_string(D) + (norm == Norm::L2 ? " L2" : " Linf") +
                     (need_grad ? " step" : " last evaluation"));
        const int entries = 41, count = 3 * kRowKinds + 2;
        FabCase c = make_case(entries, D, norm);
        const std::vector<int32_t> list = sample(count, entries);
        std::vector<float> grad = normal(static_cast<size_t>(count) * D);
        for (float& w : grad)
          if (randint(0, 4) == 0) w = 0.0f;
        std::vector<float> g(count);
        std::vector<int32_t> pred(count);
        for (int i = 0; i < count; ++i) {
          const int e = list[i], kind = i % kRowKinds;
          ++kinds[kind];
          pred[i] = kind == kBreaks || kind == kTooFar ? c.target[e] : c.label[e];
          g[i] = kind == kBreaks || kind == kTooFar ? -uniform01() : kind == kOnThePlane ? 0.0f : 3.0f * uniform01();
          if (kind == kDoneBefore) c.entry[e] = FabEntry{randint(0, 20), 1};
          if (kind == kTooFar) c.eps[e] = 1e-3f * c.eps[e];  // the iterate is ~eps / 2 away
          if (kind == kOutOfReach)
            for (int j = 0; j < D; ++j) grad[static_cast<size_t>(i) * D + j] *= 1e-4f;
        }
        FabStep st;
        st.iteration = 7;
        st.need_grad = need_grad;
        st.norm = norm;
        DeviceFab d(c);
        GuardedBuffer<int32_t> list_d(list), pred_d(pred);
        GuardedBuffer<float> g_d(g), grad_d(grad);
        GuardedBuffer<uint8_t> keep_d(count);
        cuda::FabRows r;
        r.count = count;
        r.list = list_d.get();
        r.g = g_d.get();
        r.pred = pred_d.get();
        r.grad = need_grad ? grad_d.get() : nullptr;
        r.keep = keep_d.get();
        cuda::fab_update_prepare(D);
        cuda::fab_update_cuda(d.s, r, st, 0);

        // The host rows, with scratch NaN-filled as a block's shared memory may hold anything; lanes reversed on
        // every other row (the row code must not depend on their order).
        const int cap = fab_sort_capacity(D);
        std::vector<double> key(cap), partial(kFabPartials);
        std::vector<int32_t> idx(cap);
        std::vector<float> d_i(D), d_0(D);
        std::vector<uint8_t> want_keep(count, 7);  // every row's flag is written (a done row's 0 too)
        for (int i = 0; i < count; ++i) {
          const int e = list[i];
          std::fill(key.begin(), key.end(), NAN);
          std::fill(partial.begin(), partial.end(), NAN);
          std::fill(idx.begin(), idx.end(), -1);
          std::fill(d_i.begin(), d_i.end(), NAN);
          std::fill(d_0.begin(), d_0.end(), NAN);
          const FabScratch s{key.data(), idx.data(), d_i.data(), d_0.data(), partial.data()};
          const size_t row = static_cast<size_t>(e) * D;
          const float* w = need_grad ? grad.data() + static_cast<size_t>(i) * D : nullptr;
          const FabUpdateRow u{&c.entry[e], c.x.data() + row, c.x0.data() + row, w, g[i], pred[i] != c.label[e],
                               c.eps[e], c.adv.data() + row, &want_keep[i]};
          HostLanes b{i % 2 == 1};
          fab_update_row(b, s, u, st, D);
        }
        EXPECT_TRUE(all_equal("x", d.x.download(), c.x));
        EXPECT_TRUE(all_equal("adv", d.adv.download(), c.adv));
        EXPECT_TRUE(all_equal("entries", entry_ints(d.entry.download()), entry_ints(c.entry)));
        EXPECT_TRUE(all_equal("keep", keep_d.download(), want_keep));
        EXPECT_TRUE(d.guards());
        for (const auto* b : {&g_d, &grad_d}) EXPECT_TRUE(b->guard_intact());
        EXPECT_TRUE(list_d.guard_intact());
        EXPECT_TRUE(pred_d.guard_intact());
        EXPECT_TRUE(keep_d.guard_intact());
        // The cases did what they were made for: every kBreaks row broke at this iteration, no kTooFar row did.
        for (int i = 0; i < count; ++i) {
          const int e = list[i], kind = i % kRowKinds;
          if (kind == kBreaks) {
            EXPECT_EQ(c.entry[e].broken_step, st.iteration) << "row " << i;
          }
          if (kind == kTooFar) {
            EXPECT_EQ(c.entry[e].done, 0) << "row " << i;
          }
        }
      }
  for (int k = 0; k < kRowKinds; ++k) EXPECT_GT(kinds[k], 0) << "no row of kind " << k;
}

TEST_F(CudaFabKernels, UpdateIsTheHostRows) { check_update({kPixelCounts[0], kPixelCounts[1], kPixelCounts[2]}); }

// Apart, so that the GPU check's racecheck can leave out its 78-stage sorts of 4,096 pairs (it is memchecked).
TEST_F(CudaFabKernels, UpdateIsTheHostRowsWithScratchBeyond48KiB) { check_update({kPixelCounts[3]}); }

#else  // !NUDGE_HAVE_CUDA

TEST(CudaFabKernels, Skipped) { NUDGE_GPU_SKIP("built without CUDA"); }

#endif

}  // namespace
}  // namespace nudge
