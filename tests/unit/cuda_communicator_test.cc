// The CUDA communicators (label gpu): the allocator's safety across the compute and communication streams,
// the same-GPU loopback communicator (several ranks on GPU 0), NCCL (one rank here; two where the machine
// has two GPUs), and Ulysses attention over the loopback against one rank, for head and token counts the
// group does not divide. Skips without a GPU; ZOETROPE_REQUIRE_GPU=1 (the GPU scripts) makes that a failure.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernels/backend_factory.h"
#include "kernels/cuda/cuda_backend.h"
#include "parallel/cuda_loopback_communicator.h"
#include "parallel/nccl_communicator.h"
#include "parallel/planned_attention.h"
#include "parallel/ulysses_attention.h"
#include "tests/unit/numerics.h"

namespace zoetrope {
namespace {

bool GpuMissing() {
  if (CudaDeviceCount() > 0) return false;
  const char* required = std::getenv("ZOETROPE_REQUIRE_GPU");
  if (required != nullptr && std::string(required) == "1") ADD_FAILURE() << "ZOETROPE_REQUIRE_GPU=1 but no CUDA device";
  return true;
}

#define ZOETROPE_NEEDS_GPU()                      \
  do {                                            \
    if (GpuMissing()) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

std::vector<std::unique_ptr<Backend>> CudaBackends(const std::vector<int>& devices) {
  std::vector<std::unique_ptr<Backend>> backends;
  for (int device : devices) {
    absl::StatusOr<std::unique_ptr<Backend>> backend = CreateCudaBackend(device);
    ZCHECK_MSG(backend.ok(), backend.status().ToString());
    backends.push_back(*std::move(backend));
  }
  return backends;
}

void RunRanks(std::vector<std::unique_ptr<Communicator>>& group, const std::function<void(Communicator&)>& body) {
  std::vector<std::thread> threads;
  for (auto& communicator : group) threads.emplace_back([&body, &communicator] { body(*communicator); });
  for (std::thread& thread : threads) thread.join();
}

Tensor HostFilled(int64_t elements, const std::function<float(int64_t)>& value) {
  Tensor tensor = Tensor::Host({elements}, DType::kF32);
  for (int64_t i = 0; i < elements; ++i) tensor.data<float>()[i] = value(i);
  return tensor;
}

std::vector<float> Fetch(Backend& backend, const Tensor& tensor) { return ToFloatVector(backend.ToHost(tensor)); }

// Every collective with sizes that vary per sender, receiver and round (empty messages included), checked
// element by element; StartAllToAll's send buffers die before the wait, which the allocator must survive.
void CheckCollectives(std::vector<std::unique_ptr<Communicator>>& group,
                      std::vector<std::unique_ptr<Backend>>& backends, int rounds) {
  const int ranks = static_cast<int>(group.size());
  RunRanks(group, [&](Communicator& communicator) {
    const int rank = communicator.rank();
    Backend& backend = *backends[rank];
    for (int round = 0; round < rounds; ++round) {
      auto elements = [&](int from, int to) { return static_cast<int64_t>((from * 7 + to * 3 + round) % 6) * 1000; };
      auto value = [&](int from, int to, int64_t i) {
        return static_cast<float>(round * 10000 + from * 100 + to * 10 + i % 97);
      };
      std::vector<Tensor> receive;
      std::unique_ptr<PendingCollective> pending;
      {
        std::vector<Tensor> send;
        for (int p = 0; p < ranks; ++p) {
          send.push_back(backend.Upload(HostFilled(elements(rank, p), [&](int64_t i) { return value(rank, p, i); }),
                                        DType::kF32));
          receive.push_back(backend.Empty({elements(p, rank)}, DType::kF32));
        }
        absl::StatusOr<std::unique_ptr<PendingCollective>> started = communicator.StartAllToAll(backend, send, receive);
        ASSERT_TRUE(started.ok()) << started.status();
        pending = *std::move(started);
      }
      // The send tensors are gone; fresh allocations of their sizes on the compute stream must not land
      // on memory the communication stream may still read.
      std::vector<Tensor> clobber;
      for (int p = 0; p < ranks; ++p) {
        clobber.push_back(backend.Upload(HostFilled(elements(rank, p), [](int64_t) { return -1.0f; }), DType::kF32));
      }
      ASSERT_TRUE(pending->Wait(backend).ok());
      for (int p = 0; p < ranks; ++p) {
        const std::vector<float> got = Fetch(backend, receive[p]);
        for (int64_t i = 0; i < elements(p, rank); ++i) {
          ASSERT_EQ(got[i], value(p, rank, i)) << "round " << round << " rank " << rank << " from " << p;
        }
      }
      // All-gather, rank p contributing (p + round % 3) · 500 elements.
      auto count = [&](int p) { return static_cast<int64_t>(p + round % 3) * 500; };
      const Tensor mine =
          backend.Upload(HostFilled(count(rank), [&](int64_t i) { return static_cast<float>(rank * 1000 + i % 89); }),
                         DType::kF32);
      std::vector<Tensor> gathered;
      for (int p = 0; p < ranks; ++p) gathered.push_back(backend.Empty({count(p)}, DType::kF32));
      ASSERT_TRUE(communicator.AllGather(backend, mine, gathered).ok());
      for (int p = 0; p < ranks; ++p) {
        const std::vector<float> got = Fetch(backend, gathered[p]);
        for (int64_t i = 0; i < count(p); ++i) ASSERT_EQ(got[i], p * 1000 + i % 89);
      }
      // All-reduce: random values; every rank must get bitwise the same sum, within float rounding of fp64.
      std::mt19937 random(1234 + round);
      std::vector<std::vector<float>> contributions(ranks, std::vector<float>(777));
      for (auto& contribution : contributions) {
        for (float& x : contribution) x = std::uniform_real_distribution<float>(-1, 1)(random);
      }
      const Tensor summed = backend.Upload(HostFilled(777, [&](int64_t i) { return contributions[rank][i]; }), DType::kF32);
      ASSERT_TRUE(communicator.AllReduceSum(backend, summed).ok());
      const std::vector<float> sum = Fetch(backend, summed);
      for (int64_t i = 0; i < 777; ++i) {
        float in_rank_order = 0.0f;
        for (int p = 0; p < ranks; ++p) in_rank_order += contributions[p][i];
        ASSERT_EQ(sum[i], in_rank_order) << "element " << i;
      }
      // Broadcast from a root that moves every round.
      const int root = round % ranks;
      const Tensor broadcast =
          backend.Upload(HostFilled(3000, [&](int64_t i) { return static_cast<float>(rank * 100 + i % 7); }), DType::kF32);
      ASSERT_TRUE(communicator.Broadcast(backend, broadcast, root).ok());
      const std::vector<float> got = Fetch(backend, broadcast);
      for (int64_t i = 0; i < 3000; ++i) ASSERT_EQ(got[i], root * 100 + i % 7);
      ASSERT_TRUE(communicator.Barrier().ok());
    }
  });
}

TEST(CudaAllocatorStreams, BlockUsedByAnotherStreamWaitsForItBeforeReuse) {
  ZOETROPE_NEEDS_GPU();
  std::vector<std::unique_ptr<Backend>> backends = CudaBackends({0});
  Backend& backend = *backends[0];
  cudaStream_t side = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking), cudaSuccess);
  constexpr int64_t kElements = 16 << 20;  // 64 MiB
  Tensor target = backend.Empty({kElements}, DType::kF32);
  void* used_block = nullptr;
  {
    Tensor source = backend.Empty({kElements}, DType::kF32);
    used_block = source.raw_data();
    backend.Synchronize();
    // Keep the side stream busy reading `source` for a while (~100 copies of 64 MiB).
    for (int i = 0; i < 100; ++i) {
      ASSERT_EQ(cudaMemcpyAsync(target.raw_data(), source.raw_data(), kElements * 4, cudaMemcpyDeviceToDevice, side),
                cudaSuccess);
    }
    ASSERT_TRUE(CudaBackendRecordStreamUse(backend, source, side));
  }
  // `source` is dead on the host while the side stream still reads it: its block must not come back.
  const CudaMemoryStats pending = CudaBackendMemoryStats(backend);
  EXPECT_EQ(pending.deferred_frees, 1);
  EXPECT_GT(pending.bytes_pending, 0u);
  {
    Tensor fresh = backend.Empty({kElements}, DType::kF32);
    if (cudaStreamQuery(side) == cudaErrorNotReady) EXPECT_NE(fresh.raw_data(), used_block);
  }
  ASSERT_EQ(cudaStreamSynchronize(side), cudaSuccess);
  // Once the side stream is past it, the block is reused (no new cudaMalloc).
  const int64_t allocations = CudaBackendMemoryStats(backend).device_allocations;
  Tensor again = backend.Empty({kElements}, DType::kF32);
  Tensor and_again = backend.Empty({kElements}, DType::kF32);
  EXPECT_EQ(CudaBackendMemoryStats(backend).device_allocations, allocations);
  EXPECT_EQ(CudaBackendMemoryStats(backend).bytes_pending, 0u);
  // A tensor of another backend is not this allocator's to track.
  std::vector<std::unique_ptr<Backend>> other = CudaBackends({0});
  EXPECT_FALSE(CudaBackendRecordStreamUse(backend, other[0]->Empty({16}, DType::kF32), side));
  cudaStreamDestroy(side);
}

TEST(CudaLoopbackCommunicator, CollectivesOfThreeRanksOnOneGpu) {
  ZOETROPE_NEEDS_GPU();
  absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> group = CudaLoopbackCommunicator::CreateGroup(0, 3);
  ASSERT_TRUE(group.ok()) << group.status();
  std::vector<std::unique_ptr<Backend>> backends = CudaBackends({0, 0, 0});
  CheckCollectives(*group, backends, 30);
}

TEST(CudaLoopbackCommunicator, MismatchFailsOnEveryRankAndTheGroupGoesOn) {
  ZOETROPE_NEEDS_GPU();
  constexpr int kRanks = 3;
  absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> group = CudaLoopbackCommunicator::CreateGroup(0, kRanks);
  ASSERT_TRUE(group.ok()) << group.status();
  std::vector<std::unique_ptr<Backend>> backends = CudaBackends({0, 0, 0});
  RunRanks(*group, [&](Communicator& communicator) {
    const int rank = communicator.rank();
    Backend& backend = *backends[rank];
    std::vector<Tensor> send, receive;
    for (int p = 0; p < kRanks; ++p) {
      send.push_back(backend.Empty({2}, DType::kF32));
      receive.push_back(backend.Empty({rank == 1 && p == 0 ? 3 : 2}, DType::kF32));
    }
    const absl::Status sizes = communicator.AllToAll(backend, send, receive);
    EXPECT_EQ(sizes.code(), absl::StatusCode::kInvalidArgument) << sizes;
    // A host buffer is refused on every rank.
    const Tensor host = Tensor::Host({4}, DType::kF32);
    const absl::Status where = communicator.Broadcast(backend, rank == 2 ? host : backend.Empty({4}, DType::kF32), 0);
    EXPECT_EQ(where.code(), absl::StatusCode::kInvalidArgument) << where;
    const Tensor one = backend.Upload(HostFilled(1, [](int64_t) { return 1.0f; }), DType::kF32);
    ASSERT_TRUE(communicator.AllReduceSum(backend, one).ok());
    EXPECT_EQ(Fetch(backend, one)[0], 3.0f);
  });
}

TEST(NcclCommunicator, OneRankCollectives) {
  ZOETROPE_NEEDS_GPU();
  if (!BuiltWithNccl()) GTEST_SKIP() << "this build has no NCCL";
  absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> group = NcclCommunicator::CreateGroup({0});
  ASSERT_TRUE(group.ok()) << group.status();
  std::vector<std::unique_ptr<Backend>> backends = CudaBackends({0});
  CheckCollectives(*group, backends, 10);
  // NCCL refuses two ranks on one GPU; the error points at the loopback.
  absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> twice = NcclCommunicator::CreateGroup({0, 0});
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(twice.status().message()).find("loopback"), std::string::npos) << twice.status();
}

