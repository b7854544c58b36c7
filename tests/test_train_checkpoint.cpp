// The pieces under nudge train's resume, on synthetic data (no MNIST needed): train_model resumed from any epoch's
// TrainProgress, through the checkpoint file's bytes, ends bit-identical to the run that was never stopped (standard
// and PGD-AT with the guard's kept model); the checkpoint round-trips exactly and refuses malformed files; the job
// spec names what differs; FileLock refuses a second holder and clears only its own file's dead temporaries.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "architecture.h"
#include "checkpoint.h"
#include "cpu_backend.h"
#include "errors.h"
#include "file_lock.h"
#include "safetensors.h"
#include "temp_dir.h"
#include "train.h"

namespace nudge {
namespace {

const char* kTinyArch = "1x28x28:conv2k3,relu,pool2,flatten,dense10";

// 96 random 28x28 images with random labels: enough for Adam to move every weight, and for the guard to check.
Dataset synthetic_data(uint32_t seed = 3) {
  Dataset d;
  d.count = 96;
  d.rows = d.cols = 28;
  std::mt19937 rng(seed);
  d.pixels.resize(static_cast<size_t>(d.count) * 28 * 28);
  for (uint8_t& p : d.pixels) p = static_cast<uint8_t>(rng() & 0xff);
  d.labels.resize(d.count);
  for (uint8_t& l : d.labels) l = static_cast<uint8_t>(rng() % 10);
  return d;
}

TrainOptions tiny_options(bool adversarial) {
  TrainOptions o;
  o.epochs = 3;
  o.batch = 16;
  o.seed = 11;
  o.progress = false;
  o.lr_schedule = LrSchedule::Cyclic;  // the lr differs in every batch, so a wrong schedule position shows
  if (adversarial) {
    o.adv.method = AdvMethod::Pgd;
    o.adv.eps = 0.1f;
    o.adv.steps = 2;
    o.adv.step_size = 0.05f;
    o.adv.check_count = 16;
    o.adv.check_steps = 2;
  }
  return o;
}

bool same_bits(const Model& a, const Model& b) {
  if (a.params.size() != b.params.size()) return false;
  for (size_t i = 0; i < a.params.size(); ++i)
    if (a.params[i].size() != b.params[i].size() ||
        std::memcmp(a.params[i].ptr(), b.params[i].ptr(), a.params[i].size() * sizeof(float)) != 0)
      return false;
  return true;
}

TrainCheckpoint checkpoint_of(const TrainProgress& p, const TrainOptions& opt, const Dataset& d) {
  TrainCheckpoint c;
  c.spec = train_spec(kTinyArch, opt, d);
  c.device = "test";
  c.progress = p;
  return c;
}

// Trains uninterrupted, keeping every epoch's progress, then resumes from each one on a fresh backend, the progress
// having gone through the checkpoint's bytes: every resumed run ends in the same weights and summary.
void expect_resume_from_every_epoch_matches(bool adversarial) {
  const Dataset d = synthetic_data();
  const TrainOptions opt = tiny_options(adversarial);
  const Architecture arch = Architecture::parse(kTinyArch);
  std::vector<TrainProgress> saved;
  TrainHooks record;
  record.epoch_done = [&](const TrainProgress& p) { saved.push_back(p); };
  Model whole = Model::glorot(arch, opt.seed);
  TrainSummary whole_sum;
  train_model(*make_cpu_backend(), whole, d, opt, &whole_sum, record);
  ASSERT_EQ(saved.size(), 3u);
  if (adversarial) {
    EXPECT_FALSE(saved[0].best.params.empty()) << "the guard's kept model is part of the progress";
  }
  for (int k = 1; k <= 2; ++k) {
    SCOPED_TRACE("resumed after epoch " + std::to_string(k));
    const TrainCheckpoint c = parse_checkpoint(serialize_checkpoint(checkpoint_of(saved[k - 1], opt, d)), "test");
    TrainHooks hooks;
    hooks.resume = &c.progress;
    Model resumed = Model::glorot(arch, opt.seed + 1);  // overwritten: the progress is what counts
    TrainSummary sum;
    train_model(*make_cpu_backend(), resumed, d, opt, &sum, hooks);
    EXPECT_TRUE(same_bits(whole, resumed));
    ASSERT_EQ(sum.epochs.size(), whole_sum.epochs.size());
    for (size_t e = 0; e < sum.epochs.size(); ++e) {
      EXPECT_EQ(sum.epochs[e].loss, whole_sum.epochs[e].loss) << "epoch " << e + 1;
      EXPECT_EQ(sum.epochs[e].check_robust, whole_sum.epochs[e].check_robust) << "epoch " << e + 1;
    }
    EXPECT_EQ(sum.kept_epoch, whole_sum.kept_epoch);
  }
}

TEST(TrainCheckpoint, StandardTrainingResumedFromAnyEpochEndsInTheSameWeights) {
  expect_resume_from_every_epoch_matches(false);
}

TEST(TrainCheckpoint, PgdTrainingWithTheGuardResumedFromAnyEpochEndsInTheSameWeights) {
  expect_resume_from_every_epoch_matches(true);
}

// The optimizer state is what a resume needs beyond the weights: without it the continued run differs.
TEST(TrainCheckpoint, TheAdamStateIsNeededAndCarriedExactly) {
  const Dataset d = synthetic_data();
  const TrainOptions opt = tiny_options(false);
  const Architecture arch = Architecture::parse(kTinyArch);
  std::vector<TrainProgress> saved;
  TrainHooks record;
  record.epoch_done = [&](const TrainProgress& p) { saved.push_back(p); };
  Model whole = Model::glorot(arch, opt.seed);
  train_model(*make_cpu_backend(), whole, d, opt, nullptr, record);
  EXPECT_EQ(saved[0].optimizer.step, 6) << "96 images in batches of 16";
  EXPECT_EQ(saved[0].optimizer.adam_m.size(), arch.param_count());
  TrainProgress reset = saved[0];
  std::fill(reset.optimizer.adam_m.begin(), reset.optimizer.adam_m.end(), 0.0f);
  std::fill(reset.optimizer.adam_v.begin(), reset.optimizer.adam_v.end(), 0.0f);
  reset.optimizer.step = 0;
  TrainHooks hooks;
  hooks.resume = &reset;
  Model resumed = Model::glorot(arch, opt.seed);
  train_model(*make_cpu_backend(), resumed, d, opt, nullptr, hooks);
  EXPECT_FALSE(same_bits(whole, resumed)) << "a fresh Adam state went unnoticed: the test proves nothing";
}

TEST(TrainCheckpoint, BytesRoundTripExactly) {
  const Dataset d = synthetic_data();
  const TrainOptions opt = tiny_options(true);
  std::vector<TrainProgress> saved;
  TrainHooks record;
  record.epoch_done = [&](const TrainProgress& p) { saved.push_back(p); };
  Model m = Model::glorot(Architecture::parse(kTinyArch), opt.seed);
  train_model(*make_cpu_backend(), m, d, opt, nullptr, record);
  TrainCheckpoint c = checkpoint_of(saved[1], opt, d);
  c.resumed_after = {1};
  c.progress.summary.epochs[0].images_per_s = 1.0 / 3;  // a double that needs all 17 digits
  const std::string bytes = serialize_checkpoint(c);
  const TrainCheckpoint back = parse_checkpoint(bytes, "test");
  EXPECT_EQ(serialize_checkpoint(back), bytes);
  EXPECT_EQ(back.progress.summary.epochs[0].images_per_s, 1.0 / 3);
  EXPECT_EQ(back.progress.epoch, 2);
  EXPECT_EQ(back.resumed_after, std::vector<int>{1});
  EXPECT_EQ(back.spec, c.spec);
  EXPECT_EQ(back.progress.optimizer.adam_v, c.progress.optimizer.adam_v);
  EXPECT_TRUE(same_bits(back.progress.best, c.progress.best));
}

// Each damage is refused as bad input naming the file, never trusted and never an internal error.
TEST(TrainCheckpoint, MalformedCheckpointsAreRefusedNamingTheFile) {
  const Dataset d = synthetic_data();
  const TrainOptions opt = tiny_options(false);
  std::vector<TrainProgress> saved;
  TrainHooks record;
  record.epoch_done = [&](const TrainProgress& p) { saved.push_back(p); };
  Model m = Model::glorot(Architecture::parse(kTinyArch), opt.seed);
  train_model(*make_cpu_backend(), m, d, opt, nullptr, record);
  const SafetensorsFile good = parse_safetensors(serialize_checkpoint(checkpoint_of(saved[0], opt, d)), "good");
  auto expect_refused = [](const SafetensorsFile& f, const std::string& needle) {
    try {
      parse_checkpoint(serialize_safetensors(f), "ckpt.bin");
      ADD_FAILURE() << "accepted; expected: " << needle;
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("ckpt.bin"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  SafetensorsFile f = good;
  f.metadata.erase("nudge.checkpoint");
  expect_refused(f, "is not a nudge train checkpoint");
  f = good;
  f.metadata["nudge.checkpoint"] = "{\"version\": 1";
  expect_refused(f, "malformed");
  f = good;
  f.metadata["nudge.checkpoint"].replace(f.metadata["nudge.checkpoint"].find("\"version\":1"), 11, "\"version\":9");
  expect_refused(f, "checkpoint format 9");
  for (const char* prefix : {"adam.m.", "adam.v."}) {
    f = good;
    for (size_t i = 0; i < f.tensors.size(); ++i)
      if (f.tensors[i].first.rfind(prefix, 0) == 0) {
        f.tensors.erase(f.tensors.begin() + i);
        break;
      }
    expect_refused(f, std::string("tensor ") + prefix);
  }
  f = good;
  for (auto& [name, t] : f.tensors)
    if (name.rfind("adam.v.", 0) == 0) t.data[0] = -1.0f;
  expect_refused(f, "which Adam never makes");
  f = good;
  f.tensors.emplace_back("stray", Tensor({2}));
  expect_refused(f, "unexpected tensor stray");
  f = good;
  f.metadata["nudge.architecture"] = "1x28x28:flatten,dense10";
  expect_refused(f, "has shape");
}

TEST(TrainSpec, NamesTheFirstDifferenceAndCountsTheRest) {
  const Dataset d = synthetic_data();
  const TrainOptions opt = tiny_options(true);
  const TrainSpec spec = train_spec(kTinyArch, opt, d);
  EXPECT_EQ(spec_difference(spec, train_spec(kTinyArch, opt, synthetic_data())), "");
  TrainOptions other = opt;
  other.batch = 8;
  other.adv.eps = 0.2f;
  EXPECT_EQ(spec_difference(spec, train_spec(kTinyArch, other, d)),
            "the checkpoint was made with --batch 16, this command says 8 (and 1 more: --eps)");
  Dataset changed = d;
  changed.pixels[1234] ^= 1;
  const std::string data_diff = spec_difference(spec, train_spec(kTinyArch, opt, changed));
  EXPECT_EQ(data_diff.find("the checkpoint was made with training data 96 images of 28x28, FNV-1a "), 0u) << data_diff;
  TrainOptions standard = opt;
  standard.adv = AdversarialConfig();
  const std::string adv_diff = spec_difference(spec, train_spec(kTinyArch, standard, d));
  EXPECT_EQ(adv_diff.find("the checkpoint was made with --adversarial pgd, this command says none (and "), 0u)
      << adv_diff;
  EXPECT_NE(adv_diff.find("--eps"), std::string::npos) << adv_diff;
}

TEST(FileLock, ASecondHolderIsRefusedAndARemovedLockFileIsTakenAfresh) {
  testing_support::TempDir dir("nudge_file_lock_");
  const std::string path = dir.file("m.safetensors.lock");
  {
    const FileLock first(path, "--out m.safetensors", "first job", true);
    try {
      const FileLock second(path, "--out m.safetensors", "second job", true);
      ADD_FAILURE() << "a second lock on the same file was granted";
    } catch (const InputError& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.find("--out m.safetensors is in use by another nudge job (pid " + std::to_string(::getpid()) + " on "),
                0u)
          << msg;
      EXPECT_NE(std::string(e.what()).find(": first job)"), std::string::npos) << e.what();
    }
  }
  EXPECT_FALSE(std::filesystem::exists(path)) << "remove_on_release";
  EXPECT_NO_THROW(FileLock(path, "--out m.safetensors", "third job", false));
  EXPECT_TRUE(std::filesystem::exists(path));
}

TEST(FileLock, StaleTemporariesOfOneFileOnly) {
  testing_support::TempDir dir("nudge_file_lock_");
  const std::string mine = "m.safetensors.tmp." + std::to_string(::getpid());
  for (const std::string name : {"m.safetensors.tmp.12345", "m.safetensors.checkpoint.tmp.12345",
                                 "other.safetensors.tmp.12345", "m.safetensors.tmp.x1", mine.c_str()})
    std::ofstream(dir.file(name)) << "x";
  EXPECT_EQ(remove_stale_temporaries(dir.path().string(), "m.safetensors"), 1);
  EXPECT_FALSE(std::filesystem::exists(dir.file("m.safetensors.tmp.12345")));
  for (const std::string name : {"m.safetensors.checkpoint.tmp.12345", "other.safetensors.tmp.12345",
                                 "m.safetensors.tmp.x1", mine.c_str()})
    EXPECT_TRUE(std::filesystem::exists(dir.file(name))) << name;
  EXPECT_EQ(remove_stale_temporaries(dir.path().string()), 2) << "every dead job's temporary, ours excepted";
}

}  // namespace
}  // namespace nudge
