// FAB-T's per-row work (Croce & Hein, ICML 2020, "Minimally distorted adversarial examples with a fast adaptive
// boundary attack"), written once as phases over a block executor (row_lanes.h), as APGD's: on the card a lane is a
// thread of the row's block (kernels/fab.cu), on the host HostLanes loops over the lanes
// (host/attack/fab_host_device.cpp), so the CPU runs the very code the GPU does.
//
// The step of an iterate x of a row whose linearised boundary is g + w.(x' - x) = 0 (g = z_y - z_t, w its input
// gradient): the smallest steps d_i from x and d_0 from the clean x_0 onto that plane within the box [0,1]^D, in the
// ball's norm, then
//   x' = clip01((1 - a)(x + eta d_i) + a (x_0 + eta d_0)),  a = min(|d_i| / (|d_i| + |d_0|), alpha_max).
// A misclassified iterate within eps breaks the entry; one farther away is pulled back, x' = (1 - beta) x_0 + beta x.
//
// The projection (min |d| s.t. w.d = c, lo <= d <= hi): coordinate j moves toward sign(c w_j), by at most its room
// b_j in the box. L-inf: for a bound t on |d|, the plane is reached iff sum_j |w_j| min(t, b_j) >= |c|; L2 (the KKT
// conditions): d_j = clip(mu |w_j|, b_j) for one multiplier mu, reached iff sum_j |w_j| min(mu |w_j|, b_j) >= |c|.
// Both sums grow piecewise linearly in their parameter with breakpoints k_j = b_j (L-inf) or b_j / |w_j| (L2); the
// rows sort the (k_j, j) pairs, scan them for the first breakpoint that reaches the plane and solve the linear piece
// before it. Sorting a total order has one answer, so the host's std::sort and the card's bitonic network give the
// same permutation (sort_pairs); the scan's sums are each lane's chunk of the sorted order, then the lanes' sums in
// lane order, on both. Pixels are lane, lane + kRowLanes, ...; the sorted positions of a lane are one chunk.
//
// Numerics: the sums are double, the pixels float; kernels/fab.cu is built with --fmad=false and the host's attack
// library with -ffp-contract=off, so the two executors round alike and give the same bits (tests/test_fab_run.cpp
// checks forward against reversed lanes, tests/test_cuda_kernels_fab.cpp the card against the host).
#pragma once
#include <math.h>
#include <stdint.h>

#include "host_device.h"
#include "optimize_math.h"
#include "optimize_types.h"
#include "row_lanes.h"