TEST(NcclCommunicator, TwoGpuCollectives) {
  ZOETROPE_NEEDS_GPU();
  if (!BuiltWithNccl()) GTEST_SKIP() << "this build has no NCCL";
  if (CudaDeviceCount() < 2) GTEST_SKIP() << "one GPU on this machine (the multi-GPU run covers this)";
  absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> group = NcclCommunicator::CreateGroup({0, 1});
  ASSERT_TRUE(group.ok()) << group.status();
  std::vector<std::unique_ptr<Backend>> backends = CudaBackends({0, 1});
  CheckCollectives(*group, backends, 10);
}

// Ulysses over P loopback ranks against one rank's attention, bf16, for 12 heads and 1,003 tokens: P = 5
// divides neither (uneven head groups and token shards), with and without head chunks (the overlapped
// path through StartAllToAll).
TEST(UlyssesOnLoopback, MatchesOneRankForHeadsAndTokensTheGroupDoesNotDivide) {
  ZOETROPE_NEEDS_GPU();
  constexpr int64_t kTokens = 1003, kHeads = 12, kHeadDim = 64;
  const TokenGrid grid{1, 17, 59};
  ASSERT_EQ(grid.tokens(), kTokens);
  std::mt19937 random(7);
  auto random_host = [&] {
    Tensor host = Tensor::Host({kTokens, kHeads, kHeadDim}, DType::kF32);
    for (int64_t i = 0; i < host.numel(); ++i) host.data<float>()[i] = std::normal_distribution<float>(0, 1)(random);
    return host;
  };
  const Tensor q = random_host(), k = random_host(), v = random_host();
  AttentionSite site;
  site.grid = grid;
  site.scale = 1.0f / 8.0f;
  std::vector<std::unique_ptr<Backend>> single = CudaBackends({0});
  const Tensor expected = single[0]->ToHost(single[0]->Attention(single[0]->Upload(q, DType::kBF16),
                                                                 single[0]->Upload(k, DType::kBF16),
                                                                 single[0]->Upload(v, DType::kBF16), site.scale, nullptr));
  for (int ranks : {2, 5}) {
    for (int chunks : {1, 3}) {
      absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> group =
          CudaLoopbackCommunicator::CreateGroup(0, ranks);
      ASSERT_TRUE(group.ok()) << group.status();
      std::vector<std::unique_ptr<Backend>> backends = CudaBackends(std::vector<int>(ranks, 0));
      Tensor gathered = Tensor::Host({kTokens, kHeads, kHeadDim}, DType::kF32);
      RunRanks(*group, [&](Communicator& communicator) {
        const int rank = communicator.rank();
        Backend& backend = *backends[rank];
        const ShardRange shard = BalancedSplit(kTokens, ranks, rank);
        UlyssesAttention attention(communicator, chunks);
        const Tensor out = attention.Attend(backend, backend.Upload(q.Rows(shard.begin, shard.count), DType::kBF16),
                                            backend.Upload(k.Rows(shard.begin, shard.count), DType::kBF16),
                                            backend.Upload(v.Rows(shard.begin, shard.count), DType::kBF16), site);
        const Tensor host = backend.ToHost(backend.Cast(out, DType::kF32));
        std::memcpy(gathered.Rows(shard.begin, shard.count).raw_data(), host.raw_data(), host.nbytes());
      });
      const double error = test::RelativeL2(expected, gathered);
      std::printf("ulysses loopback P=%d chunks=%d vs one rank: relative L2 %.3g\n", ranks, chunks, error);
      EXPECT_LE(error, 5e-3) << "P=" << ranks << " chunks=" << chunks;
    }
  }
}

}  // namespace
}  // namespace zoetrope
