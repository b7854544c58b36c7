// Square's kernels, L-inf (square.cu) and L2 (square_l2.cu): the start, the candidates and their acceptance, so that
// an iteration of the search is queued with no host round trip. Their per-row code is host/core/square_rows.h and
// square_l2_rows.h, which the CPU attack runs too (host/attack/attack_square.cpp, attack_square_l2.cpp). Rows are
// positions in the live list (`list`), entries index the state.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "square_rows.h"

namespace nudge::cuda {

// Every entry's state; device memory.
struct SquareState {
  int entries = 0, H = 0, W = 0, K = 0;
  const float* x0 = nullptr;        // [entries, H*W]
  const int32_t* label = nullptr;   // [entries]
  const float* eps = nullptr;       // [entries]
  const uint32_t* point = nullptr;  // [entries]
  float* best = nullptr;            // [entries, H*W] each entry's best image (the start, then accepted candidates)
  SquareEntry* entry = nullptr;     // [entries]
  const double* patterns = nullptr; // L2: square_l2_pattern_table(min(H, W) - 1), device memory; null for L-inf
  uint64_t seed = 0;
  uint32_t attack = 0;  // AttackId::Square, a key of the draws (attacks.h is host code)
  int restart = 0;
};

// Entry e's key of the draws.
NUDGE_HD ApgdKey square_key(const SquareState& s, int e) {
  return ApgdKey{s.seed, s.attack, s.restart, s.point[e]};
}

// One iteration's rows: row i is entry list[i].
struct SquareRows {
  int count = 0;
  const int32_t* list = nullptr;  // [count]
  float* cand = nullptr;          // [count, H*W] the candidates, by row
  const float* logits = nullptr;  // [count, K] of the candidates (or, at iteration 0, of the best images by entry)
  uint8_t* keep = nullptr;        // [count] out of the acceptance: entry not done
};

// best of every entry = its start; entry states zeroed.
void square_start_cuda(const SquareState& s, cudaStream_t stream);
// cand of each row whose entry is not done = iteration it's candidate, windows of side `side` (1 <= side < H, W).
void square_propose_cuda(const SquareState& s, const SquareRows& r, int it, int side, cudaStream_t stream);
// L2 (square_l2_rows.h): best of every entry = its start; entry states zeroed. Needs s.patterns.
void square_l2_start_cuda(const SquareState& s, cudaStream_t stream);
// L2: cand of each row whose entry is not done = iteration it's candidate, windows of side `side` (odd, 3 <= side <
// min(H, W)).
void square_l2_propose_cuda(const SquareState& s, const SquareRows& r, int it, int side, cudaStream_t stream);
// Whether the L2 kernels' shared scratch (H*W + kApgdPartials doubles) fits a block: H*W up to ~5,300 pixels.
bool square_l2_fits(int H, int W);

// square_accept_row for each row: at it = 0 the rows are every entry in order and the logits are of the starts.
void square_accept_cuda(const SquareState& s, const SquareRows& r, int it, cudaStream_t stream);

}  // namespace nudge::cuda
