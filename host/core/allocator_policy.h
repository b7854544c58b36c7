// How the process's malloc should treat the engine's big buffers (a chunk's start images, results and their copies
// are tens of MB each, made and freed once per chunk on several threads).
#pragma once

namespace nudge {

// glibc by default serves every allocation above a (dynamic, at most 32 MiB) threshold with a fresh mmap and gives
// it back with munmap, and gives each thread its own arena whose heaps cannot hold them either; so every chunk's
// buffers were page-faulted in afresh: 4x the engine's host cost on a 2-core VM (tools/bench/bench_engine_host, see
// docs/benchmarks.md). This keeps large blocks in one heap for reuse. Call once, early in main(), before threads
// start; a no-op where the C library is not glibc.
void keep_large_allocations_for_reuse();

}  // namespace nudge
