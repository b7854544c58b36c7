#include "forward_session.h"

#include <algorithm>

#include "backend.h"

namespace nudge {

namespace {

class PlainForwardSession : public ForwardSession {
 public:
  PlainForwardSession(Backend& backend, int n, int classes) : backend_(backend), n_(n), K_(classes) {}

  void set_bases(const float* x, float* logits) override { forward(x, n_, logits); }
  void evaluate(const int*, const float* cand, int m, float* logits) override { forward(cand, m, logits); }
  void resolve(const uint8_t*) override {}

 private:
  void forward(const float* x, int m, float* logits) {
    backend_.logit_backprop(x, m, [&](int first, int count, const float* z, float*) {
      std::copy_n(z, static_cast<size_t>(count) * K_, logits + static_cast<size_t>(first) * K_);
    }, nullptr);
  }

  Backend& backend_;
  int n_, K_;
};

}  // namespace

std::unique_ptr<ForwardSession> make_plain_forward_session(Backend& backend, int n, int classes) {
  return std::make_unique<PlainForwardSession>(backend, n, classes);
}

}  // namespace nudge
