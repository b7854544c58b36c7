// Square (Andriushchenko et al., ECCV 2020, "Square Attack: a query-efficient black-box adversarial attack via
// random search"), untargeted: the shared random search (square_search.h) and the L-inf version, from the paper:
// start from vertical stripes of +-eps, then at each iteration set one random square of side s (shrinking with the
// p schedule) to a random +-eps. Forward passes only. Every entry draws its own squares and signs from the counter
// generator (the reference implementation draws one per iteration for the whole batch, so its results depend on the
// batch). The L2 version's proposal is in attack_square_l2.cpp.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "optimize_math.h"
#include "attacks.h"
#include "errors.h"
#include "attack_run_part.h"
#include "parallel_errors.h"
#include "square_run.h"
#include "square_search.h"

namespace nudge {

double square_p(double p_init, int it, int iterations) {
  const int i = static_cast<int>(static_cast<double>(it) / iterations * 10000);
  static const int kAt[] = {10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000};
  double p = p_init;
  for (int at : kAt)
    if (i > at) p /= 2;
  return p;
}

int square_side(double p, int H, int W) {
  const int s = static_cast<int>(std::lround(std::sqrt(p * H * W)));
  return std::max(1, std::min(s, std::min(H, W) - 1));
}

int square_window_side(Norm norm, const SquareConfig& cfg, int it, int H, int W) {
  const double p = square_p(cfg.p_init, it - 1, cfg.schedule_iterations());
  return norm == Norm::L2 ? square_l2_side(p, H, W) : square_side(p, H, W);
}

namespace {

constexpr int kSquareGroupShared = 64, kSquareGroupAlone = 8;

// The rows of host/core/square_rows.h, which the CUDA kernels run too, on the host's lanes.
SquareProposal linf_proposal(const AttackSet& set, const SquareConfig& cfg, int H, int W, uint64_t seed, int restart) {
  SquareProposal p;
  auto key = [&set, seed, restart](int e) {
    return ApgdKey{seed, static_cast<uint32_t>(AttackId::Square), restart, set.point[e]};
  };
  p.start = [&set, H, W, key](int e, float* b) {
    HostLanes lanes;
    square_linf_start_row(lanes, key(e), set.eps[e], set.x0.data() + static_cast<size_t>(e) * set.D, b, H, W);
  };
  p.propose = [&set, &cfg, H, W, key](int e, int it, const float* b, float* c) {
    const int s = square_window_side(Norm::Linf, cfg, it, H, W);
    int flags[kRowLanes + 1];
    HostLanes lanes;
    square_linf_propose_row(lanes, flags, key(e), set.eps[e], it, s, set.x0.data() + static_cast<size_t>(e) * set.D, b,
                            c, H, W);
  };
  return p;
}

// Square on the backend's device, chunk by chunk, for the entries `live`; false, with nothing run, when the backend
// has no device run.
bool square_on_device(Backend& backend, const AttackSet& set, const std::vector<int>& live, const SquareConfig& cfg,
                      int H, int W, uint64_t seed, int restart, const std::vector<double>& patterns,
                      AttackRecord& rec, long& spent, const AttackProgress& progress) {
  const size_t chunks = std::max<size_t>(1, (live.size() + cfg.chunk - 1) / cfg.chunk);
  for (size_t b = 0; b < live.size(); b += static_cast<size_t>(cfg.chunk)) {
    const std::vector<int> part(live.begin() + b, live.begin() + std::min(live.size(), b + cfg.chunk));
    const int m = static_cast<int>(part.size());
    const RunPart p = gather_run_part(set, part);
    SquareRunInput in;
    in.m = m;
    in.H = H;
    in.W = W;
    in.K = set.K;
    in.norm = set.norm;
    in.patterns = patterns.empty() ? nullptr : patterns.data();
    in.pattern_count = patterns.size();
    in.x0 = p.x0.data();
    in.label = p.label.data();
    in.eps = p.eps.data();
    in.point = p.point.data();
    in.seed = seed;
    in.attack = static_cast<uint32_t>(AttackId::Square);
    in.restart = restart;
    std::unique_ptr<SquareDevice> dev = backend.begin_square(in);
    if (!dev) {
      if (b == 0) return false;
      throw InternalError("square: the backend's device run went away between chunks");
    }
    const double c = static_cast<double>(b / cfg.chunk);
    auto side = [&](int it) { return square_window_side(set.norm, cfg, it, H, W); };
    drive_square(*dev, m, cfg.queries, side, [&](int it) {
      if (progress && it % 16 == 0)
        progress((restart + (c + static_cast<double>(it) / cfg.queries) / chunks) / cfg.restarts);
    });
    const SquareRunResult res = dev->finish();
    spent += res.cost(cfg.queries);
    if (progress) progress((restart + (c + 1) / chunks) / cfg.restarts);
    record_run(res, part, AttackId::Square, restart, set.D, rec);
  }
  return true;
}

}  // namespace

long square_search(Backend& backend, const AttackSet& set, const std::vector<int>& e, const SquareConfig& cfg,
                   int restart, AttackRecord& rec, const SquareProposal& proposal,
                   const std::function<void(double)>& tick) {
  const int D = set.D, K = set.K, m = static_cast<int>(e.size());
  std::vector<float> best(static_cast<size_t>(m) * D), cand, margin_best(m), logits(static_cast<size_t>(m) * K);
  for (int l = 0; l < m; ++l) proposal.start(e[l], best.data() + static_cast<size_t>(l) * D);
  // The session keeps each entry's best image as its base: a candidate changes one window of it, and the CPU
  // backend recomputes only what that window reaches (the same logits as a full pass, bit for bit).
  const std::unique_ptr<ForwardSession> session = backend.begin_forward_session(m, K);
  session->set_bases(best.data(), logits.data());
  for (int l = 0; l < m; ++l) margin_best[l] = attack_margin(logits.data() + static_cast<size_t>(l) * K, K, set.label[e[l]]);
  long spent = m;
  std::vector<int> live;  // local indices still robust, which are also their session slots
  auto retire = [&](int l, int step) {
    rec.broken[e[l]] = 1;
    rec.attack[e[l]] = static_cast<int32_t>(AttackId::Square);
    rec.restart[e[l]] = restart;
    rec.step[e[l]] = step;
    std::copy_n(best.data() + static_cast<size_t>(l) * D, D, rec.adv.data() + static_cast<size_t>(e[l]) * D);
  };
  for (int l = 0; l < m; ++l) {
    if (margin_best[l] < 0) retire(l, 0);
    else live.push_back(l);
  }
  std::vector<uint8_t> keep;
  for (int it = 1; it < cfg.queries && !live.empty(); ++it) {
    const int n = static_cast<int>(live.size());
    cand.resize(static_cast<size_t>(n) * D);
    // Each candidate is its entry's own draws; drawing them on one thread was a fifth of a 1,000-point run.
#pragma omp parallel for schedule(static) if (n > 16)
    for (int i = 0; i < n; ++i)
      proposal.propose(e[live[i]], it, best.data() + static_cast<size_t>(live[i]) * D,
                       cand.data() + static_cast<size_t>(i) * D);
    session->evaluate(live.data(), cand.data(), n, logits.data());
    spent += n;
    keep.assign(n, 0);
    std::vector<int> still;
    for (int i = 0; i < n; ++i) {
      const int l = live[i];
      const float margin = attack_margin(logits.data() + static_cast<size_t>(i) * K, K, set.label[e[l]]);
      if (margin < margin_best[l]) {
        margin_best[l] = margin;
        keep[i] = 1;
        std::copy_n(cand.data() + static_cast<size_t>(i) * D, D, best.data() + static_cast<size_t>(l) * D);
      }
      if (margin_best[l] < 0) retire(l, it);
      else still.push_back(l);
    }
    session->resolve(keep.data());
    live.swap(still);
    if (tick && it % 16 == 0) tick(static_cast<double>(it) / cfg.queries);
  }
  return spent;
}

long run_square(Backend& backend, const AttackSet& set, const std::vector<int>& todo, const SquareConfig& cfg, int H,
                int W, uint64_t seed, AttackRecord& rec, const AttackProgress& progress) {
  if (cfg.queries < 1) throw InputError("square needs at least one query");
  // The rows draw without attack_uniform's range check (they run on the card too): the budget and the starts' draws
  // must fit the counter's step and draw fields here.
  if (cfg.queries > static_cast<int>(kMaxAttackSteps))
    throw InputError("square: at most " + std::to_string(kMaxAttackSteps) + " queries");
  if (H < 2 || W < 2 || H * W != set.D) throw InputError("square needs single-channel images of at least 2x2 pixels");
  if (set.norm == Norm::L2 && std::min(H, W) < kSquareL2MinSide)
    throw InputError("square in L2 needs images of at least " + std::to_string(kSquareL2MinSide) + "x" +
                     std::to_string(kSquareL2MinSide) + " pixels (its start is a grid of 5 x 5 bumps)");
  if (set.norm == Norm::L2) {
    const int bump = std::min(H, W) / 5;
    if (2L * (H / bump) * (W / bump) > static_cast<long>(kMaxAttackDraws))
      throw InputError("square in L2: the start's grid of bumps needs more draws than the counter holds");
  } else if (W > static_cast<int>(kMaxAttackDraws)) {
    throw InputError("square: images wider than " + std::to_string(kMaxAttackDraws) + " pixels");
  }
  // L2's window patterns, every side, built once for the host proposal and the device runs of every restart.
  const auto patterns = std::make_shared<const std::vector<double>>(
      set.norm == Norm::L2 ? square_l2_pattern_table(std::min(H, W) - 1) : std::vector<double>());
  long spent = 0;
  for (int r = 0; r < cfg.restarts; ++r) {
    const SquareProposal proposal =
        set.norm == Norm::L2 ? square_l2_proposal(set, cfg, H, W, seed, r, patterns)
                             : linf_proposal(set, cfg, H, W, seed, r);
    std::vector<int> live;
    for (int e : todo)
      if (!rec.broken[e]) live.push_back(e);
    if (square_on_device(backend, set, live, cfg, H, W, seed, r, *patterns, rec, spent, progress)) continue;
    // Where the backend's sessions may run side by side (the CPU's), each thread searches its own groups of kSquareGroupAlone entries through all the queries: no barrier
    // per iteration, and a group's kept activations (~108 KB an entry for the reference model) stay in its core's
    // L2. Otherwise the groups take turns, kSquareGroupShared entries at a time, each iteration spread over the
    // threads. Draws are the entries' own, so no grouping changes a result. Measured on the 2-core VM, 2026-12-04,
    // 400 points x 3,000 queries: groups of 8 alone 13.1 s (4: 13.9, 16: 13.6, 32: 14.6); shared groups of 64
    // 16.4 s, and those were 10% faster than shared groups of 400.
    const bool alone = backend.concurrent_forward_sessions();
    const int group = std::min(cfg.chunk, alone ? kSquareGroupAlone : kSquareGroupShared);
    const int groups = static_cast<int>((live.size() + group - 1) / group);
    auto part_of = [&](int g) {
      return std::vector<int>(live.begin() + static_cast<size_t>(g) * group,
                              live.begin() + std::min(live.size(), static_cast<size_t>(g + 1) * group));
    };
    if (alone) {
      ParallelErrors errors;
      int done = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : spent)
      for (int g = 0; g < groups; ++g) errors.run([&] {
        spent += square_search(backend, set, part_of(g), cfg, r, rec, proposal, {});
#pragma omp critical(nudge_square_progress)
        if (progress) progress((r + static_cast<double>(++done) / groups) / cfg.restarts);
      });
      errors.rethrow();
      continue;
    }
    for (int g = 0; g < groups; ++g)
      spent += square_search(backend, set, part_of(g), cfg, r, rec, proposal, [&](double f) {
        if (progress) progress((r + (g + f) / std::max(groups, 1)) / cfg.restarts);
      });
  }
  return spent;
}

}  // namespace nudge
