#include "loss_cases.h"

namespace nudge::testing_support {

const LossCase kLossCases[] = {
    {"ce one-hot", LossKind::CrossEntropy, TargetKind::OneHot, 0},
    {"ce soft", LossKind::CrossEntropy, TargetKind::Soft, 0},
    {"kl soft", LossKind::KL, TargetKind::Soft, 0},
    {"cw one-hot", LossKind::CarliniWagner, TargetKind::OneHot, 5},
    {"cw untargeted", LossKind::CarliniWagner, TargetKind::Untargeted, 5},
    {"ce untargeted", LossKind::CrossEntropy, TargetKind::Untargeted, 0},
};

}  // namespace nudge::testing_support
