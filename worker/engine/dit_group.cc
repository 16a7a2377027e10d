#include "worker/engine/dit_group.h"

#include <thread>

#include "absl/strings/str_cat.h"
#include "parallel/planned_attention.h"
#include "parallel/ulysses_attention.h"

namespace zoetrope {

absl::StatusOr<std::unique_ptr<DitGroup>> DitGroup::Create(WanDit& first, const std::string& weights_path,
                                                           const std::string& config_name,
                                                           const std::vector<Backend*>& backends,
                                                           const ParallelDegrees& degrees,
                                                           const CommunicatorFactory& communicators) {
  if (absl::Status valid = ValidateParallelDegrees(degrees); !valid.ok()) return valid;
  const int ranks = degrees.ranks();
  if (static_cast<int>(backends.size()) != ranks) {
    return absl::InvalidArgumentError(absl::StrCat("parallel degrees ", degrees.ToString(), " need ", ranks,
                                                   " devices, got ", backends.size()));
  }
  std::unique_ptr<DitGroup> group(new DitGroup(first, degrees));
  for (int rank = 1; rank < ranks; ++rank) {
    Backend& backend = *backends[rank];
    if (backend.device() == first.backend().device()) {
      group->others_.push_back(std::make_unique<WanDit>(first.config(), first.weights(), backend));
    } else {
      absl::StatusOr<std::unique_ptr<WanDit>> loaded = WanDit::Load(weights_path, backend, config_name);
      if (!loaded.ok()) return loaded.status();
      group->others_.push_back(*std::move(loaded));
    }
  }
  group->mesh_.resize(ranks);
  if (ranks > 1) {
    absl::StatusOr<std::vector<MeshCommunicators>> mesh = BuildMeshCommunicators(degrees, communicators);
    if (!mesh.ok()) return mesh.status();
    group->mesh_ = *std::move(mesh);
  }
  return group;
}

absl::Status DitGroup::RunOnRanks(const std::function<absl::Status(int rank)>& body) {
  std::vector<absl::Status> statuses(ranks());
  std::vector<std::thread> threads;
  for (int rank = 1; rank < ranks(); ++rank) threads.emplace_back([&, rank] { statuses[rank] = body(rank); });
  statuses[0] = body(0);
  for (std::thread& thread : threads) thread.join();
  if (!statuses[0].ok()) return statuses[0];
  for (int rank = 1; rank < ranks(); ++rank) {
    if (!statuses[rank].ok()) {
      return absl::Status(statuses[rank].code(), absl::StrCat("rank ", rank, ": ", statuses[rank].message()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Tensor> DitGroup::Forward(const Tensor& latent, double timestep, const Tensor& context,
                                         const SparsityPlan& plan, int steps, int step, double* attention_density) {
  if (degrees_.cfg != 1) return absl::InvalidArgumentError("a single forward runs on sequence ranks only (cfg = 1)");
  const WanDitConfig& config = first_.config();
  const TokenGrid grid = first_.GridOf(latent.shape());
  const int64_t columns = config.out_dim * config.patch_t * config.patch_h * config.patch_w;
  Tensor velocity;
  absl::Status status = RunOnRanks([&](int rank) -> absl::Status {
    WanDit& dit = model(rank);
    Backend& backend = dit.backend();
    absl::StatusOr<WanDit::PromptConditioning> prompt = dit.EncodePrompt(context);
    if (!prompt.ok()) return prompt.status();
    Communicator* sequence = mesh_[rank].sequence.get();
    std::unique_ptr<SequenceAttention> attention;
    UlyssesAttention* ulysses = nullptr;
    if (sequence != nullptr) {
      auto made = std::make_unique<UlyssesAttention>(*sequence, plan, steps, ulysses_chunks_);
      ulysses = made.get();
      attention = std::move(made);
    } else {
      attention = std::make_unique<PlannedAttention>(plan, steps);
    }
    const ShardRange shard = TokenShard(grid.tokens(), ranks(), rank);
    const Tensor head = dit.ForwardShard(backend.Upload(latent, DType::kF32), dit.EmbedTimestep(timestep), *prompt,
                                         shard.begin, shard.count, *attention, step);
    Tensor tokens = head;
    if (sequence != nullptr) {
      tokens = backend.Empty({grid.tokens(), columns}, DType::kF32);
      std::vector<Tensor> parts;
      for (int p = 0; p < ranks(); ++p) {
        const ShardRange part = TokenShard(grid.tokens(), ranks(), p);
        parts.push_back(tokens.Rows(part.begin, part.count));
      }
      if (absl::Status gathered = sequence->AllGather(backend, head, parts); !gathered.ok()) return gathered;
    }
    if (rank == 0) velocity = dit.Unpatchify(tokens, latent.shape());
    double density = attention->mean_block_density();
    if (ulysses != nullptr) {
      absl::StatusOr<double> group_density = ulysses->GroupMeanBlockDensity(backend);  // a collective: every rank
      if (!group_density.ok()) return group_density.status();
      density = *group_density;
    }
    if (rank == 0 && attention_density != nullptr) *attention_density = density;
    return absl::OkStatus();
  });
  if (!status.ok()) return status;
  return velocity;
}

}  // namespace zoetrope
