#include "engine_rows.h"

#include <utility>

#include "architecture.h"
#include "cpu_backend.h"
#include "start_images.h"

namespace nudge::testing_support {

const Model& small_model() {
  static const Model m = Model::glorot(Architecture::parse("1x28x28:conv4k3,relu,pool2,flatten,dense10"), 7);
  return m;
}

std::vector<Row> run_job(const Model& model, const OptimizeJob& job, const Dataset* data, EngineStats* stats_out) {
  auto backend = make_cpu_backend();
  backend->load_model(model);
  const StartImages starts(job, data, model.arch.input.w, model.arch.input.h);
  CollectSink sink(model.arch.input.size());
  const EngineStats stats = run_optimize(*backend, model, job, starts, sink, false);
  if (stats_out) *stats_out = stats;
  return std::move(sink.rows);
}

OptimizeJob noise_job(long count, int steps) {
  OptimizeJob job;
  job.init = InitKind::Noise;
  job.count = count;
  job.target = "all";
  job.steps = steps;
  job.seed = 42;
  return job;
}

}  // namespace nudge::testing_support
