// The mesh of a parallel group: how its ranks split into CFG groups and sequence-parallel groups, and the
// communicators each rank uses.
//
// A group of ParallelDegrees::ranks() = sequence × cfg ranks (cfg is 1 or 2). Rank r sits in CFG group
// r / sequence at sequence rank r % sequence:
//   - the `sequence` ranks of one CFG group split the tokens and run Ulysses attention among themselves;
//   - with CFG parallelism, CFG group 0 runs the conditional pass and group 1 the unconditional one, and
//     the two ranks holding the same token shard (sequence rank s of each group) form a pair that
//     exchanges the two velocities once per step.
// So 4 GPUs as 2 × 2 are ranks {0, 1} (conditional) and {2, 3} (unconditional), with pairs {0, 2}, {1, 3}.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace zoetrope {

struct ParallelDegrees {
  int sequence = 1;  // Ulysses ranks per CFG group, ≥ 1
  int cfg = 1;       // 1, or 2 for CFG parallelism
  int ranks() const { return sequence * cfg; }
  // "sp=2 cfg=2" style, for logs and errors.
  std::string ToString() const;
};

// InvalidArgument naming the degree when sequence < 1 or cfg is not 1 or 2.
absl::Status ValidateParallelDegrees(const ParallelDegrees& degrees);

struct MeshPosition {
  int cfg_group = 0;      // 0 conditional (or both passes when cfg = 1), 1 unconditional
  int sequence_rank = 0;  // index of the token shard
};
MeshPosition PositionInMesh(const ParallelDegrees& degrees, int rank);

// One rank's communicators; null where the degree is 1 (nothing to talk to).
struct MeshCommunicators {
  std::unique_ptr<Communicator> sequence;  // size `sequence`, rank = sequence_rank
  std::unique_ptr<Communicator> cfg;       // size 2, rank = cfg_group
};

// Makes the communicators of one subgroup: `members` are global ranks (ascending); element i of the result
// is the communicator of members[i], with rank i. Implementations: thread groups on the CPU, NCCL or
// same-GPU loopback groups on CUDA (parallel/device_group.h).
using CommunicatorFactory =
    std::function<absl::StatusOr<std::vector<std::unique_ptr<Communicator>>>(const std::vector<int>& members)>;

// Element r holds rank r's communicators. Errors from the factory are returned with the subgroup named.
absl::StatusOr<std::vector<MeshCommunicators>> BuildMeshCommunicators(const ParallelDegrees& degrees,
                                                                      const CommunicatorFactory& factory);

}  // namespace zoetrope
