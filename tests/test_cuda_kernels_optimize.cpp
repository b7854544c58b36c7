// The optimize loop's kernels against their CPU twins: the bookkeeping after each evaluation (optimize_track: goal
// tests, best iterate, success step, keep flags, with and without early stop), the input step (every optimizer x
// norm, skipped rows), noise and per-entry start images (bit-identical to host/core/counter_rng.h and StartImages),
// the row argmax (ties), row gathers and the compaction of the active set (empty, partial and full blocks). Fresh
// seeded random inputs (NUDGE_TEST_SEED=<seed> replays a run); outputs are poisoned with NaN before each launch and
// guarded by a sentinel region, so an unwritten element or a stray write fails.
//
// Tolerances: the bookkeeping, generators, gathers and compaction compare, copy or do integer arithmetic, so they
// must match bit for bit; the input step's FMAs and powf move a pixel by a few ulps (atol stated there, rtol 1e-4).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "counter_rng.h"
#include "cuda_kernel_fixtures.h"
#include "cuda_test_util.h"
#include "optimize_math.h"
#include "optimize_types.h"
#include "start_images.h"

#if NUDGE_HAVE_CUDA
#include "compact_active.cuh"
#include "gather_rows.cuh"
#include "input_step.cuh"
#include "noise.cuh"
#include "optimize_track.cuh"
#include "row_argmax.cuh"
#endif

