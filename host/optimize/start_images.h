// Where an optimize job's start images come from: generated noise (a pure function of seed and image index, so
// image i is the same whatever the chunking, threads, device or shard), gray, dataset images, image files or draws
// from a PCA basis' Gaussian.
#pragma once
#include <string>
#include <vector>

#include "dataset.h"
#include "optimize_job.h"

namespace nudge {

class StartImages {
 public:
  // `data` is needed for Test/Train starts (and must outlive this object); `D` is the model's input size.
  StartImages(const OptimizeJob& job, const Dataset* data, int width, int height);

  long count() const { return count_; }
  int label(long i) const;               // -1 when unknown
  std::string name(long i) const;        // "noise:17", "test:307", "digits/a.png"
  long dataset_index(long i) const;      // index into the split, -1 for other sources
  void fill(long i, float* out) const;   // writes width*height pixels in [0,1]

 private:
  OptimizeJob job_;
  const Dataset* data_;
  int width_, height_;
  long count_ = 0;
  std::vector<std::string> files_;
  std::vector<std::vector<float>> file_pixels_;
};

// Whether a file name ends in .png or .pgm, in any case (A.PNG too).
bool has_image_extension(const std::string& name);

// Uniform noise in [0,1) for image `index`: pixel p is counter_uniform(seed, kStreamNoise, index, p).
void noise_image(uint64_t seed, long index, int D, float* out);
// 0.5 + sigma * N(0,1), clamped to [0,1] (Box-Muller on two counter uniforms per pair of pixels).
void gauss_image(uint64_t seed, long index, int D, float sigma, float* out);

}  // namespace nudge
