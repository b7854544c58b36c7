// A line chart of robust accuracy against eps, one curve per cascade stage (clean accuracy, then after each
// attack), as an RGB PNG written atomically.
#pragma once
#include <string>
#include <vector>

namespace nudge {

struct PlotCurve {
  std::string name;
  std::vector<double> y;  // one value in [0,1] per x
};

void write_accuracy_plot(const std::string& path, const std::string& title, const std::vector<double>& x,
                         const std::vector<PlotCurve>& curves);

}  // namespace nudge
