// zoetrope.v1.WorkerService: one bidirectional stream per worker (synchronous API: a handful of workers,
// one reader thread and one writer thread each).
#pragma once

#include "server/scheduler.h"
#include "zoetrope/v1/worker_service.grpc.pb.h"

namespace zoetrope::server {

class WorkerServiceImpl final : public zoetrope::v1::WorkerService::Service {
 public:
  explicit WorkerServiceImpl(Scheduler& scheduler) : scheduler_(scheduler) {}

  grpc::Status Connect(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<zoetrope::v1::SchedulerMessage, zoetrope::v1::WorkerMessage>* stream) override;

 private:
  Scheduler& scheduler_;
};

}  // namespace zoetrope::server
