#include "pca_basis.h"

#include <algorithm>
#include <cblas.h>

#include <cmath>

#include "atomic_file.h"
#include "counter_normal.h"
#include "errors.h"

// LAPACK (OpenBLAS ships it): the eigenvalues il..iu (ascending order) of a symmetric matrix and their vectors.
extern "C" void dsyevr_(const char* jobz, const char* range, const char* uplo, const int* n, double* a, const int* lda,
                        const double* vl, const double* vu, const int* il, const int* iu, const double* abstol, int* m,
                        double* w, double* z, const int* ldz, int* isuppz, double* work, const int* lwork, int* iwork,
                        const int* liwork, int* info);

namespace nudge {

void PcaBasis::image_of(const float* c, float* x) const {
  std::copy(mean.begin(), mean.end(), x);
  for (int j = 0; j < components; ++j) {
    const float* u = vectors.data() + static_cast<size_t>(j) * pixels;
    for (int p = 0; p < pixels; ++p) x[p] += c[j] * u[p];
  }
  for (int p = 0; p < pixels; ++p) x[p] = std::min(1.0f, std::max(0.0f, x[p]));
}

void PcaBasis::coefficients_of(const float* x, float* c) const {
  for (int j = 0; j < components; ++j) {
    const float* u = vectors.data() + static_cast<size_t>(j) * pixels;
    double s = 0;
    for (int p = 0; p < pixels; ++p) s += static_cast<double>(u[p]) * (x[p] - mean[p]);
    c[j] = static_cast<float>(s);
  }
}

void PcaBasis::backward(const float* c, const float* gx, float* gc) const {
  std::vector<float> raw(mean);
  for (int j = 0; j < components; ++j) {
    const float* u = vectors.data() + static_cast<size_t>(j) * pixels;
    for (int p = 0; p < pixels; ++p) raw[p] += c[j] * u[p];
  }
  for (int j = 0; j < components; ++j) {
    const float* u = vectors.data() + static_cast<size_t>(j) * pixels;
    double s = 0;
    for (int p = 0; p < pixels; ++p)
      if (raw[p] >= 0.0f && raw[p] <= 1.0f) s += static_cast<double>(u[p]) * gx[p];
    gc[j] = static_cast<float>(s);
  }
}

PcaBasis fit_pca(const float* images, long n, int D, int k) {
  if (D < 1) throw InputError("fit_pca: images of " + std::to_string(D) + " pixels");
  if (k < 1 || k > D) throw InputError("--components " + std::to_string(k) + ": must be 1 to " + std::to_string(D));
  if (n < 2) throw InputError("a principal-component fit needs at least 2 images (got " + std::to_string(n) + ")");
  std::vector<double> mean(D, 0.0), cov(static_cast<size_t>(D) * D, 0.0);
  for (long i = 0; i < n; ++i)
    for (int p = 0; p < D; ++p) mean[p] += images[static_cast<size_t>(i) * D + p];
  for (double& m : mean) m /= static_cast<double>(n);
  // The upper triangle of the scatter matrix (column-major for LAPACK: element (a, b), a <= b, at b * D + a), by
  // blocks of centred rows through dsyrk.
  constexpr long kBlock = 2048;
  std::vector<double> block(static_cast<size_t>(kBlock) * D);
  for (long first = 0; first < n; first += kBlock) {
    const long rows = std::min(kBlock, n - first);
    for (long i = 0; i < rows; ++i)
      for (int p = 0; p < D; ++p)
        block[static_cast<size_t>(i) * D + p] = images[static_cast<size_t>(first + i) * D + p] - mean[p];
    // Row-major block [rows, D] is column-major [D, rows]: C += A A^T with A = that D x rows matrix.
    cblas_dsyrk(CblasColMajor, CblasUpper, CblasNoTrans, D, static_cast<int>(rows), 1.0, block.data(), D, 1.0,
                cov.data(), D);
  }
  for (double& v : cov) v /= static_cast<double>(n - 1);
  double trace = 0;  // dsyevr overwrites the matrix: the total variance is read first
  for (int p = 0; p < D; ++p) trace += cov[static_cast<size_t>(p) * D + p];
  // The k largest eigenvalues are numbers D - k + 1 .. D in ascending order.
  const char jobz = 'V', range = 'I', uplo = 'U';
  const int il = D - k + 1, iu = D;
  const double vl = 0, vu = 0, abstol = 0;
  int m = 0, info = 0, lwork = -1, liwork = -1, iwork_query = 0;
  double work_query = 0;
  std::vector<double> w(D), z(static_cast<size_t>(D) * k);
  std::vector<int> isuppz(2 * static_cast<size_t>(std::max(1, k)));
  dsyevr_(&jobz, &range, &uplo, &D, cov.data(), &D, &vl, &vu, &il, &iu, &abstol, &m, w.data(), z.data(), &D,
          isuppz.data(), &work_query, &lwork, &iwork_query, &liwork, &info);
  if (info != 0) throw InternalError("dsyevr workspace query failed (info " + std::to_string(info) + ")");
  lwork = static_cast<int>(work_query);
  liwork = iwork_query;
  std::vector<double> work(static_cast<size_t>(lwork));
  std::vector<int> iwork(static_cast<size_t>(liwork));
  dsyevr_(&jobz, &range, &uplo, &D, cov.data(), &D, &vl, &vu, &il, &iu, &abstol, &m, w.data(), z.data(), &D,
          isuppz.data(), work.data(), &lwork, iwork.data(), &liwork, &info);
  if (info != 0 || m != k)
    throw InternalError("dsyevr failed (info " + std::to_string(info) + ", " + std::to_string(m) + " of " +
                        std::to_string(k) + " eigenvalues)");
  PcaBasis b;
  b.pixels = D;
  b.components = k;
  b.total_variance = trace;
  b.mean.assign(mean.begin(), mean.end());
  b.vectors.resize(static_cast<size_t>(k) * D);
  b.variances.resize(k);
  for (int j = 0; j < k; ++j) {
    const int src = k - 1 - j;  // descending
    const double* v = z.data() + static_cast<size_t>(src) * D;
    // Relative to the largest: rounding leaves directions without data at ~1e-16 of it, not at exactly 0.
    if (!(w[src] > 1e-10 * w[k - 1]))
      throw InputError("component " + std::to_string(j + 1) + " of " + std::to_string(k) +
                       " has variance " + std::to_string(w[src]) + ": the images span fewer dimensions; ask for fewer");
    int big = 0;
    for (int p = 1; p < D; ++p)
      if (std::fabs(v[p]) > std::fabs(v[big])) big = p;
    const double sign = v[big] < 0 ? -1.0 : 1.0;
    for (int p = 0; p < D; ++p) b.vectors[static_cast<size_t>(j) * D + p] = static_cast<float>(sign * v[p]);
    b.variances[j] = static_cast<float>(w[src]);
  }
  return b;
}

SafetensorsFile pca_basis_file(const PcaBasis& b) {
  SafetensorsFile f;
  f.metadata["nudge.pca.source"] = b.source;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, const std::vector<float>& data) {
    Tensor t(std::move(shape));
    t.data = data;
    f.tensors.emplace_back(name, std::move(t));
  };
  add("mean", {b.pixels}, b.mean);
  add("vectors", {b.components, b.pixels}, b.vectors);
  add("variances", {b.components}, b.variances);
  return f;
}

