// An optimize chunk on the fused kernel (kernels/fused_optimize.cuh, docs/fused-kernel.md): the same contract as
// CudaOptimizeChunk and CpuOptimizeChunk, for the reference architecture only. Each launch runs whole steps
// (forward, bookkeeping, backward to the input, update) for tiles of up to 8 entries per block, with activations in
// shared memory. Results match the CPU backend to FP32 rounding.
//
// Launches and synchronization:
//   - without early stopping, step() only counts. Queued steps go to the device `steps_per_launch` at a time
//     (finish() runs the rest together with the final evaluation), and nothing synchronizes until finish().
//     active_count() is always n, exactly as on the other backends.
//   - with early stopping, each launch is followed by a compaction of the active list (compact_active_cuda) and one
//     4-byte read-back. active_count() is the count after the last launch, so it is exact when steps_per_launch
//     is 1 (the default there) and up to steps_per_launch - 1 steps late otherwise. Entries that stopped cost
//     nothing in later steps either way.
// make_fused_optimize_chunk packs its own copy of the weights, so the caller's parameters may change while the chunk
// lives; make_fused_optimize_chunk_packed uses the backend's packed copy (made once per load_model), which must then
// stay unchanged while the chunk lives, as the layer-by-layer chunk's parameters must.
// All device memory is allocated by the constructor (DeviceOutOfMemory, see device_memory.h).
//
// This header includes no CUDA (device_memory.h neither).
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "architecture.h"
#include "backend.h"
#include "device_memory.h"
#include "model.h"

namespace nudge::cuda {

class CudaContext;

struct FusedChunkOptions {
  // Steps per kernel launch; 0 = 8 without early stopping, 1 with. Results never depend on it.
  int steps_per_launch = 0;
  // Images per block tile, 1..8; 0 = ceil(active / SMs) capped at 8, so small chunks still fill the card. Results
  // never depend on it.
  int tile = 0;
};

// True for the architecture the kernel is specialised for (Architecture::reference()); everything else must take
// the layer-by-layer path.
bool fused_path_supports(const Architecture& arch);

// Whether the context's device can run the kernel (it needs ~213 KiB of shared memory per block); `why` says why
// not. Launching on a device without it would fail at the first step, so check before choosing the fused path.
bool fused_device_supports(const CudaContext& ctx, std::string* why);

// Device bytes one entry costs (for sizing chunks), with or without Adam's moments.
size_t fused_chunk_bytes_per_entry(bool adam);

// The chunk, from the backend's device parameters: one pointer per Architecture::params() entry, in that order,
// valid while this call runs (the chunk packs its own copy on ctx's stream). Throws InternalError if `arch` is not
// supported or a target class or kind is out of range (validate_job refuses those first).
std::unique_ptr<OptimizeChunk> make_fused_optimize_chunk(CudaContext& ctx, const Architecture& arch,
                                                         const std::vector<const float*>& device_params,
                                                         const ChunkInput& in, const StepConfig& cfg,
                                                         const FusedChunkOptions& options = {});

// The device parameters packed for the kernel (fused_pack_weights_cuda, queued on ctx's stream).
DeviceBuffer<float> pack_fused_weights(CudaContext& ctx, const std::vector<const float*>& device_params);

// The chunk on weights already packed by pack_fused_weights (on ctx's stream), which must outlive it unchanged.
std::unique_ptr<OptimizeChunk> make_fused_optimize_chunk_packed(CudaContext& ctx, const float* packed_weights,
                                                                const ChunkInput& in, const StepConfig& cfg,
                                                                const FusedChunkOptions& options = {});

// The same from a host model (uploads and packs its parameters).
std::unique_ptr<OptimizeChunk> make_fused_optimize_chunk(CudaContext& ctx, const Model& model, const ChunkInput& in,
                                                         const StepConfig& cfg,
                                                         const FusedChunkOptions& options = {});

}  // namespace nudge::cuda
