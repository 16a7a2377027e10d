// The DiT on every rank of a parallel group (docs/parallel.md): rank 0's model, one more per other rank
// (ranks on rank 0's device share its weights, read-only; other devices load their own copy), the mesh's
// communicators, and the one way to run work on all ranks at once (a thread per rank).
//
// Not thread-safe: one caller at a time; during RunOnRanks each rank's model, backend and communicators
// are used by that rank's thread only.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/parallel_mesh.h"
#include "parallel/sparsity_plan.h"
#include "worker/engine/wan_dit.h"

namespace zoetrope {

class DitGroup {
 public:
  // `first` is rank 0's model (on backends[0]); `weights_path` (and `config_name`, as for WanDit::Load)
  // loads the copies for ranks on other devices. backends[r] is rank r's; degrees.ranks() of them.
  static absl::StatusOr<std::unique_ptr<DitGroup>> Create(WanDit& first, const std::string& weights_path,
                                                          const std::string& config_name,
                                                          const std::vector<Backend*>& backends,
                                                          const ParallelDegrees& degrees,
                                                          const CommunicatorFactory& communicators);

  int ranks() const { return degrees_.ranks(); }
  const ParallelDegrees& degrees() const { return degrees_; }
  WanDit& model(int rank) { return rank == 0 ? first_ : *others_[rank - 1]; }
  MeshCommunicators& communicators(int rank) { return mesh_[rank]; }
  // Head chunks of the Ulysses attention (parallel/ulysses_attention.h: > 1 pipelines the all-to-alls
  // against the attention kernels).
  int ulysses_chunks() const { return ulysses_chunks_; }
  void set_ulysses_chunks(int chunks) { ulysses_chunks_ = chunks; }

  // Runs body(rank) for every rank at once, rank 0 on the calling thread; waits for all. Returns the first
  // failure in rank order, prefixed with its rank (rank 0's as it is).
  absl::Status RunOnRanks(const std::function<absl::Status(int rank)>& body);

  // One forward of the whole latent (host F32 [C, F, H, W]) split over the sequence ranks of CFG group 0
  // (degrees().cfg must be 1), self-attention through `plan` (Ulysses with more than one rank), context
  // host F32 [Lc, text_dim]. Returns the velocity F32 [C, F, H, W] on rank 0's device; `attention_density`
  // (may be null) gets the mean block density over every head of the forward's self-attention calls.
  absl::StatusOr<Tensor> Forward(const Tensor& latent, double timestep, const Tensor& context,
                                 const SparsityPlan& plan, int steps, int step, double* attention_density = nullptr);

 private:
  DitGroup(WanDit& first, ParallelDegrees degrees) : first_(first), degrees_(degrees) {}

  WanDit& first_;
  ParallelDegrees degrees_;
  std::vector<std::unique_ptr<WanDit>> others_;
  std::vector<MeshCommunicators> mesh_;
  int ulysses_chunks_ = 1;
};

}  // namespace zoetrope