namespace nudge {

// An entry's state: done once broken, at iteration broken_step (attack_run_result.h reads both).
struct FabEntry {
  int32_t broken_step = -1;
  uint8_t done = 0;
};

// Row scratch: three rows of kRowLanes partial sums and four totals.
constexpr int kFabPartials = 3 * kRowLanes + 4;

// The largest image the rows take: fab_sort_capacity stays an int (the runs refuse larger ones).
constexpr int kFabMaxPixels = 1 << 24;

// The sort's pair arrays hold a power of two at least D (the card's bitonic network pads to it); D <= kFabMaxPixels.
NUDGE_HD int fab_sort_capacity(int D) {
  int c = 1;
  while (c < D) c <<= 1;
  return c;
}

// One row's scratch beside its state: the sort's pairs [fab_sort_capacity(D)], the two steps [D] and the partials.
struct FabScratch {
  double* key;
  int32_t* idx;
  float* d_i;
  float* d_0;
  double* partial;  // [kFabPartials]
};


// The box [lo, hi] of given arrays (the projection's general form, tested against closed forms).
struct FabArrayBox {
  const float* lo;
  const float* hi;
  NUDGE_HD double room(int j, bool up) const { return nudge_dmax(0.0, static_cast<double>(up ? hi[j] : -lo[j])); }
};

// The box [0,1]^D seen from a point `base` of it: lo = -base, hi = 1 - base (FAB's steps from x and from x_0).
struct FabUnitBox {
  const float* base;
  NUDGE_HD double room(int j, bool up) const { return nudge_dmax(0.0, static_cast<double>(up ? 1.0f - base[j] : base[j])); }
};

// The smallest step d [D] onto w.d = c within `box`, in L-inf or (l2) L2; *norm (a total of s.partial, read after
// the call's last phase) becomes its norm. Unreachable within the box: every coordinate goes to its limit toward the
// plane, the closest the box allows. Written by all lanes; d may alias nothing the box reads.
template <class Block, class Box>
NUDGE_HD void fab_project_row(Block& b, const FabScratch& s, const float* w, double c, const Box& box, int D, bool l2,
                              float* d, double** norm_out) {
  const double target = fabs(c);
  const bool c_up = c >= 0;
  double* part_a = s.partial;               // the slopes' sums, then their prefixes
  double* part_b = s.partial + kRowLanes;  // the capped reaches' sums, then their prefixes
  double* part_c = s.partial + 2 * kRowLanes;
  double* total = s.partial + 3 * kRowLanes;  // [0] slope, [1] solution (-1: none), [3] the step's norm
  const double kInf = INFINITY;
  // The pairs, and each lane's sum of slopes (|w_j| for L-inf, w_j^2 for L2, both 0 where w_j = 0).
  b.phase([&](int lane) {
    double acc = 0;
    for (int j = lane; j < D; j += kRowLanes) {
      const double a = fabs(static_cast<double>(w[j]));
      const double room = box.room(j, c_up == (w[j] >= 0));
      const bool moves = a > 0;  // false for NaN too: such a coordinate never moves
      s.key[j] = l2 ? (moves ? room / a : kInf) : room;
      s.idx[j] = j;
      if (moves) acc += l2 ? a * a : a;
    }
    part_a[lane] = acc;
  });
  reduce_lanes(b, part_a, total, false);
  sort_pairs(b, s.key, s.idx, D, fab_sort_capacity(D));
  // Lane L's sorted positions [L * C, (L + 1) * C): their sums of slope and of capped reach a_j b_j.
  const int C = (D + kRowLanes - 1) / kRowLanes;
  b.phase([&](int lane) {
    double sa = 0, sb = 0;
    const int end = (lane + 1) * C < D ? (lane + 1) * C : D;
    for (int k = lane * C; k < end; ++k) {
      const int j = s.idx[k];
      const double a = fabs(static_cast<double>(w[j]));
      if (!(a > 0)) continue;
      sa += l2 ? a * a : a;
      sb += a * box.room(j, c_up == (w[j] >= 0));
    }
    part_a[lane] = sa;
    part_b[lane] = sb;
  });
  // Exclusive prefixes over the lanes, in lane order.
  b.phase([&](int lane) {
    if (lane != 0) return;
    double pa = 0, pb = 0;
    for (int i = 0; i < kRowLanes; ++i) {
      const double va = part_a[i], vb = part_b[i];
      part_a[i] = pa;
      part_b[i] = pb;
      pa += va;
      pb += vb;
    }
  });
  // Each lane scans its chunk for the first breakpoint k where reach(k) = capped + k * free >= |c| (free: the slope of
  // the coordinates not yet at their limit) and solves the linear piece before it: part_c = the solution, or -1.
  b.phase([&](int lane) {
    double capped = part_b[lane], passed = part_a[lane], found = -1;
    const int end = (lane + 1) * C < D ? (lane + 1) * C : D;
    for (int k = lane * C; k < end; ++k) {
      const double key = s.key[k];
      if (key == kInf) break;
      const double free = total[0] - passed;
      if (capped + key * free >= target) {
        found = free > 0 ? nudge_dmax(0.0, (target - capped) / free) : key;
        break;
      }
      const int j = s.idx[k];
      const double a = fabs(static_cast<double>(w[j]));
      if (!(a > 0)) continue;
      capped += a * box.room(j, c_up == (w[j] >= 0));
      passed += l2 ? a * a : a;
    }
    part_c[lane] = found;
  });
  b.phase([&](int lane) {
    if (lane != 0) return;
    double t = -1;
    for (int i = 0; i < kRowLanes && t < 0; ++i) t = part_c[i];
    total[1] = t;
  });
  b.phase([&](int lane) {
    const double t = total[1];
    const bool reachable = t >= 0;
    double acc = 0;
    for (int j = lane; j < D; j += kRowLanes) {
      const double a = fabs(static_cast<double>(w[j]));
      if (!(a > 0) || target == 0) {
        d[j] = 0.0f;
        continue;
      }
      const bool up = c_up == (w[j] >= 0);
      const double room = box.room(j, up);
      const double lim = l2 ? t * a : t;
      const double len = reachable ? nudge_dmin(lim, room) : room;
      d[j] = static_cast<float>(up ? len : -len);
      acc = l2 ? acc + len * len : nudge_dmax(acc, len);
    }
    part_a[lane] = acc;
  });
  // The norm of the step taken, as the paper's alpha weighs them: coordinates that do not move add nothing, even when
  // the box would let them (an unreachable plane's bound, or its solution t, can exceed every moving |d_j|).
  reduce_lanes(b, part_a, total + 3, !l2);
  if (l2)
    b.phase([&](int lane) {
      if (lane == 0) total[3] = sqrt(total[3]);
    });
  *norm_out = total + 3;
}

// The row's linearised boundary from its logits: g = z_y - z_t (returned), the logit gradient dz = e_y - e_t of g,
// and the prediction (the first largest logit).
NUDGE_HD float fab_boundary_one(const float* z, int K, int y, int t, float* dz, int* pred) {
  int top = 0;
  for (int j = 0; j < K; ++j) {
    if (z[j] > z[top]) top = j;
    dz[j] = 0.0f;
  }
  dz[y] = 1.0f;
  dz[t] = -1.0f;
  *pred = top;
  return z[y] - z[t];
}

// FAB's settings and where a run is.
struct FabStep {
  int iteration = 0;
  bool need_grad = true;  // false at the last evaluation: misclassified rows are still checked, nothing steps
  float alpha_max = 0.1f, eta = 1.05f, beta = 0.9f;
  Norm norm = Norm::Linf;
};

// Where one row's update reads and writes.
struct FabUpdateRow {
  FabEntry* entry;     // read, then rewritten in the last phase
  float* x;            // the evaluated iterate, [D]; the next one on return
  const float* x0;     // the clean point
  const float* w;      // the input gradient of g at x
  float g;
  bool misclassified;
  float eps;
  float* adv;          // the adversarial example, written when the entry breaks
  uint8_t* keep;       // !done after the update
};

// One FAB iteration of a row after its evaluation. Every lane takes the same branch from the state it read before
// the first barrier; lane 0 writes the new state and the keep flag (0 for a row already done) in the last phase.
template <class Block>
NUDGE_HD void fab_update_row(Block& b, const FabScratch& s, const FabUpdateRow& r, const FabStep& st, int D) {
  const FabEntry before = *r.entry;
  if (before.done) {  // uniform for the block; the row stays in a lagging list until a compaction reads its flag
    b.phase([&](int lane) {
      if (lane == 0) *r.keep = 0;
    });
    return;
  }
  const bool l2 = st.norm == Norm::L2;
  double* total = s.partial + 3 * kRowLanes;
  bool broken = false;
  if (r.misclassified) {
    b.phase([&](int lane) {
      double acc = 0;
      for (int i = lane; i < D; i += kRowLanes) {
        const double dv = static_cast<double>(r.x[i]) - r.x0[i];
        acc = l2 ? acc + dv * dv : nudge_dmax(acc, fabs(dv));
      }
      s.partial[lane] = acc;
    });
    reduce_lanes(b, s.partial, total, !l2);
    const double dist = l2 ? sqrt(*total) : *total;
    broken = dist <= r.eps;
    b.phase([&](int lane) {
      for (int i = lane; i < D; i += kRowLanes) {
        if (broken)
          r.adv[i] = r.x[i];
        else  // adversarial but too far: step back toward the clean point and keep shrinking
          r.x[i] = (1.0f - st.beta) * r.x0[i] + st.beta * r.x[i];
      }
    });
  } else if (st.need_grad) {
    double* n_i = nullptr;
    fab_project_row(b, s, r.w, -static_cast<double>(r.g), FabUnitBox{r.x}, D, l2, s.d_i, &n_i);
    const float ni = static_cast<float>(*n_i);
    // From x0 the plane is w.d = -g - w.(x0 - x).
    b.phase([&](int lane) {
      double acc = 0;
      for (int i = lane; i < D; i += kRowLanes) acc += static_cast<double>(r.w[i]) * (r.x0[i] - r.x[i]);
      s.partial[lane] = acc;
    });
    reduce_lanes(b, s.partial, total, false);
    // Every lane reads the total here; the projection's first phase is a barrier before its lane 0 rewrites it.
    const double c0 = -static_cast<double>(r.g) - *total;
    double* n_0 = nullptr;
    fab_project_row(b, s, r.w, c0, FabUnitBox{r.x0}, D, l2, s.d_0, &n_0);
    const float n0 = static_cast<float>(*n_0);
    const float a = nudge_fminf(ni / nudge_fmaxf(ni + n0, 1e-12f), st.alpha_max);
    b.phase([&](int lane) {
      for (int i = lane; i < D; i += kRowLanes)
        r.x[i] = clamp01((1.0f - a) * (r.x[i] + st.eta * s.d_i[i]) + a * (r.x0[i] + st.eta * s.d_0[i]));
    });
  }
  b.phase([&](int lane) {
    if (lane != 0) return;
    if (broken) {
      FabEntry next;
      next.done = 1;
      next.broken_step = st.iteration;
      *r.entry = next;
    }
    *r.keep = broken ? 0 : 1;
  });
}

}  // namespace nudge
