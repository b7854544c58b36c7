# shellcheck shell=bash disable=SC2154  # the globals come from tools/gpu_check.sh
# The GPU half's setup (tools/gpu_check.sh --setup, in its own box): unpack the bundle, restore the build tree at
# the path embedded at build time, MNIST into data/mnist; then where cuDNN and cuBLAS are (find_cuda_libs).

restore_tree() {
  if [ -f "$tarball" ] && { [ ! -f "$bundle/PACK_ROOT" ] || [ "$tarball" -nt "$bundle/PACK_ROOT" ]; }; then
    rm -rf "$bundle" && tar xzf "$tarball" -C "$build" || die "could not unpack $tarball"
  fi
  [ -f "$bundle/PACK_ROOT" ] || die "no bundle: run tools/gpu_check.sh --pack on the build machine and carry build-gpu/bundle.tar.gz"
  local packed
  packed="$(cat "$bundle/PACK_ROOT")"
  if [ "$packed" != "$root" ]; then
    if [ -L "$packed" ] || [ ! -e "$packed" ]; then
      mkdir -p "$(dirname "$packed")" && ln -sfn "$root" "$packed" || die "cannot link $packed -> $root (the tests embed that path)"
      say "linked $packed -> $root (paths embedded at build time)"
    else
      die "$packed exists and is not a link; the tests embed that path: remove it or rebuild with --pack"
    fi
  fi
  cp -a "$bundle/tree/." "$build/"
  if [ -d "$bundle/mnist" ] && [ ! -f "$root/data/mnist/t10k-images-idx3-ubyte" ]; then
    mkdir -p "$root/data/mnist" && cp -p "$bundle/mnist/"* "$root/data/mnist/"
  fi
}

find_cuda_libs() {
  local dirs=("$bundle/lib")
  local py
  py=$(command -v python3 || true)
  if [ -n "$py" ]; then
    local sites
    sites=$("$py" -c 'import site, sys; print("\n".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null)
    while read -r d; do
      [ -n "$d" ] && dirs+=("$d")
    done < <(for s in $sites; do
      find "$s/nvidia" "$s/torch/lib" \( -name 'libcudnn.so.9*' -o -name 'libcublas.so.1*' -o -name 'libcublasLt.so.1*' \) \
        -printf '%h\n' 2>/dev/null
    done | sort -u)
  fi
  [ -d /usr/local/cuda/lib64 ] && dirs+=(/usr/local/cuda/lib64)
  local IFS=:
  export LD_LIBRARY_PATH="${dirs[*]}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}
