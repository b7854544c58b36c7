# shellcheck shell=bash disable=SC2154  # the globals come from tools/gpu_check.sh
# --rehearse (tools/gpu_check.sh): the GPU half here, without a GPU, from a copy of what a device call carries,
# checking what the card's run would leave.

rehearse() {
  [ -f "$tarball" ] || die "no $tarball: run tools/gpu_check.sh --pack first"
  local dir
  dir=$(mktemp -d /tmp/nudge-rehearse.XXXXXX) || die "mktemp failed"
  mkdir -p "$dir/repo/build-gpu" "$dir/out"
  # What a device call carries: tracked and untracked-not-ignored files, plus the carried bundle.
  (cd "$root" && git ls-files -z -co --exclude-standard | tar --null -T - -cf -) | tar -xf - -C "$dir/repo" ||
    die "could not copy the tree"
  cp "$tarball" "$dir/repo/build-gpu/"
  say "rehearsal in $dir/repo (OUT=$dir/out), NUDGE_REQUIRE_GPU=${GPU_CHECK_REQUIRE_GPU:-1}"
  local t0 rc files
  t0=$(now)
  # Two test jobs: this machine has two cores (the card's default is 8 of 16).
  (cd "$dir/repo" && env -u LD_LIBRARY_PATH OUT="$dir/out" GPU_CHECK_WORK="$dir/work" \
    GPU_CHECK_TEST_JOBS="${GPU_CHECK_TEST_JOBS:-2}" bash tools/gpu_check.sh "$@")
  rc=$?
  files=$(find "$dir/out" -type f | wc -l)
  echo
  echo "----- rehearsal -----"
  echo "wall: $(($(now) - t0)) s (budget ${budget} s); exit status: $rc"
  echo "files under OUT: $files (a device call returns at most 8):"
  find "$dir/out" -type f -printf '  %P  %s bytes\n'
  echo "logs tarball:"
  tar tzf "$dir/out/gpu-logs.tar.gz" 2>/dev/null | sed 's/^/  /'
  echo "embedded path: $alias_root -> $(readlink "$alias_root") (during the rehearsal; now back to $root)"
  ln -sfn "$root" "$alias_root"  # later builds here go through the alias too
  [ "$files" -le 8 ] || {
    echo "rehearsal: FAIL: more than 8 files under OUT"
    return 2
  }
  [ -s "$dir/out/gpu-report.md" ] || {
    echo "rehearsal: FAIL: no report"
    return 2
  }
  return "$rc"
}
