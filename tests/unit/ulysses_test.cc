// Ulysses sequence parallelism on CPU: the in-process communicator's collectives, and the Wan DiT forward on
// P rank threads (one CPU backend each) against the one-device forward, dense and under sparsity plans, for
// token counts and head counts that P does not divide.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "parallel/planned_attention.h"
#include "parallel/sparsity_plan.h"
#include "parallel/thread_communicator.h"
#include "parallel/ulysses_attention.h"
#include "tests/unit/numerics.h"
#include "worker/engine/denoise.h"
#include "worker/engine/wan_dit.h"
#include "worker/engine/wan_random_weights.h"

namespace zoetrope {
namespace {

// Runs body(communicator) on `ranks` threads, one per rank of a fresh thread group.
void RunRanks(int ranks, const std::function<void(Communicator&)>& body) {
  std::vector<std::unique_ptr<Communicator>> group = ThreadCommunicator::CreateThreadGroup(ranks);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < ranks; ++rank) threads.emplace_back([&, rank] { body(*group[rank]); });
  for (std::thread& thread : threads) thread.join();
}

Tensor Filled(int64_t elements, const std::function<float(int64_t)>& value) {
  Tensor tensor = Tensor::Host({elements}, DType::kF32);
  for (int64_t i = 0; i < elements; ++i) tensor.data<float>()[i] = value(i);
  return tensor;
}

TEST(BalancedSplit, CoversEveryItemOnceLargestFirst) {
  for (int64_t total : {0, 1, 2, 5, 12, 105, 2304}) {
    for (int parts = 1; parts <= 7; ++parts) {
      int64_t next = 0;
      for (int index = 0; index < parts; ++index) {
        const ShardRange range = BalancedSplit(total, parts, index);
        EXPECT_EQ(range.begin, next);
        EXPECT_EQ(range.count, total / parts + (index < total % parts ? 1 : 0));
        next = range.begin + range.count;
      }
      EXPECT_EQ(next, total);
    }
  }
}

TEST(ThreadCommunicator, VariableAllToAllOverManyRounds) {
  for (int ranks : {1, 2, 3, 5}) {
    auto backends = std::vector<std::unique_ptr<Backend>>();
    for (int r = 0; r < ranks; ++r) backends.push_back(CreateCpuBackend(1));
    RunRanks(ranks, [&](Communicator& communicator) {
      const int rank = communicator.rank();
      Backend& backend = *backends[rank];
      EXPECT_EQ(communicator.size(), ranks);
      for (int round = 0; round < 200; ++round) {
        // Sizes vary per (sender, receiver, round), including empty messages.
        auto elements = [&](int from, int to) { return static_cast<int64_t>((from * 7 + to * 3 + round) % 6); };
        auto value = [&](int from, int to, int64_t i) {
          return static_cast<float>(round * 10000 + from * 100 + to * 10 + i);
        };
        std::vector<Tensor> send, receive;
        for (int p = 0; p < ranks; ++p) {
          send.push_back(Filled(elements(rank, p), [&](int64_t i) { return value(rank, p, i); }));
          receive.push_back(Tensor::Host({elements(p, rank)}, DType::kF32));
        }
        ASSERT_TRUE(communicator.AllToAll(backend, send, receive).ok());
        for (int p = 0; p < ranks; ++p) {
          for (int64_t i = 0; i < elements(p, rank); ++i) {
            ASSERT_EQ(receive[p].data<float>()[i], value(p, rank, i)) << "round " << round << " from " << p;
          }
        }
      }
    });
  }
}

TEST(ThreadCommunicator, AllGatherAllReduceBroadcastAndBarrier) {
  constexpr int kRanks = 4;
  auto backends = std::vector<std::unique_ptr<Backend>>();
  for (int r = 0; r < kRanks; ++r) backends.push_back(CreateCpuBackend(1));
  RunRanks(kRanks, [&](Communicator& communicator) {
    const int rank = communicator.rank();
    Backend& backend = *backends[rank];
    for (int round = 0; round < 100; ++round) {
      // All-gather, rank p contributing p + round % 3 elements.
      auto count = [&](int p) { return static_cast<int64_t>(p + round % 3); };
      const Tensor mine = Filled(count(rank), [&](int64_t i) { return static_cast<float>(rank * 1000 + i + round); });
      std::vector<Tensor> gathered;
      for (int p = 0; p < kRanks; ++p) gathered.push_back(Tensor::Host({count(p)}, DType::kF32));
      ASSERT_TRUE(communicator.AllGather(backend, mine, gathered).ok());
      for (int p = 0; p < kRanks; ++p) {
        for (int64_t i = 0; i < count(p); ++i) ASSERT_EQ(gathered[p].data<float>()[i], p * 1000 + i + round);
      }
      // All-reduce: small integers, so the sum is exact.
      const Tensor summed = Filled(5, [&](int64_t i) { return static_cast<float>((rank + 1) * (i + round)); });
      ASSERT_TRUE(communicator.AllReduceSum(backend, summed).ok());
      for (int64_t i = 0; i < 5; ++i) ASSERT_EQ(summed.data<float>()[i], 10.0f * (i + round));  // Σ (r + 1) = 10
      // Broadcast from a root that moves every round.
      const int root = round % kRanks;
      const Tensor broadcast = Filled(3, [&](int64_t i) { return static_cast<float>(rank * 100 + i); });
      ASSERT_TRUE(communicator.Broadcast(backend, broadcast, root).ok());
      for (int64_t i = 0; i < 3; ++i) ASSERT_EQ(broadcast.data<float>()[i], root * 100 + i);
      ASSERT_TRUE(communicator.Barrier().ok());
    }
  });
}

TEST(ThreadCommunicator, MismatchesFailOnEveryRankWithoutHanging) {
  constexpr int kRanks = 3;
  auto backends = std::vector<std::unique_ptr<Backend>>();
  for (int r = 0; r < kRanks; ++r) backends.push_back(CreateCpuBackend(1));
  std::vector<std::string> errors(kRanks);
  RunRanks(kRanks, [&](Communicator& communicator) {
    const int rank = communicator.rank();
    Backend& backend = *backends[rank];
    // Rank 1 receives 3 elements from rank 0, which sends 2.
    std::vector<Tensor> send, receive;
    for (int p = 0; p < kRanks; ++p) {
      send.push_back(Tensor::Host({2}, DType::kF32));
      receive.push_back(Tensor::Host({rank == 1 && p == 0 ? 3 : 2}, DType::kF32));
    }
    const absl::Status sizes = communicator.AllToAll(backend, send, receive);
    EXPECT_EQ(sizes.code(), absl::StatusCode::kInvalidArgument) << sizes;
    errors[rank] = std::string(sizes.message());
    // Different collectives at the same point.
    const absl::Status kinds =
        rank == 2 ? communicator.Barrier() : communicator.AllReduceSum(backend, Tensor::Host({1}, DType::kF32));
    EXPECT_EQ(kinds.code(), absl::StatusCode::kFailedPrecondition) << kinds;
    // The group still works afterwards.
    const Tensor value = Filled(1, [&](int64_t) { return 1.0f; });
    EXPECT_TRUE(communicator.AllReduceSum(backend, value).ok());
    EXPECT_EQ(value.data<float>()[0], 3.0f);
  });
  EXPECT_EQ(errors[0], errors[1]);
  EXPECT_EQ(errors[1], errors[2]);
  EXPECT_NE(errors[0].find("rank 0 sends 8 bytes of F32 to rank 1, which receives 12 bytes"), std::string::npos)
      << errors[0];
}

TEST(PlanForHeads, SlicesPerHeadRulesLikeGlobalResolution) {
  auto plan = ParseSparsityPlan(R"(
rules:
  - heads: [0, 1]
    mode: radial
  - heads: [3, 7]
    mode: attention-tile
    reference_frames: 2
  - heads: 9
    mode: dense
  - mode: radial
    decay: 0.5
)",
                                "test");
  ASSERT_TRUE(plan.ok()) << plan.status();
  constexpr int kHeads = 12;
  const SiteAttention global = plan->Resolve(0, 0, 10, kHeads);
  for (int ranks : {1, 2, 5, 7}) {
    for (int rank = 0; rank < ranks; ++rank) {
      const ShardRange heads = HeadShard(kHeads, ranks, rank);
      const SiteAttention local = PlanForHeads(*plan, heads).Resolve(0, 0, 10, static_cast<int>(heads.count));
      for (int h = 0; h < heads.count; ++h) {
        EXPECT_EQ(local.ModeOfHead(h), global.ModeOfHead(static_cast<int>(heads.begin) + h))
            << ranks << " ranks, rank " << rank << ", head " << h;
      }
    }
  }
}