namespace nudge {
namespace {

#if NUDGE_HAVE_CUDA

using test::all_close;
using test::all_equal;
using test::CudaKernels;
using test::CudaLossKernels;
using test::GuardedBuffer;
using test::LossCase;

// ---- optimize bookkeeping ----------------------------------------------------------------------------------------

TEST_F(CudaLossKernels, OptimizeTrack) {
  const int K = 10, D = 37;
  for (int variant = 0; variant < 2; ++variant) {
    StepConfig cfg;
    cfg.stop_prob = variant ? 0.6f : 0.0f;
    cfg.early_stop = variant == 1;
    cfg.stop_kl = 0.05f;
    SCOPED_TRACE("stop_prob " + std::to_string(cfg.stop_prob) + (cfg.early_stop ? ", early stop" : ""));
    LossCase c = make_case(K);
    const int rows = 200, E = c.entries;
    c.entry.resize(rows);
    std::vector<float> probs(static_cast<size_t>(rows) * K), loss = uniform(rows, 0.0f, 3.0f);
    for (int i = 0; i < rows; ++i) {
      const int e = c.entry[i];
      std::vector<float> z = normal(K, 2.0f);
      if (randint(0, 2) == 0) z[c.cls[e]] += 8.0f;  // goals met often: OneHot yes, Untargeted no
      if (randint(0, 3) == 0) z[c.cls[e]] -= 8.0f;  // ... and the other way round
      loss_forward_backward_one(z.data(), K, c.dist.data() + static_cast<size_t>(e) * K, TargetKind::OneHot, 0,
                                LossKind::CrossEntropy, 0.0f, probs.data() + static_cast<size_t>(i) * K, nullptr);
      if (c.kind[e] == static_cast<int>(TargetKind::Soft) && randint(0, 1) == 0)  // KL(t || p) = 0: met
        std::copy_n(probs.data() + static_cast<size_t>(i) * K, K, c.dist.data() + static_cast<size_t>(e) * K);
    }
    const std::vector<float> x = uniform(static_cast<size_t>(E) * D, 0.0f, 1.0f);
    std::vector<float> best_loss = uniform(E, 0.0f, 3.0f), best_probs = uniform(static_cast<size_t>(E) * K, 0, 1),
                       best_images = uniform(static_cast<size_t>(E) * D, 0, 1);
    std::vector<int32_t> steps(E), success(E, -1);
    std::vector<uint8_t> reached(E, 0);
    for (int e = 0; e < E; ++e) {
      steps[e] = randint(0, 50);
      if (randint(0, 4) == 0) best_loss[e] = INFINITY;
      if (randint(0, 4) == 0) {
        reached[e] = 1;
        success[e] = randint(0, steps[e]);
      }
    }
    GuardedBuffer<float> probs_d(probs), loss_d(loss), x_d(x), dist_d(c.dist), bl_d(best_loss), bp_d(best_probs),
        bi_d(best_images);
    GuardedBuffer<int32_t> entry_d(c.entry), kind_d(c.kind), cls_d(c.cls), steps_d(steps), success_d(success);
    GuardedBuffer<uint8_t> reached_d(reached), keep_d(rows);

    std::vector<uint8_t> keep_ref(rows);
    for (int i = 0; i < rows; ++i) {  // the twin: CpuOptimizeChunk::evaluate_and_update's bookkeeping
      const int e = c.entry[i];
      const float* pi = probs.data() + static_cast<size_t>(i) * K;
      const bool met = goal_met(pi, K, c.dist.data() + static_cast<size_t>(e) * K,
                                static_cast<TargetKind>(c.kind[e]), c.cls[e], cfg);
      if (!reached[e] && (met || loss[i] < best_loss[e])) {
        best_loss[e] = loss[i];
        std::copy_n(x.data() + static_cast<size_t>(e) * D, D, best_images.data() + static_cast<size_t>(e) * D);
        std::copy_n(pi, K, best_probs.data() + static_cast<size_t>(e) * K);
        if (met) {
          reached[e] = 1;
          success[e] = steps[e];
        }
      }
      keep_ref[i] = !(met && cfg.early_stop);
    }
    cuda::TrackParams p;
    p.rows = rows;
    p.K = K;
    p.D = D;
    p.entry = entry_d.get();
    p.probs = probs_d.get();
    p.loss = loss_d.get();
    p.x = x_d.get();
    p.target_dist = dist_d.get();
    p.target_kind = kind_d.get();
    p.target_class = cls_d.get();
    p.steps_done = steps_d.get();
    p.stop_prob = cfg.stop_prob;
    p.stop_kl = cfg.stop_kl;
    p.early_stop = cfg.early_stop;
    p.goal_reached = reached_d.get();
    p.best_loss = bl_d.get();
    p.best_probs = bp_d.get();
    p.best_images = bi_d.get();
    p.success_step = success_d.get();
    p.keep = keep_d.get();
    cuda::optimize_track_cuda(p, 0);
    // Exact: the kernel compares and copies the values it is given; its one computed quantity, the soft goal's
    // KL, is a double sum of double logs (CUDA's log is within 1 ulp, glibc's within 1 ulp) rounded to float and
    // then compared, so a flip needs the double sum within a few double ulps (~1e-16 relative) of a float rounding
    // point or of stop_kl: odds ~2^-28 per row, not rounding that a bound could describe.
    EXPECT_TRUE(all_equal("keep", keep_d.download(), keep_ref));
    EXPECT_TRUE(all_equal("goal_reached", reached_d.download(), reached));
    EXPECT_TRUE(all_equal("success_step", success_d.download(), success));
    EXPECT_TRUE(all_equal("best_loss", bl_d.download(), best_loss));
    EXPECT_TRUE(all_equal("best_probs", bp_d.download(), best_probs));
    EXPECT_TRUE(all_equal("best_images", bi_d.download(), best_images));
    for (auto* g : {&bl_d, &bp_d, &bi_d}) EXPECT_TRUE(g->guard_intact());
    EXPECT_TRUE(keep_d.guard_intact());
    EXPECT_TRUE(reached_d.guard_intact());
    EXPECT_TRUE(success_d.guard_intact());
    int met_count = 0;
    for (uint8_t k : keep_ref) met_count += !k;
    if (cfg.early_stop) {
      EXPECT_GT(met_count, 0) << "the case should stop some entries";
    }
  }
}

// ---- the input optimizer step ------------------------------------------------------------------------------------

TEST_F(CudaKernels, InputStep) {
  const int E = 40, rows = 30, D = 300;  // D > 256 threads, not a multiple: loop tails
  for (InputOptimizer opt : {InputOptimizer::Adam, InputOptimizer::Sgd, InputOptimizer::Sign})
    for (Norm norm : {Norm::None, Norm::Linf, Norm::L2}) {
      SCOPED_TRACE(std::string(to_string(opt)) + " / " + to_string(norm));
      StepConfig cfg;
      cfg.optimizer = opt;
      cfg.norm = norm;
      cfg.lr = opt == InputOptimizer::Adam ? 0.05f : opt == InputOptimizer::Sgd ? 0.1f : 0.02f;
      const std::vector<int32_t> entry = sample(rows, E);
      std::vector<uint8_t> keep(rows);
      for (uint8_t& k : keep) k = randint(0, 4) != 0;
      const size_t ed = static_cast<size_t>(E) * D;
      std::vector<float> x = uniform(ed, 0, 1), x0 = uniform(ed, 0, 1), m = normal(ed, 0.1f), v = uniform(ed, 0, 0.05f);
      const std::vector<float> grad = normal(static_cast<size_t>(rows) * D);
      std::vector<float> eps = norm == Norm::L2 ? uniform(E, 0.5f, 4.0f) : uniform(E, 0.01f, 0.3f);
      std::vector<int32_t> steps(E);
      for (int32_t& s : steps) s = randint(0, 20);

      GuardedBuffer<float> x_d(x), x0_d(x0), m_d(m), v_d(v), g_d(grad), eps_d(eps);
      GuardedBuffer<int32_t> entry_d(entry), steps_d(steps);
      GuardedBuffer<uint8_t> keep_d(keep);
      for (int i = 0; i < rows; ++i) {
        if (!keep[i]) continue;
        const size_t o = static_cast<size_t>(entry[i]) * D;
        ++steps[entry[i]];
        input_update_one(x.data() + o, grad.data() + static_cast<size_t>(i) * D, m.data() + o, v.data() + o,
                         steps[entry[i]], x0.data() + o, D, eps[entry[i]], cfg);
      }
      cuda::InputStepParams p;
      p.rows = rows;
      p.D = D;
      p.entry = entry_d.get();
      p.keep = keep_d.get();
      p.grad = g_d.get();
      p.x = x_d.get();
      p.x0 = x0_d.get();
      p.m = m_d.get();
      p.v = v_d.get();
      p.steps_done = steps_d.get();
      p.eps = eps_d.get();
      p.optimizer = opt;
      p.norm = norm;
      p.lr = cfg.lr;
      p.beta1 = cfg.beta1;
      p.beta2 = cfg.beta2;
      p.adam_eps = cfg.adam_eps;
      cuda::input_step_cuda(p, 0);
      // Pixels are in [0, 1]; the GPU's FMAs and powf move an Adam step (~lr) by a few ulps of itself: 1e-6 is
      // ~8 ulps of 1. Moments are a few ulps apart at most.
      EXPECT_TRUE(all_close("x", x_d.download(), x, {1e-6, 1e-4}));
      if (opt == InputOptimizer::Adam) {
        EXPECT_TRUE(all_close("m", m_d.download(), m, {1e-8, 1e-4}));
        EXPECT_TRUE(all_close("v", v_d.download(), v, {1e-10, 1e-4}));
      }
      EXPECT_TRUE(all_equal("steps_done", steps_d.download(), steps));
      EXPECT_TRUE(x_d.guard_intact());
      EXPECT_TRUE(m_d.guard_intact());
      EXPECT_TRUE(v_d.guard_intact());
      EXPECT_TRUE(steps_d.guard_intact());
    }
}

// ---- noise and start images, argmax, gather, compaction ----------------------------------------------------------

TEST_F(CudaKernels, NoiseBitIdentical) {
  const int n = randint(1, 40), D = 785;  // D not a multiple of 4: the last Philox block is partial
  const uint64_t seed = rng_(), first = (uint64_t{1} << 33) + randint(0, 1000);  // high index bits in play
  std::vector<float> ref(static_cast<size_t>(n) * D);
  for (int i = 0; i < n; ++i)
    for (int p = 0; p < D; ++p)
      ref[static_cast<size_t>(i) * D + p] = counter_uniform(seed, kStreamNoise, first + i, static_cast<uint32_t>(p));
  GuardedBuffer<float> out(ref.size());
  cuda::noise_images_cuda(out.get(), n, D, seed, first, 0);
  // Exact: integer Philox from the same header (host/core/counter_rng.h) and a float formed from 24 bits.
  EXPECT_TRUE(all_equal("noise", out.download(), ref));
  EXPECT_TRUE(out.guard_intact());

  // The start-image source's own twin, for small indices.
  std::vector<float> img(D);
  noise_image(seed, 7, D, img.data());
  out.poison();
  cuda::noise_images_cuda(out.get(), 1, D, seed, 7, 0);
  std::vector<float> got = out.download();
  got.resize(D);
  EXPECT_TRUE(all_equal("noise_image(7)", got, img));
}

// An optimize chunk's start images made on the device (ChunkState, GeneratedStarts) against StartImages::fill on
// the host, through the entry -> image mapping: rows of 3 entries, 4 rows per image, from row 5 on.
TEST_F(CudaKernels, EntryStartImagesBitIdentical) {
  const int D = 787, n = 50;  // D not a multiple of 4: the last Philox block's tail
  for (bool gray : {false, true}) {
    SCOPED_TRACE(gray ? "gray" : "noise");
    cuda::EntryStarts st;
    st.gray = gray;
    st.gray_value = 0.37f;
    st.seed = 0x1234567890ull + randint(0, 1000);
    st.first_row = 5;
    st.entries_per_row = 3;
    st.rows_per_source = 4;
    std::vector<float> ref(static_cast<size_t>(n) * D);
    for (int i = 0; i < n; ++i) {
      const long image = (st.first_row + i / st.entries_per_row) / st.rows_per_source;
      float* row = ref.data() + static_cast<size_t>(i) * D;
      if (gray) std::fill(row, row + D, st.gray_value);
      else noise_image(st.seed, image, D, row);
    }
    GuardedBuffer<float> out(ref.size());
    cuda::entry_start_images_cuda(out.get(), n, D, st, 0);
    // Exact: the same integer generator and 24-bit floats, or a copy of one value.
    EXPECT_TRUE(all_equal("start images", out.download(), ref));
    EXPECT_TRUE(out.guard_intact());
  }
}

TEST_F(CudaKernels, RowArgmax) {
  const int rows = 300, K = 10;
  std::vector<float> probs = uniform(static_cast<size_t>(rows) * K, 0.0f, 1.0f);
  // Ties: rows 0..9 have their maximum twice (the first one must win), row 10 is constant.
  for (int r = 0; r < 10; ++r) probs[r * K + r] = probs[r * K + (r + 3) % K] = 2.0f;
  for (int k = 0; k < K; ++k) probs[10 * K + k] = 0.5f;
  const std::vector<int32_t> entry = sample(rows, rows + 50);
  std::vector<int32_t> ref(rows + 50, -7);
  for (int r = 0; r < rows; ++r) {
    const float* q = probs.data() + static_cast<size_t>(r) * K;
    ref[entry[r]] = static_cast<int32_t>(std::max_element(q, q + K) - q);
  }
  GuardedBuffer<float> p_d(probs);
  GuardedBuffer<int32_t> e_d(entry), out(std::vector<int32_t>(rows + 50, -7));
  cuda::row_argmax_cuda(p_d.get(), rows, K, e_d.get(), out.get(), 0);
  // Exact: comparisons only, the first maximum as std::max_element; untouched slots stay as they were.
  EXPECT_TRUE(all_equal("argmax", out.download(), ref));
  EXPECT_TRUE(out.guard_intact());
}

TEST_F(CudaKernels, GatherRows) {
  const int E = 100, count = 77, D = 129;
  const std::vector<float> src = normal(static_cast<size_t>(E) * D);
  std::vector<int32_t> rows(count);
  for (int32_t& r : rows) r = randint(0, E - 1);
  std::vector<float> ref(static_cast<size_t>(count) * D);
  for (int i = 0; i < count; ++i)
    std::copy_n(src.data() + static_cast<size_t>(rows[i]) * D, D, ref.data() + static_cast<size_t>(i) * D);
  GuardedBuffer<float> src_d(src), dst(ref.size());
  GuardedBuffer<int32_t> rows_d(rows);
  cuda::gather_rows_cuda(src_d.get(), rows_d.get(), count, D, dst.get(), 0);
  // Exact: copies.
  EXPECT_TRUE(all_equal("gather", dst.download(), ref));
  EXPECT_TRUE(dst.guard_intact());
}

TEST_F(CudaKernels, CompactActive) {
  for (int count : {0, 1, 31, 1023, 1024, 1025, 4099})
    for (int keep_pct : {0, 50, 100}) {
      SCOPED_TRACE("count " + std::to_string(count) + ", keep " + std::to_string(keep_pct) + "%");
      const std::vector<int32_t> active = sample(count, 2 * count + 1);
      std::vector<uint8_t> keep(count);
      for (uint8_t& k : keep) k = randint(0, 99) < keep_pct;
      std::vector<int32_t> ref;
      for (int i = 0; i < count; ++i)
        if (keep[i]) ref.push_back(active[i]);
      GuardedBuffer<int32_t> active_d(active), out(count), count_d(1);
      GuardedBuffer<uint8_t> keep_d(keep);
      cuda::compact_active_cuda(active_d.get(), keep_d.get(), count, out.get(), count_d.get(), 0);
      const int got_count = count_d.download()[0];
      ASSERT_EQ(got_count, static_cast<int>(ref.size()));
      std::vector<int32_t> got = out.download();
      got.resize(got_count);
      // Exact: integer compaction.
      EXPECT_TRUE(all_equal("compacted", got, ref));
      EXPECT_TRUE(out.guard_intact());
    }
}

#endif  // NUDGE_HAVE_CUDA

}  // namespace
}  // namespace nudge
