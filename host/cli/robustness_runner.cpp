#include "robustness_runner.h"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>

#include "atomic_file.h"
#include "backend.h"
#include "commands.h"
#include "dataset.h"
#include "errors.h"
#include "model_file.h"
#include "exit_status.h"
#include "image_io.h"
#include "interrupt.h"
#include "job_journal.h"
#include "job_runner.h"
#include "job_setup.h"
#include "json_text.h"
#include "make_backend.h"
#include "model_loading.h"
#include "optimize_report.h"
#include "output_lock.h"
#include "rank_collector.h"
#include "rank_world.h"
#include "result_commit.h"
#include "robustness_journal.h"
#include "robustness_plot.h"
#include "start_images.h"

namespace nudge::cli {

namespace {

bool exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// The evaluation's inputs, the same on every rank.
struct Loaded {
  std::unique_ptr<Model> model;
  std::unique_ptr<Dataset> data;
  std::vector<float> x;
  std::vector<int32_t> y;
  std::vector<int> index;  // dataset index of each point
  std::vector<uint32_t> keys;  // the same, as the attacks' draw keys: a point draws alike in any job (evaluate_robustness)
  int n = 0, H = 0, W = 0, D = 0, K = 0, E = 0;
  std::unique_ptr<Backend> backend;
};

void load(const RobustnessRun& run, Loaded& l) {
  l.model = std::make_unique<Model>(load_inference_model(run.model));
  l.data = std::make_unique<Dataset>(load_dataset(run.data, run.split));
  check_model_fits(*l.model, run.model, l.data->rows, l.data->cols, 10);
  l.K = l.model->arch.num_classes();
  const int targets = std::max(run.cfg.apgd_t.targets, run.cfg.fab_t.targets);
  if (targets > l.K - 1)
    throw InputError("--targets " + std::to_string(targets) + ": the model has only " + std::to_string(l.K - 1) +
                     " classes besides the label");
  // The points are chosen, and checked against the split, as `nudge optimize --init test|train` chooses its start
  // images.
  const StartImages points(run.pick, l.data.get(), l.data->cols, l.data->rows);
  l.H = l.data->rows;
  l.W = l.data->cols;
  l.D = l.H * l.W;
  l.n = static_cast<int>(points.count());
  l.E = static_cast<int>(run.cfg.eps.size());
  l.x.resize(static_cast<size_t>(l.n) * l.D);
  l.y.resize(l.n);
  l.index.resize(l.n);
  for (int i = 0; i < l.n; ++i) {
    points.fill(i, l.x.data() + static_cast<size_t>(i) * l.D);
    l.y[i] = points.label(i);
    l.index[i] = static_cast<int>(points.dataset_index(i));
  }
  l.keys.assign(l.index.begin(), l.index.end());
}

// Evaluates points [from, end) slice by slice, handing each slice's block to `keep`; returns the seconds spent.
double evaluate_part(const RobustnessRun& run, Loaded& l, long from, long end, bool progress,
                     const std::function<void(const std::string&)>& keep) {
  RobustnessConfig cfg = run.cfg;
  cfg.progress = progress;
  const auto t0 = std::chrono::steady_clock::now();
  const long slices = (end - from + cfg.chunk - 1) / cfg.chunk;
  for (long b = from, s = 1; b < end; b += cfg.chunk, ++s) {
    const int m = static_cast<int>(std::min<long>(cfg.chunk, end - b));
    if (progress && slices > 1)
      std::fprintf(stderr, "nudge robustness: points %ld to %ld (slice %ld of %ld)\n", b, b + m - 1, s, slices);
    const RobustnessResult slice = evaluate_robustness(*l.backend, l.x.data() + static_cast<size_t>(b) * l.D,
                                                       l.y.data() + b, m, l.H, l.W, l.K, cfg, l.keys.data() + b);
    keep(encode_robustness_block(slice, b));
    throw_if_interrupted("the robustness evaluation");
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The root's journal: one file per part, kept or continued (--resume) in OUT/.nudge-journal.
class PartJournals {
 public:
  PartJournals(const std::string& out, const std::vector<RobustnessJournalHeader>& headers, bool resume, bool quiet)
      : out_(out), headers_(headers) {
    const std::string folder = journal_folder(out);
    bool any = false;
    for (const auto& h : headers) any = any || exists(robustness_journal_path(out, h.part, h.parts));
    if (resume && any) {
      for (const auto& h : headers) {
        const std::string path = robustness_journal_path(out, h.part, h.parts);
        if (!exists(path)) {
          writers_.push_back(std::make_unique<RobustnessJournalWriter>(path, h));
          continue;
        }
        RobustnessJournalReader reader(path);
        const RobustnessJournalHeader& was = reader.header();
        const std::string diff = spec_differences(was.job, h.job);
        if (!diff.empty())
          throw InputError("--resume: " + out + " holds an interrupted evaluation that differs from this one (" + diff +
                           "); run it as it was, or leave out --resume to start afresh");
        if (was.total_points != h.total_points || was.first_point != h.first_point || was.points != h.points ||
            was.eps != h.eps || was.pixels != h.pixels || was.classes != h.classes || was.attacks != h.attacks)
          throw InputError("--resume: the journal " + path + " does not match this evaluation's points or model; "
                           "leave out --resume to start afresh");
        RobustnessResult slice;
        long first = 0;
        while (reader.next(slice, &first)) {
        }
        writers_.push_back(std::make_unique<RobustnessJournalWriter>(path, reader.valid_bytes(), reader.points_read()));
      }
      return;
    }
    if (resume) {
      std::error_code ec;
      for (const auto& e : std::filesystem::directory_iterator(folder, ec)) {
        int k = 0, m = 0;
        if (std::sscanf(e.path().filename().c_str(), "robustness-%d-of-%d.nudge", &k, &m) == 2 && m != headers.front().parts)
          throw InputError("--resume: the journal in " + out + " was written as " + std::to_string(m) + " parts (mpirun -np " +
                           std::to_string(m) + "); this evaluation runs as " + std::to_string(headers.front().parts) +
                           ": resume it as it was run, or leave out --resume to start afresh");
      }
      // A scheduler's requeue runs the same command, --resume and all, also after it has finished.
      if (exists(out + "/summary.json")) {
        const nlohmann::json s = nlohmann::json::parse(read_file(out + "/summary.json", 64 << 20), nullptr, false);
        if (s.is_object() && s.contains("job") && s["job"] == headers.front().job) {
          complete_ = true;
          return;
        }
      }
      if (!quiet)
        std::fprintf(stderr, "nudge: --resume: %s holds no journal of this evaluation; starting from its first point\n",
                     out.c_str());
    }
    if (exists(folder)) remove_flat_folder(folder);
    if (::mkdir(folder.c_str(), 0777) != 0 && errno != EEXIST)
      throw IoError("I/O error: cannot create the journal folder " + folder + ": " + std::strerror(errno));
    for (const auto& h : headers)
      writers_.push_back(std::make_unique<RobustnessJournalWriter>(robustness_journal_path(out, h.part, h.parts), h));
  }
  // --resume of a folder whose summary.json is this very evaluation's: nothing to do.
  bool complete() const { return complete_; }
  RobustnessJournalWriter& writer(size_t part) { return *writers_.at(part); }
  // The points the parts hold on disk (also after read_all closed them), for the note of a failed evaluation.
  long kept() const {
    if (writers_.empty()) return closed_points_;
    long k = 0;
    for (const auto& w : writers_) k += w->points_written();
    return k;
  }
  // Every part, read back in order, into one result.
  RobustnessResult read_all(const Loaded& l, const std::vector<AttackId>& attacks) {
    closed_points_ = kept();
    writers_.clear();  // flushed and closed
    RobustnessResult whole = empty_robustness_result(l.n, l.E, l.D, l.K, attacks);
    for (const auto& h : headers_) {
      RobustnessJournalReader reader(robustness_journal_path(out_, h.part, h.parts));
      RobustnessResult slice;
      long first = 0;
      while (reader.next(slice, &first)) place_slice(whole, 0, slice, first);
      if (reader.points_read() != h.points || reader.damaged_tail())
        throw InternalError("the robustness journal of part " + std::to_string(h.part) + " read back " +
                            std::to_string(reader.points_read()) + " of its " + std::to_string(h.points) + " points");
    }
    for (int i = 0; i < l.n; ++i)
      if (whole.label[i] != l.y[i]) throw InternalError("the journal's label of point " + std::to_string(i) + " is not its own");
    return whole;
  }
  void remove() {
    writers_.clear();
    remove_flat_folder(journal_folder(out_));
  }

 private:
  std::string out_;
  std::vector<RobustnessJournalHeader> headers_;
  std::vector<std::unique_ptr<RobustnessJournalWriter>> writers_;
  long closed_points_ = 0;
  bool complete_ = false;
};

void write_results_csv(const std::string& path, const RobustnessResult& r, const std::vector<int>& indices,
                       const std::vector<float>& eps) {
  AtomicFile f(path);
  std::string head = "index,label,clean_pred";
  for (float e : eps) {
    char b[32];
    std::snprintf(b, sizeof b, "%g", e);
    const std::string t = std::string("_") + b;
    head += ",robust" + t + ",attack" + t + ",restart" + t + ",step" + t + ",linf" + t + ",l2" + t;
  }
  f.write(head + "\n");
  const int E = static_cast<int>(eps.size());
  char buf[160];
  for (int p = 0; p < r.points; ++p) {
    std::string line = std::to_string(indices[p]) + "," + std::to_string(r.label[p]) + "," + std::to_string(r.clean_pred[p]);
    for (int j = 0; j < E; ++j) {
      const size_t e = static_cast<size_t>(p) * E + j;
      const char* who = r.attack[e] ? attack_name(static_cast<AttackId>(r.attack[e])) : r.clean_pred[p] != r.label[p] ? "clean" : "";
      // who is one of a fixed set of names: no CSV quoting needed.
      std::snprintf(buf, sizeof buf, ",%d,%s,%d,%d,%.6g,%.6g", static_cast<int>(r.robust[e]), who, r.restart[e], r.step[e],
                    r.linf[e], r.l2[e]);
      line += buf;
    }
    f.write(line + "\n");
  }
  f.commit();
}

// Writes the set into the staging folder and commits it; returns the robust accuracy per eps.
std::vector<double> write_results(const RobustnessRun& run, const Loaded& l, const RobustnessResult& r,
                                  const nlohmann::json& job, const nlohmann::json& run_info) {
  const int n = l.n, E = l.E;
  ResultStaging staging(run.out);
  write_results_csv(staging.path("results.csv"), r, l.index, run.cfg.eps);
  write_npy_f32(staging.path("images.npy"), {static_cast<int64_t>(n) * E, l.H, l.W}, r.images.data());
  // Everything here is a function of the points' results: timing and device are in run.json.
  nlohmann::json s = run.spec;
  s["job"] = job;
  s["points"] = n;
  const double clean = n ? static_cast<double>(r.clean_correct) / n : 0.0;
  s["clean_accuracy"] = clean;
  std::vector<double> final_robust(E, clean);
  std::vector<PlotCurve> curves{{"clean", std::vector<double>(E + 1, clean)}};  // every curve starts at eps 0
  for (const StageStats& g : r.stages) {
    nlohmann::json js;
    js["attack"] = attack_name(g.attack);
    js["attacked"] = g.attacked;
    std::vector<double> acc;
    for (int j = 0; j < E; ++j) acc.push_back(n ? static_cast<double>(g.robust_after[j]) / n : 0.0);
    js["robust_accuracy_after"] = acc;
    js[g.attack == AttackId::Square ? "queries" : "image_steps"] = g.cost;
    s["stages"].push_back(js);
    std::vector<double> curve{clean};
    curve.insert(curve.end(), acc.begin(), acc.end());
    curves.push_back({std::string("+") + attack_name(g.attack), curve});
    final_robust = acc;
  }
  // Recomputed from the per-point results, which the re-check vouched for: the number users cite.
  std::vector<double> recount(E, 0);
  for (size_t e = 0; e < r.robust.size(); ++e) recount[e % E] += r.robust[e];
  for (int j = 0; j < E; ++j) {
    recount[j] = n ? recount[j] / n : 0.0;
    if (std::fabs(recount[j] - final_robust[j]) > 1e-12)
      throw InternalError("robust accuracy from the stages and from the points disagree");
  }
  s["robust_accuracy"] = recount;
  std::vector<double> xs{0.0};
  xs.insert(xs.end(), run.cfg.eps.begin(), run.cfg.eps.end());
  write_accuracy_plot(staging.path("robustness.png"),
                      "robust accuracy (" + run.spec.value("norm", std::string()) + ", " + std::to_string(n) + " points)", xs,
                      curves);
  commit_results(staging, s, run_info);
  return recount;
}

// Seconds per stage, summed over the slices and ranks that ran it.
nlohmann::json stage_seconds(const RobustnessResult& r) {
  nlohmann::json out = nlohmann::json::array();
  for (const StageStats& g : r.stages) out.push_back({{"attack", attack_name(g.attack)}, {"seconds", g.seconds}});
  return out;
}

}  // namespace

int run_robustness(const RobustnessRun& run) {
  const dist::World& w = dist::world();
  const bool root = w.rank == 0;
  Loaded l;
  std::optional<CreatedFolders> made;
  std::optional<OutputLock> lock;
  std::unique_ptr<PartJournals> journals;
  std::vector<RobustnessJournalHeader> headers;
  nlohmann::json job;
  std::vector<long> done(w.size, 0);
  dist::Outcome mine;
  std::string inputs;
  try {
    load(run, l);
    inputs = run.model + "=" + file_digest(run.model) + "\n";
    if (root) {
      made.emplace(ensure_output_dir(run.out));
      lock.emplace(run.out, command_line());
      report_lock_cleanup(*lock, run.out, run.quiet);
      job = run.spec;
      job["model_digest"] = file_digest(run.model);
      job = nlohmann::json::parse(json_text(job));  // as written to disk
      std::vector<uint32_t> attacks;
      for (AttackId a : run.cfg.attacks) attacks.push_back(static_cast<uint32_t>(a));
      for (int r = 0; r < w.size; ++r) {
        const PartRange part = part_range(l.n, r, w.size);
        headers.push_back({job, l.n, part.first, part.end - part.first, r, w.size, l.E, l.D, l.K, attacks});
      }
    }
    l.backend = make_backend(run.device);
    l.backend->load_model(*l.model);
    if (root) {
      journals = std::make_unique<PartJournals>(run.out, headers, run.resume, run.quiet);
      for (int r = 0; r < w.size; ++r) done[r] = journals->complete() ? -1 : journals->writer(r).points_written();
    }
  } catch (...) {
    const ExitStatus e = exit_status_of(std::current_exception());
    mine.code = e.code;
    mine.message = e.message;
  }
  const dist::Outcome first = dist::first_failure(mine);
  if (first.code != 0)
    throw ExitWith(first.code, !root ? "" : first.rank == 0 ? first.message
                                       : "rank " + std::to_string(first.rank) + " of " + std::to_string(w.size) + ": " + first.message);
  check_same_inputs_as_root(inputs);
  const long my_done = dist::scatter_from_root(done);
  if (my_done < 0) {  // the folder already holds this evaluation's results
    if (!root) throw ExitWith(0, "");
    made->keep();
    std::printf("%s already holds the complete results of this evaluation; nothing to resume\n", run.out.c_str());
    return 0;
  }
  const PartRange part = part_range(l.n, w.rank, w.size);
  if (!root) {
    try {
      const double seconds = evaluate_part(run, l, part.first + my_done, part.end, false, send_block_to_root);
      send_done_to_root({{"rank", w.rank}, {"device", l.backend->name()}, {"points_evaluated", part.end - part.first - my_done},
                         {"points_from_journal", my_done}, {"wall_seconds", seconds}});
    } catch (...) {
      send_failure_to_root(std::current_exception());
    }
    wait_for_root_commit();
    throw ExitWith(0, "");
  }

  long replayed = 0;
  for (long d : done) replayed += d;
  if (!run.quiet) {
    std::fprintf(stderr, "nudge robustness: %d points x %d eps, %s, on %s\n", l.n, l.E,
                 run.spec.value("attacks", std::string()).c_str(),
                 w.size > 1 ? (std::to_string(w.size) + " MPI ranks (rank 0: " + l.backend->name() + ")").c_str()
                            : l.backend->name().c_str());
  }
  if (replayed > 0) std::fprintf(stderr, "nudge: resuming: %ld of %d points were in the journal\n", replayed, l.n);
  RankCollector ranks(
      w.size, [&](int rank, const std::string& block) { journals->writer(rank).append_block(block); },
      [&](int rank, const ExitStatus& why) {
        const long kept = journals->kept();
        try {
          nlohmann::json s = {{"complete", false}, {"job", job}, {"points_total", l.n}, {"points_kept", kept},
                              {"failure", why.message}, {"resume", "run the same command with --resume"}};
          if (w.size > 1) s["failed_rank"] = rank;
          write_file_atomically(run.out + "/summary.incomplete.json", json_text(s, 2) + "\n");
        } catch (...) {
        }
        const std::string who = rank == 0 ? "" : "rank " + std::to_string(rank) + " of " + std::to_string(w.size) + ": ";
        std::fprintf(stderr, "nudge: %s%s; %ld of %d points are kept in %s's journal: run the same command with --resume "
                     "to continue\n", who.c_str(), why.message.c_str(), kept, l.n, run.out.c_str());
      });
  const auto t0 = std::chrono::steady_clock::now();
  ranks.start();
  try {
    const double seconds = evaluate_part(run, l, part.first + done[0], part.end, !run.quiet,
                                         [&](const std::string& block) { journals->writer(0).append_block(block); });
    ranks.set_own_stats({{"rank", 0}, {"device", l.backend->name()}, {"points_evaluated", part.end - part.first - done[0]},
                         {"points_from_journal", done[0]}, {"wall_seconds", seconds}});
  } catch (const Interrupted& e) {
    ranks.fail(0, {128 + e.signal, e.what()});
  } catch (...) {
    ranks.fail(0, exit_status_of(std::current_exception()));
  }
  ranks.join();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  RobustnessResult r;
  std::vector<double> robust;
  nlohmann::json run_info;
  try {
    r = journals->read_all(l, run.cfg.attacks);
    run_info = {{"device", w.size > 1 ? std::to_string(w.size) + " MPI ranks" : l.backend->name()},
                {"path", l.backend->is_gpu() ? "apgd, fab-t and square on the device (begin_apgd, begin_fab, begin_square)"
                                             : "host"},
                {"ranks", ranks.stats()},
                {"points_from_journal", replayed},
                {"stages", stage_seconds(r)},
                {"wall_seconds", seconds},
                {"command", command_line()}};
    robust = write_results(run, l, r, job, run_info);
  } catch (...) {
    ranks.fail(0, exit_status_of(std::current_exception()));
  }
  // Committed: from here on a failure is not the evaluation's (the folder holds its complete results).
  release_ranks();
  made->keep();
  journals->remove();
  for (int j = 0; j < l.E; ++j)
    std::printf("eps %g: clean %.2f%%, robust %.2f%%\n", run.cfg.eps[j], l.n ? 100.0 * r.clean_correct / l.n : 0.0,
                100 * robust[j]);
  std::printf("%d points in %.1fs on %s; results in %s\n", l.n, seconds, run_info["device"].get<std::string>().c_str(),
              run.out.c_str());
  return 0;
}

}  // namespace nudge::cli