// The DiT forward of a random tiny model, on one device and on P rank threads.
class UlyssesDitTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    directory_ = new std::filesystem::path(std::filesystem::temp_directory_path() /
                                           ("zoetrope_ulysses_test_" + std::to_string(::getpid())));
    std::filesystem::create_directories(*directory_);
    RandomWeightsOptions options;
    options.seed = 7;
    // The preset: 2 heads, so 3, 4 and 5 ranks leave ranks without heads.
    ASSERT_TRUE(WriteRandomWanDitWeights(*WanDitConfigByName("tiny"), options, Weights("tiny")).ok());
    // 5 heads of 16: no P in 2..4 divides the heads.
    WanDitConfig five_heads = *WanDitConfigByName("tiny");
    five_heads.name = "tiny-5-heads";
    five_heads.dim = 80;
    five_heads.ffn_dim = 160;
    five_heads.num_heads = 5;
    ASSERT_TRUE(five_heads.Validate().ok());
    ASSERT_TRUE(WriteRandomWanDitWeights(five_heads, options, Weights("five-heads")).ok());
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*directory_);
    delete directory_;
  }
  static std::string Weights(const std::string& model) {
    std::filesystem::create_directories(*directory_ / model);
    return (*directory_ / model / "model.safetensors").string();
  }

  struct Run {
    std::vector<float> head_tokens;  // F32 [L, out_dim·4] of the whole sequence
    double density = 1.0;
  };

  // One rank's forward of its shard; ranks = 0 means one device with the plain attention classes.
  static void ForwardRank(const std::string& weights, const Shape& latent_shape, const SparsityPlan* plan, int steps,
                          int step, Communicator* communicator, Run& run, int head_chunks = 1) {
    std::unique_ptr<Backend> backend = CreateCpuBackend(1);
    auto model = WanDit::Load(weights, *backend);
    ASSERT_TRUE(model.ok()) << model.status();
    const Tensor latent = InitialNoise(*backend, latent_shape, 11);
    Tensor context = Tensor::Host({5, (*model)->config().text_dim}, DType::kF32);
    for (int64_t i = 0; i < context.numel(); ++i) context.data<float>()[i] = std::sin(0.1f * i);
    auto prompt = (*model)->EncodePrompt(context);
    ASSERT_TRUE(prompt.ok()) << prompt.status();
    const WanDit::TimestepConditioning timestep = (*model)->EmbedTimestep(500);
    const int64_t tokens = (*model)->GridOf(latent_shape).tokens();
    if (communicator == nullptr) {
      std::unique_ptr<SequenceAttention> attention;
      if (plan != nullptr) {
        attention = std::make_unique<PlannedAttention>(*plan, steps);
      } else {
        attention = std::make_unique<LocalDenseAttention>();
      }
      const Tensor out = (*model)->ForwardShard(latent, timestep, *prompt, 0, tokens, *attention, step);
      run.head_tokens = ToFloatVector(backend->ToHost(out));
      run.density = attention->mean_block_density();
      return;
    }
    const int ranks = communicator->size(), rank = communicator->rank();
    std::unique_ptr<UlyssesAttention> attention =
        plan != nullptr ? std::make_unique<UlyssesAttention>(*communicator, *plan, steps, head_chunks)
                        : std::make_unique<UlyssesAttention>(*communicator, head_chunks);
    const ShardRange shard = TokenShard(tokens, ranks, rank);
    const Tensor out =
        backend->ToHost((*model)->ForwardShard(latent, timestep, *prompt, shard.begin, shard.count, *attention, step));
    // Every rank gathers the whole sequence from the shards.
    const Tensor all = Tensor::Host({tokens, out.dim(1)}, DType::kF32);
    std::vector<Tensor> receive;
    for (int p = 0; p < ranks; ++p) {
      const ShardRange theirs = TokenShard(tokens, ranks, p);
      receive.push_back(all.Rows(theirs.begin, theirs.count));
    }
    ASSERT_TRUE(communicator->AllGather(*backend, out, receive).ok());
    run.head_tokens = ToFloatVector(all);
    absl::StatusOr<double> density = attention->GroupMeanBlockDensity(*backend);
    ASSERT_TRUE(density.ok()) << density.status();
    run.density = *density;
  }

  // Compares P = each of `rank_counts` with one device; returns the one-device run.
  static Run CheckAgainstOneDevice(const std::string& model, const Shape& latent_shape, const SparsityPlan* plan,
                                   int steps, int step, const std::vector<int>& rank_counts, int head_chunks = 1) {
    Run reference;
    ForwardRank(Weights(model), latent_shape, plan, steps, step, nullptr, reference);
    for (int ranks : rank_counts) {
      std::vector<Run> runs(ranks);
      RunRanks(ranks, [&](Communicator& communicator) {
        ForwardRank(Weights(model), latent_shape, plan, steps, step, &communicator, runs[communicator.rank()],
                    head_chunks);
      });
      const double error = test::RelativeL2(reference.head_tokens, runs[0].head_tokens);
      EXPECT_LE(error, 1e-6) << model << ", " << ranks << " ranks, latent " << ShapeToString(latent_shape);
      EXPECT_NEAR(runs[0].density, reference.density, 1e-6) << ranks << " ranks";
      for (int rank = 1; rank < ranks; ++rank) EXPECT_EQ(runs[rank].head_tokens, runs[0].head_tokens);
      std::printf("[ulysses] %s latent %s, %d ranks, %d head chunks: relative L2 %.3g, density %.4f (one device %.4f)\n",
                  model.c_str(), ShapeToString(latent_shape).c_str(), ranks, head_chunks, error, runs[0].density,
                  reference.density);
    }
    return reference;
  }

  static std::filesystem::path* directory_;
};

