#include "common/metrics_endpoint.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "prometheus/text_serializer.h"

namespace zoetrope {

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
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("metrics endpoint ", address, ": expected HOST:PORT"));
  }
  std::string host = address.substr(0, colon);
  if (host.empty() || host == "0.0.0.0" || host == "*") host = "0.0.0.0";
  sockaddr_in socket_address{};
  socket_address.sin_family = AF_INET;
  socket_address.sin_port = htons(static_cast<uint16_t>(port));
  if (host == "localhost") host = "127.0.0.1";
  if (inet_pton(AF_INET, host.c_str(), &socket_address.sin_addr) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("metrics endpoint ", address, ": host must be an IPv4 address"));
  }
  std::unique_ptr<MetricsEndpoint> endpoint(new MetricsEndpoint());
  endpoint->listener_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (endpoint->listener_ < 0) return absl::UnavailableError(absl::StrCat("metrics endpoint: socket: ", strerror(errno)));
  const int reuse = 1;
  setsockopt(endpoint->listener_, SOL_SOCKET, SO_REUSEADDR, &reuse, sizeof(reuse));
  if (bind(endpoint->listener_, reinterpret_cast<sockaddr*>(&socket_address), sizeof(socket_address)) != 0 ||
      listen(endpoint->listener_, 64) != 0) {
    const int error = errno;
    close(endpoint->listener_);
    endpoint->listener_ = -1;
    return absl::UnavailableError(absl::StrCat("metrics endpoint ", address, ": cannot listen: ", strerror(error)));
  }
  socklen_t length = sizeof(socket_address);
  getsockname(endpoint->listener_, reinterpret_cast<sockaddr*>(&socket_address), &length);
  endpoint->port_ = ntohs(socket_address.sin_port);
  endpoint->thread_ = std::thread([raw = endpoint.get()] { raw->Serve(); });
  return endpoint;
}

MetricsEndpoint::~MetricsEndpoint() {
  stopping_ = true;
  if (thread_.joinable()) thread_.join();
  if (listener_ >= 0) close(listener_);
}

void MetricsEndpoint::Register(const std::weak_ptr<prometheus::Collectable>& collectable) {
  std::lock_guard<std::mutex> lock(mutex_);
  collectables_.push_back(collectable);
}

void MetricsEndpoint::Serve() {
  while (!stopping_) {
    pollfd waiting{listener_, POLLIN, 0};
    // Wake up regularly so the destructor never waits long for the thread.
    if (poll(&waiting, 1, 200) <= 0) continue;
    const int connection = accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
    if (connection < 0) continue;
    Answer(connection);
    close(connection);
  }
}

std::string MetricsEndpoint::Scrape() {
  std::vector<prometheus::MetricFamily> families;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& weak : collectables_) {
      if (auto collectable = weak.lock()) {
        std::vector<prometheus::MetricFamily> collected = collectable->Collect();
        families.insert(families.end(), std::make_move_iterator(collected.begin()),
                        std::make_move_iterator(collected.end()));
      }
    }
  }
  return prometheus::TextSerializer().Serialize(families);
}

void MetricsEndpoint::Answer(int connection) {
  // Read the request head (bounded in size and time: a scraper sends a few hundred bytes at once).
  timeval timeout{2, 0};
  setsockopt(connection, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(connection, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  std::string request;
  char buffer[2048];
  while (request.find("\r\n\r\n") == std::string::npos && request.size() < 16384) {
    const ssize_t received = recv(connection, buffer, sizeof(buffer), 0);
    if (received <= 0) break;
    request.append(buffer, static_cast<size_t>(received));
  }
  const std::string line = request.substr(0, request.find("\r\n"));
  std::string status = "200 OK", type = "text/plain; version=0.0.4; charset=utf-8", body;
  if (absl::StartsWith(line, "GET /metrics ") || absl::StartsWith(line, "GET /metrics?")) {
    body = Scrape();
  } else if (absl::StartsWith(line, "GET ") || absl::StartsWith(line, "HEAD ")) {
    status = "404 Not Found";
    type = "text/plain; charset=utf-8";
    body = "only /metrics is served here\n";
  } else {
    status = "405 Method Not Allowed";
    type = "text/plain; charset=utf-8";
    body = "GET /metrics\n";
  }
  const std::string response = absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: ", type,
                                            "\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n\r\n",
                                            absl::StartsWith(line, "HEAD ") ? "" : body);
  size_t sent = 0;
  while (sent < response.size()) {
    const ssize_t written = send(connection, response.data() + sent, response.size() - sent, MSG_NOSIGNAL);
    if (written <= 0) break;
    sent += static_cast<size_t>(written);
  }
}

}  // namespace zoetrope
