// A Gaussian model of the data's images: their mean and the leading principal components with their variances
// (fitted by `nudge pca`). Class visualisation uses it as a data-manifold prior: images are written as
// x = clamp(mean + sum_j c_j u_j, 0, 1) and the coefficients c are optimized instead of the pixels, so that every
// image stays in the span of what digits look like; the Gaussian's own log-density and a pull toward each image's
// own random start are the penalties on c (docs/visualize.md).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "safetensors.h"

namespace nudge {

struct PcaBasis {
  int pixels = 0;                 // D
  int components = 0;             // k
  std::vector<float> mean;        // [D]
  std::vector<float> vectors;     // [k, D], orthonormal rows, by decreasing variance
  std::vector<float> variances;   // [k], > 0, non-increasing
  std::string source;             // what it was fitted on, for summaries
  double total_variance = 0;      // fit_pca only: the summed variance of all D pixels (not in the file)

  // x = clamp(mean + sum_j c[j] * vectors[j], 0, 1).
  void image_of(const float* c, float* x) const;
  // c[j] = vectors[j] . (x - mean): the coefficients of the image's projection onto the basis.
  void coefficients_of(const float* x, float* c) const;
  // The gradient with respect to c of a loss whose gradient with respect to image_of(c) is gx. The clamp passes the
  // gradient where mean + V^T c lies in [0, 1] (both ends included, as PyTorch's clamp does) and stops it elsewhere.
  void backward(const float* c, const float* gx, float* gc) const;
};

// Fits the mean and the k leading principal components of n images of D pixels (float, row-major): the covariance
// is accumulated in double and decomposed with LAPACK's dsyevr. Each vector's sign is fixed so that its entry of
// largest magnitude is positive, which makes the result unique up to ties. InputError when k is outside [1, D], n < 2
// or a kept variance is not positive.
PcaBasis fit_pca(const float* images, long n, int D, int k);

// The file form: safetensors with tensors "mean" [D], "vectors" [k, D], "variances" [k] and metadata
// "nudge.pca.source". Reading treats the file as hostile: shapes must agree, every value must be finite, the
// variances positive and non-increasing and the vectors of unit length (within 1e-3).
SafetensorsFile pca_basis_file(const PcaBasis& basis);
void write_pca_basis(const std::string& path, const PcaBasis& basis);
PcaBasis read_pca_basis(const std::string& path);
PcaBasis parse_pca_basis(const std::string& bytes, const std::string& what);

// A random image of the Gaussian restricted to its first m components: c_j = sqrt(variance_j) * z_j with z_j
// standard normal from the counter generator (seed, image index), c_j = 0 for j >= m, then image_of(c).
void pca_sample_image(const PcaBasis& basis, uint64_t seed, long index, int m, float* out);

}  // namespace nudge