std::filesystem::path* UlyssesDitTest::directory_ = nullptr;

// 9×16×16 = 2304 tokens: 2, 3 and 4 divide it, 5 does not; 2 heads: 3, 4 and 5 ranks leave ranks without heads.
const Shape kLargeLatent = {16, 9, 32, 32};
// 3×5×7 = 105 tokens: 3 and 5 divide it, 2 and 4 do not.
const Shape kOddLatent = {16, 3, 10, 14};

TEST_F(UlyssesDitTest, DenseMatchesOneDevice) {
  CheckAgainstOneDevice("tiny", kLargeLatent, nullptr, 50, 20, {2, 3, 4, 5});
  CheckAgainstOneDevice("tiny", kOddLatent, nullptr, 50, 20, {2, 3, 4, 5});
}

TEST_F(UlyssesDitTest, RadialPresetMatchesOneDeviceAndSkipsBlocks) {
  auto plan = SparsityPlanPreset("radial");
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_TRUE(plan->Validate(2, 2, 50).ok());
  // Step 20 of 50 is past the dense warm-up; block 1 of the tiny model runs radial.
  const Run reference = CheckAgainstOneDevice("tiny", kLargeLatent, &*plan, 50, 20, {2, 3, 4, 5});
  EXPECT_LT(reference.density, 1.0);
}

