// Loading a model and checking it fits the data it will see, shared by the commands.
#pragma once
#include <string>

#include "dataset.h"
#include "model.h"

namespace nudge::cli {

// Throws InputError unless the model takes 1 x rows x cols inputs and has at least `classes` outputs.
void check_model_fits(const Model& m, const std::string& model_path, int rows, int cols, int classes);

}  // namespace nudge::cli
