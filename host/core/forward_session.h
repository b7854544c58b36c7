// Forward passes of candidates that each differ a little from a kept base image: the Square attack's queries, where
// each candidate changes one small window of its entry's best image so far. A backend that keeps every base's
// activations recomputes only what the change reaches; the logits must be exactly those of a full forward pass
// (Backend::logit_backprop with grad null), so that an attack's decisions, and results, do not depend on which
// session ran them.
#pragma once
#include <cstdint>
#include <memory>

namespace nudge {

class Backend;

class ForwardSession {
 public:
  virtual ~ForwardSession() = default;
  // The session's n bases, x [n, D] (n from begin_forward_session); their logits [n, K].
  virtual void set_bases(const float* x, float* logits) = 0;
  // Logits [m, K] of candidates cand [m, D], candidate i for base slots[i] (distinct slots). The candidates are
  // pending until resolve.
  virtual void evaluate(const int* slots, const float* cand, int m, float* logits) = 0;
  // keep [m] of the last evaluate: candidate i replaces its slot's base where keep[i] != 0.
  virtual void resolve(const uint8_t* keep) = 0;
};

// A session that keeps nothing and runs every base and candidate through backend.logit_backprop (models of `classes`
// outputs): any backend's default.
std::unique_ptr<ForwardSession> make_plain_forward_session(Backend& backend, int n, int classes);

}  // namespace nudge