TEST_F(UlyssesDitTest, UnevenHeadGroupsDenseAndPerHeadPlan) {
  CheckAgainstOneDevice("five-heads", kOddLatent, nullptr, 50, 20, {2, 3, 4, 5});
  // Heads 1–2 radial, head 4 attention tile, the rest dense: the per-head plan splits across head groups.
  auto plan = ParseSparsityPlan(R"(
rules:
  - heads: [1, 2]
    mode: radial
  - heads: 4
    mode: attention-tile
    reference_frames: 2
)",
                                "per-head");
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_TRUE(plan->Validate(2, 5, 50).ok());
  const Run reference = CheckAgainstOneDevice("five-heads", kLargeLatent, &*plan, 50, 20, {2, 3, 4});
  EXPECT_LT(reference.density, 1.0);
}

// Head chunks pipeline the all-to-alls against the attention (overlap on CUDA); the result must not change:
// 5 heads in 2 and 3 chunks (chunks of 3+2 and 2+2+1 heads, some ranks without heads in a chunk), dense and
// with the per-head plan.
TEST_F(UlyssesDitTest, HeadChunksGiveTheSameResult) {
  CheckAgainstOneDevice("five-heads", kOddLatent, nullptr, 50, 20, {2, 3}, /*head_chunks=*/2);
  auto plan = ParseSparsityPlan(R"(
rules:
  - heads: [1, 2]
    mode: radial
  - heads: 4
    mode: attention-tile
    reference_frames: 2
)",
                                "per-head");
  ASSERT_TRUE(plan.ok()) << plan.status();
  const Run reference = CheckAgainstOneDevice("five-heads", kLargeLatent, &*plan, 50, 20, {2, 3}, /*head_chunks=*/3);
  EXPECT_LT(reference.density, 1.0);
  // More chunks than heads: one head per chunk.
  CheckAgainstOneDevice("tiny", kOddLatent, nullptr, 50, 20, {2}, /*head_chunks=*/4);
}

}  // namespace
}  // namespace zoetrope
