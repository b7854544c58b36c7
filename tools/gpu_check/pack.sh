# shellcheck shell=bash disable=SC2154  # the globals come from tools/gpu_check.sh
# --pack (tools/gpu_check.sh, which sets root, alias_root, build, bundle, tarball and card_test_timeout): build
# build-gpu/ here through the alias path and stage and pack the bundle the GPU machine unpacks.

# Shared libraries a binary needs that are not the GPU machine's own: everything but glibc, the C++ runtime (the GPU
# machine's is newer), and the CUDA libraries that come from its driver and PyTorch install.
bundle_libs_of() {
  ldd "$1" | awk '/=> \// { print $1, $3 }' |
    grep -Ev '^(linux-vdso|ld-linux|libc\.so|libm\.so|libmvec|libpthread|libdl\.so|librt\.so|libutil|libresolv|libstdc\+\+|libgcc_s|libcuda\.so|libcudnn|libcublas|libcudart|libnvidia|libnvrtc|libnvJitLink)'
}

pack() {
  command -v cmake >/dev/null || die "cmake not found"
  local gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  ln -sfn "$root" "$alias_root" || die "cannot link $alias_root -> $root"
  say "configuring $alias_root/build-gpu (Release, NUDGE_CUDA=ON, per-test timeout ${card_test_timeout} s)"
  # Without MPI: the GPU machine has no launcher to test it with, and Open MPI's libraries (and the plugins it
  # loads at run time) would have to travel in the bundle. The MPI suite says there that it was left out. Without
  # ONNX for the same reason (libprotobuf and libonnx from Debian 12 on a machine of another distribution); the ONNX
  # suite skips there saying so, and the architectures ONNX models bring are covered by test_cuda_parity_layers.
  cmake -S "$alias_root" -B "$alias_root/build-gpu" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DNUDGE_CUDA=ON \
    -DNUDGE_MPI=OFF -DNUDGE_ONNX=OFF -DNUDGE_TEST_TIMEOUT="$card_test_timeout" >/dev/null || die "configure failed"
  say "building (this takes a while on two cores)"
  cmake --build "$alias_root/build-gpu" -j"${GPU_CHECK_JOBS:-$(nproc)}" || die "build failed"

  rm -rf "$bundle"
  mkdir -p "$bundle/lib" "$bundle/tree"
  echo "$alias_root" >"$bundle/PACK_ROOT"
  git -C "$root" rev-parse --short HEAD >"$bundle/COMMIT" 2>/dev/null || echo "?" >"$bundle/COMMIT"
  # The test tree: ctest files, discovered test lists, and the binaries, at their places under build-gpu/.
  (
    cd "$build" || exit 1
    find . -path ./bundle -prune -o \( -name 'CTestTestfile.cmake' -o -name '*_include.cmake' -o -name '*_tests.cmake' \) -print
    find . -path ./bundle -prune -o -type f -perm -u+x \( -name nudge -o -name 'test_*' -o -name 'bench_*' \) -print
  ) | while read -r f; do
    mkdir -p "$bundle/tree/$(dirname "$f")"
    cp -p "$build/$f" "$bundle/tree/$f"
  done
  find "$bundle/tree" -type f -perm -u+x \( -name nudge -o -name 'test_*' -o -name 'bench_*' \) -exec strip --strip-unneeded {} + 2>/dev/null

  local bins
  bins=$(find "$bundle/tree" -type f -perm -u+x \( -name nudge -o -name 'test_*' -o -name 'bench_*' \))
  for b in $bins; do bundle_libs_of "$b"; done | sort -u | while read -r soname path; do
    cp -L "$path" "$bundle/lib/$soname"
    # Libraries' own dependencies (libopenblas -> libgfortran -> libquadmath).
    bundle_libs_of "$path" | while read -r s2 p2; do [ -e "$bundle/lib/$s2" ] || cp -L "$p2" "$bundle/lib/$s2"; done
  done

  # MNIST (git-ignored, so it does not travel with the tree): the test split always (the MNIST-dependent tests),
  # the train split too (the train stage); gzip takes the four files from 53 MB to ~11 MB.
  if [ -f "$root/data/mnist/t10k-images-idx3-ubyte" ]; then
    mkdir -p "$bundle/mnist" && cp -p "$root"/data/mnist/*-ubyte "$bundle/mnist/"
  else
    say "WARNING: data/mnist is missing (data/fetch_mnist.sh): the train stage and the MNIST tests will not run there"
  fi

  say "bundle: $(du -sh "$bundle" | cut -f1) (binaries $(du -sh "$bundle/tree" | cut -f1), libraries $(du -sh "$bundle/lib" | cut -f1)$([ -d "$bundle/mnist" ] && echo ", MNIST $(du -sh "$bundle/mnist" | cut -f1)"))"
  tar czf "$tarball" -C "$build" bundle || die "could not write $tarball"
  local kb
  kb=$(du -sk "$tarball" | cut -f1)
  say "packed $tarball: $((kb / 1024)) MiB"
  # A device call carries the working tree (tracked and untracked, not ignored) and the bundle, 64 MiB in all; past
  # that the call fails before the check starts, so it is refused here.
  local tree_kb total_kb
  tree_kb=$(cd "$root" && git ls-files -z -co --exclude-standard | du -ck --files0-from=- 2>/dev/null | tail -1 | cut -f1)
  total_kb=$((kb + ${tree_kb:-0}))
  say "with the working tree ($((${tree_kb:-0} / 1024)) MiB): $((total_kb / 1024)) MiB of the 64 MiB a device call carries"
  [ "$total_kb" -lt 65536 ] || die "bundle and working tree are over the 64 MiB a device call carries"
  [ "$total_kb" -lt 60000 ] || say "WARNING: under 5 MiB to spare; the next suite binaries may not fit"
  say "now: run(command='tools/gpu_check.sh', carry=['build-gpu/bundle.tar.gz'], timeout_s=560)"
}
