#include "model_loading.h"

#include "errors.h"

namespace nudge::cli {

void check_model_fits(const Model& m, const std::string& path, int rows, int cols, int classes) {
  const Shape3 in = m.arch.input;
  if (in.c != 1 || in.h != rows || in.w != cols)
    throw InputError(path + " takes " + std::to_string(in.c) + "x" + std::to_string(in.h) + "x" + std::to_string(in.w) +
                     " inputs; the images are 1x" + std::to_string(rows) + "x" + std::to_string(cols));
  if (m.arch.num_classes() < classes)
    throw InputError(path + " has " + std::to_string(m.arch.num_classes()) + " outputs; the data has " +
                     std::to_string(classes) + " classes");
}

}  // namespace nudge::cli
