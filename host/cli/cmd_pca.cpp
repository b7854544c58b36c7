// nudge pca: the mean and leading principal components of a dataset split's images, written as a basis file that
// `--pca` (optimize, visualize) uses as a data-manifold prior. The committed data/models/mnist_pca64.safetensors is
// `nudge pca --components 64` on MNIST's training split.
#include <cstdio>
#include <memory>
#include <numeric>
#include <vector>

#include "commands.h"
#include "dataset.h"
#include "pca_basis.h"

namespace nudge::cli {

Runner add_pca_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("pca", "principal components of a dataset's images, for --pca priors");
  auto data = std::make_shared<std::string>("data/mnist");
  auto split = std::make_shared<std::string>("train");
  auto components = std::make_shared<int>(64);
  auto out = std::make_shared<std::string>("data/models/mnist_pca64.safetensors");
  cmd->add_option("--data", *data, "dataset folder (IDX files)")->capture_default_str();
  cmd->add_option("--split", *split, "train | test")->capture_default_str()->check(CLI::IsMember({"train", "test"}));
  cmd->add_option("--components", *components, "how many leading components to keep")->capture_default_str();
  cmd->add_option("--out", *out, "basis file to write (safetensors; written atomically)")->capture_default_str();
  return [=]() {
    const Dataset d = load_dataset(*data, *split);
    const int D = d.rows * d.cols;
    std::vector<float> images(static_cast<size_t>(d.count) * D);
    for (int i = 0; i < d.count; ++i) d.image_as_float(i, images.data() + static_cast<size_t>(i) * D);
    // fit_pca refuses a --components outside [1, D] by name.
    PcaBasis basis = fit_pca(images.data(), d.count, D, *components);
    basis.source = *data + " " + *split + " split, " + std::to_string(d.count) + " images";
    write_pca_basis(*out, basis);
    const double kept = std::accumulate(basis.variances.begin(), basis.variances.end(), 0.0);
    std::printf("%s: %d components of %d pixels from %s; they explain %.1f%% of the variance (largest %.3g, smallest %.3g)\n",
                out->c_str(), basis.components, D, basis.source.c_str(), 100.0 * kept / basis.total_variance,
                static_cast<double>(basis.variances.front()), static_cast<double>(basis.variances.back()));
    return 0;
  };
}

}  // namespace nudge::cli
