#include "parallel/parallel_mesh.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace zoetrope {

std::string ParallelDegrees::ToString() const { return absl::StrCat("sp=", sequence, " cfg=", cfg); }

absl::Status ValidateParallelDegrees(const ParallelDegrees& degrees) {
  if (degrees.sequence < 1) {
    return absl::InvalidArgumentError(absl::StrCat("sequence-parallel degree must be ≥ 1 (got ", degrees.sequence, ")"));
  }
  if (degrees.cfg != 1 && degrees.cfg != 2) {
    return absl::InvalidArgumentError(absl::StrCat("CFG-parallel degree must be 1 or 2 (got ", degrees.cfg, ")"));
  }
  return absl::OkStatus();
}

MeshPosition PositionInMesh(const ParallelDegrees& degrees, int rank) {
  return {rank / degrees.sequence, rank % degrees.sequence};
}

absl::StatusOr<std::vector<MeshCommunicators>> BuildMeshCommunicators(const ParallelDegrees& degrees,
                                                                      const CommunicatorFactory& factory) {
  if (absl::Status valid = ValidateParallelDegrees(degrees); !valid.ok()) return valid;
  std::vector<MeshCommunicators> mesh(degrees.ranks());
  auto make = [&](const std::vector<int>& members, std::unique_ptr<Communicator> MeshCommunicators::*slot,
                  const char* what) -> absl::Status {
    absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> made = factory(members);
    if (!made.ok()) {
      return absl::Status(made.status().code(), absl::StrCat("creating the ", what, " communicator of ranks {",
                                                             absl::StrJoin(members, ", "), "}: ",
                                                             made.status().message()));
    }
    if (made->size() != members.size()) {
      return absl::InternalError(absl::StrCat("the ", what, " communicator factory made ", made->size(),
                                              " communicators for ", members.size(), " ranks"));
    }
    for (size_t i = 0; i < members.size(); ++i) mesh[members[i]].*slot = std::move((*made)[i]);
    return absl::OkStatus();
  };
  if (degrees.sequence > 1) {
    for (int group = 0; group < degrees.cfg; ++group) {
      std::vector<int> members;
      for (int s = 0; s < degrees.sequence; ++s) members.push_back(group * degrees.sequence + s);
      if (absl::Status made = make(members, &MeshCommunicators::sequence, "sequence-parallel"); !made.ok()) return made;
    }
  }
  if (degrees.cfg == 2) {
    for (int s = 0; s < degrees.sequence; ++s) {
      if (absl::Status made = make({s, degrees.sequence + s}, &MeshCommunicators::cfg, "CFG-parallel"); !made.ok()) {
        return made;
      }
    }
  }
  return mesh;
}

}  // namespace zoetrope
