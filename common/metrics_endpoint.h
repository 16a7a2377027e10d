// Prometheus plumbing shared by the scheduler and the worker: the /metrics HTTP endpoint and the
// duration buckets every latency histogram uses.
//
// The endpoint is a small HTTP/1.1 server of our own on one thread, not prometheus-cpp's civetweb
// exposer: civetweb starts its threads with a fixed small stack, and a process that also links
// cuBLASLt (which carries ~94 KiB of static TLS) cannot create them, so the CUDA worker had no /metrics.
//
// Naming (design.md): prefix zoetrope_, base units (seconds, bytes, joules), _total on counters,
// low-cardinality labels only (model, state, priority, method, code, reason), never job ids.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "prometheus/collectable.h"
#include "prometheus/histogram.h"

namespace zoetrope {

// 1 ms to 1 hour, roughly ×2.5 per bucket: step times on a fast GPU and whole 14B jobs both resolve.
const prometheus::Histogram::BucketBoundaries& DurationBuckets();
// 1 J to 10 MJ (a 14B job on 8 GPUs is a few hundred kJ).
const prometheus::Histogram::BucketBoundaries& EnergyBuckets();
// $0.0001 to $100 per video.
const prometheus::Histogram::BucketBoundaries& CostBuckets();

class MetricsEndpoint {
 public:
  // Serves GET /metrics on `address` ("127.0.0.1:9464"; port 0 picks a free port).
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(const std::string& address);
  ~MetricsEndpoint();

  void Register(const std::weak_ptr<prometheus::Collectable>& collectable);
  // The bound port (useful with port 0).
  int port() const { return port_; }

 private:
  MetricsEndpoint() = default;
  void Serve();
  void Answer(int connection);
  std::string Scrape();

  int listener_ = -1;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
  std::mutex mutex_;  // guards collectables_
  std::vector<std::weak_ptr<prometheus::Collectable>> collectables_;
};

}  // namespace zoetrope
