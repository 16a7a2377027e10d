// zoetrope.v1.WorkerService: one bidirectional stream per worker (synchronous API: a handful of workers,
// one reader thread and one writer thread each).
#pragma once

#include "server/auth.h"
#include "server/scheduler.h"
#include "zoetrope/v1/worker_service.grpc.pb.h"

namespace zoetrope::server {

class WorkerServiceImpl final : public zoetrope::v1::WorkerService::Service {
 public:
  explicit WorkerServiceImpl(Scheduler& scheduler) : scheduler_(scheduler) {}

  // From then on a stream needs a worker token of `tokens` (which must outlive the service); call before
  // serving (docs/security.md).
  void RequireWorkerToken(const TokenRegistry* tokens) { tokens_ = tokens; }

  grpc::Status Connect(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<zoetrope::v1::SchedulerMessage, zoetrope::v1::WorkerMessage>* stream) override;

 private:
  Scheduler& scheduler_;
  const TokenRegistry* tokens_ = nullptr;
};

}  // namespace zoetrope::server
