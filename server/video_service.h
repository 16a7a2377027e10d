// zoetrope.v1.VideoService on gRPC's callback API: no thread is parked per open stream, so hundreds of
// WatchJob streams cost only their buffers.
//
// SubmitJob and Generate take their request as raw bytes and parse it themselves
// (ParseSubmitJobRequest), so that a text field that is not UTF-8 gets INVALID_ARGUMENT naming the field
// rather than the INTERNAL that protobuf's failed parse would give.
#pragma once

#include "server/scheduler.h"
#include "server/scheduler_metrics.h"
#include "zoetrope/v1/video_service.grpc.pb.h"

namespace zoetrope::server {

class VideoServiceImpl final
    : public zoetrope::v1::VideoService::WithRawCallbackMethod_SubmitJob<
          zoetrope::v1::VideoService::WithRawCallbackMethod_Generate<zoetrope::v1::VideoService::CallbackService>> {
 public:
  // Both must outlive the service; `metrics` may be null.
  VideoServiceImpl(Scheduler& scheduler, SchedulerMetrics* metrics) : scheduler_(scheduler), metrics_(metrics) {}

  grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context, const zoetrope::v1::GetJobRequest* request,
                                   zoetrope::v1::Job* response) override;
  grpc::ServerWriteReactor<zoetrope::v1::JobEvent>* WatchJob(grpc::CallbackServerContext* context,
                                                             const zoetrope::v1::WatchJobRequest* request) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context,
                                      const zoetrope::v1::CancelJobRequest* request,
                                      zoetrope::v1::Job* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* context, const zoetrope::v1::ListJobsRequest* request,
                                     zoetrope::v1::ListJobsResponse* response) override;
  grpc::ServerWriteReactor<zoetrope::v1::ResultChunk>* FetchResult(
      grpc::CallbackServerContext* context, const zoetrope::v1::FetchResultRequest* request) override;

 private:
  Scheduler& scheduler_;
  SchedulerMetrics* metrics_;
};

// The largest chunk FetchResult sends (and the default).
inline constexpr int kMaxResultChunkBytes = 64 * 1024;

}  // namespace zoetrope::server
