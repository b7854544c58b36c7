#include "start_images.h"

#include <dirent.h>

#include <algorithm>
#include <cctype>
#include <cmath>

#include "counter_normal.h"
#include "errors.h"
#include "image_io.h"

namespace nudge {

bool has_image_extension(const std::string& name) {
  auto ends = [&](const char* ext) {
    const std::string x = ext;
    return name.size() > x.size() && std::equal(x.rbegin(), x.rend(), name.rbegin(), [](char lower, char c) {
             return std::tolower(static_cast<unsigned char>(c)) == lower;
           });
  };
  return ends(".png") || ends(".pgm");
}

void noise_image(uint64_t seed, long index, int D, float* out) {
  counter_uniform_fill(seed, kStreamNoise, static_cast<uint64_t>(index), D, out);
}

void gauss_image(uint64_t seed, long index, int D, float sigma, float* out) {
  for (int p = 0; p < D; p += 2) {
    double z[2];
    counter_normal_pair(seed, kStreamGauss, static_cast<uint64_t>(index), static_cast<uint32_t>(p >> 1), z);
    for (int j = 0; j < 2 && p + j < D; ++j)
      out[p + j] = static_cast<float>(std::min(1.0, std::max(0.0, 0.5 + sigma * z[j])));
  }
}

StartImages::StartImages(const OptimizeJob& job, const Dataset* data, int width, int height)
    : job_(job), data_(data), width_(width), height_(height) {
  switch (job.init) {
    case InitKind::Noise:
    case InitKind::Gauss:
    case InitKind::Gray: count_ = job.count; break;
    case InitKind::Pca:
      if (!job.reg.pca) throw InputError("--init pca needs a basis: give --pca FILE (made by nudge pca)");
      if (job.reg.pca->pixels != width * height)
        throw InputError("--pca " + job.reg.pca_path + " has images of " + std::to_string(job.reg.pca->pixels) +
                         " pixels; the model takes " + std::to_string(width * height));
      count_ = job.count;
      break;
    case InitKind::Test:
    case InitKind::Train: {
      if (!data) throw InternalError("dataset start images without a dataset");
      if (data->rows != height || data->cols != width)
        throw InputError("the dataset's images are " + std::to_string(data->cols) + "x" + std::to_string(data->rows) +
                         "; the model takes " + std::to_string(width) + "x" + std::to_string(height));
      const std::string split = job.init == InitKind::Test ? "the test split" : "the training split";
      if (!job_.range.empty()) {
        // Checked before it is expanded: "0:2147483647" must not build a 2^31-entry vector to find that out.
        if (job_.range.end > data->count)
          throw InputError("--range " + std::to_string(job_.range.begin) + ":" + std::to_string(job_.range.end) +
                           " goes past " + split + "'s " + std::to_string(data->count) + " images");
        for (long i = job_.range.begin; i < job_.range.end; ++i) job_.indices.push_back(static_cast<int>(i));
      } else if (job_.indices.empty()) {
        if (job.count < 1 || job.count > data->count)
          throw InputError("--count " + std::to_string(job.count) + ": " + split + " has " +
                           std::to_string(data->count) + " images (give 1 to " + std::to_string(data->count) + ")");
        for (long i = 0; i < job.count; ++i) job_.indices.push_back(static_cast<int>(i));
      }
      for (int i : job_.indices)
        if (i < 0 || i >= data->count)
          throw InputError("image index " + std::to_string(i) + " is outside the split's " + std::to_string(data->count) + " images");
      count_ = static_cast<long>(job_.indices.size());
      break;
    }
    case InitKind::Images: {
      DIR* dir = ::opendir(job.image_dir.c_str());
      if (!dir) throw InputError("--init " + job.image_dir + ": not a folder of images (and not noise, gauss, gray, test or train)");
      while (dirent* e = ::readdir(dir)) {
        const std::string n = e->d_name;
        if (has_image_extension(n)) files_.push_back(job.image_dir + "/" + n);
      }
      ::closedir(dir);
      std::sort(files_.begin(), files_.end());
      if (files_.empty()) throw InputError("--init " + job.image_dir + ": no .png or .pgm files in the folder");
      // The model's size goes to the reader, which refuses another size from the header, before decoding.
      for (const std::string& f : files_) file_pixels_.push_back(read_image(f, {width, height}).pixels);
      count_ = static_cast<long>(files_.size());
      break;
    }
  }
}

int StartImages::label(long i) const {
  const long d = dataset_index(i);
  return d >= 0 ? data_->labels[d] : -1;
}

long StartImages::dataset_index(long i) const {
  return job_.init == InitKind::Test || job_.init == InitKind::Train ? job_.indices[i] : -1;
}

std::string StartImages::name(long i) const {
  switch (job_.init) {
    case InitKind::Noise: return "noise:" + std::to_string(i);
    case InitKind::Gauss: return "gauss:" + std::to_string(i);
    case InitKind::Gray: return "gray:" + std::to_string(i);
    case InitKind::Pca: return "pca:" + std::to_string(i);
    case InitKind::Test: return "test:" + std::to_string(job_.indices[i]);
    case InitKind::Train: return "train:" + std::to_string(job_.indices[i]);
    case InitKind::Images: return files_[i];
  }
  return "?";
}

void StartImages::fill(long i, float* out) const {
  const int D = width_ * height_;
  switch (job_.init) {
    case InitKind::Noise: noise_image(job_.seed, i, D, out); break;
    case InitKind::Gauss: gauss_image(job_.seed, i, D, job_.gauss_sigma, out); break;
    case InitKind::Gray: std::fill(out, out + D, job_.gray_value); break;
    case InitKind::Pca: pca_sample_image(*job_.reg.pca, job_.seed, i, job_.pca_start_components, out); break;
    case InitKind::Test:
    case InitKind::Train: data_->image_as_float(job_.indices[i], out); break;
    case InitKind::Images: std::copy(file_pixels_[i].begin(), file_pixels_[i].end(), out); break;
  }
}

}  // namespace nudge