void write_pca_basis(const std::string& path, const PcaBasis& b) { write_safetensors(path, pca_basis_file(b)); }

PcaBasis parse_pca_basis(const std::string& bytes, const std::string& what) {
  const SafetensorsFile f = parse_safetensors(bytes, what);
  auto find = [&](const std::string& name) -> const Tensor& {
    for (const auto& [n, t] : f.tensors)
      if (n == name) return t;
    throw InputError(what + ": no tensor '" + name + "' (not a basis written by nudge pca)");
  };
  const Tensor &mean = find("mean"), &vectors = find("vectors"), &variances = find("variances");
  if (mean.shape.size() != 1 || variances.shape.size() != 1 || vectors.shape.size() != 2 ||
      vectors.shape[0] != variances.shape[0] || vectors.shape[1] != mean.shape[0] || mean.shape[0] < 1 ||
      variances.shape[0] < 1)
    throw InputError(what + ": tensor shapes mean " + shape_to_string(mean.shape) + ", vectors " +
                     shape_to_string(vectors.shape) + ", variances " + shape_to_string(variances.shape) +
                     " do not fit together (want [D], [k,D], [k])");
  PcaBasis b;
  b.pixels = static_cast<int>(mean.shape[0]);
  b.components = static_cast<int>(variances.shape[0]);
  b.mean = mean.data;
  b.vectors = vectors.data;
  b.variances = variances.data;
  for (const std::vector<float>* v : {&b.mean, &b.vectors, &b.variances})
    for (float x : *v)
      if (!std::isfinite(x)) throw InputError(what + ": a value is not finite");
  for (int j = 0; j < b.components; ++j) {
    if (!(b.variances[j] > 0) || (j > 0 && b.variances[j] > b.variances[j - 1]))
      throw InputError(what + ": variance " + std::to_string(j) + " is not positive or larger than the one before");
    double norm2 = 0;
    for (int p = 0; p < b.pixels; ++p) {
      const double u = b.vectors[static_cast<size_t>(j) * b.pixels + p];
      norm2 += u * u;
    }
    if (std::fabs(std::sqrt(norm2) - 1.0) > 1e-3)
      throw InputError(what + ": vector " + std::to_string(j) + " has length " + std::to_string(std::sqrt(norm2)) +
                       ", not 1");
  }
  const auto it = f.metadata.find("nudge.pca.source");
  b.source = it == f.metadata.end() ? "" : it->second;
  return b;
}

PcaBasis read_pca_basis(const std::string& path) {
  return parse_pca_basis(read_file(path), path);
}

void pca_sample_image(const PcaBasis& b, uint64_t seed, long index, int m, float* out) {
  m = std::min(std::max(m, 0), b.components);
  std::vector<float> c(b.components, 0.0f);
  for (int j = 0; j < m; j += 2) {
    double z[2];
    counter_normal_pair(seed, kStreamPcaStart, static_cast<uint64_t>(index), static_cast<uint32_t>(j >> 1), z);
    for (int t = 0; t < 2 && j + t < m; ++t) c[j + t] = static_cast<float>(std::sqrt(b.variances[j + t]) * z[t]);
  }
  b.image_of(c.data(), out);
}

}  // namespace nudge
