#include "server/metrics.h"

#include <exception>

#include "absl/strings/str_cat.h"
#include "prometheus/exposer.h"

namespace zoetrope::server {

const prometheus::Histogram::BucketBoundaries& DurationBuckets() {
  static const prometheus::Histogram::BucketBoundaries buckets = {
      0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,    2.5,  5,
      10,    25,     60,    120,  300,   600,  900, 1200, 1800, 2700, 3600};
  return buckets;
}

const prometheus::Histogram::BucketBoundaries& EnergyBuckets() {
  static const prometheus::Histogram::BucketBoundaries buckets = {1,     10,    100,   1e3,   5e3, 1e4,
                                                                  2.5e4, 5e4,   1e5,   2.5e5, 5e5, 1e6,
                                                                  2.5e6, 5e6,   1e7};
  return buckets;
}

const prometheus::Histogram::BucketBoundaries& CostBuckets() {
  static const prometheus::Histogram::BucketBoundaries buckets = {0.0001, 0.001, 0.005, 0.01, 0.025, 0.05,
                                                                  0.1,    0.25,  0.5,   1,    2.5,   5,
                                                                  10,     25,    100};
  return buckets;
}

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(const std::string& address) {
  std::unique_ptr<MetricsEndpoint> endpoint(new MetricsEndpoint());
  try {
    // One worker thread is plenty for a scrape every few seconds.
    endpoint->exposer_ = std::make_unique<prometheus::Exposer>(address, 1);
  } catch (const std::exception& error) {
    return absl::UnavailableError(absl::StrCat("metrics endpoint ", address, ": cannot listen: ", error.what()));
  }
  const std::vector<int> ports = endpoint->exposer_->GetListeningPorts();
  if (ports.empty()) return absl::UnavailableError(absl::StrCat("metrics endpoint ", address, ": no listening port"));
  endpoint->port_ = ports.front();
  return endpoint;
}

MetricsEndpoint::~MetricsEndpoint() = default;

void MetricsEndpoint::Register(const std::weak_ptr<prometheus::Collectable>& collectable) {
  exposer_->RegisterCollectable(collectable);
}

}  // namespace zoetrope::server
