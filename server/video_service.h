// zoetrope.v1.VideoService on gRPC's callback API: no thread is parked per open stream, so hundreds of
// WatchJob streams cost only their buffers.
//
// Every method takes its request as raw bytes and parses it itself (ParseRequest), so that malformed input
// gets INVALID_ARGUMENT with a message, and a text field that is not UTF-8 one naming the field: gRPC's own
// parse on the callback API answers such input with a bare UNIMPLEMENTED (and protobuf's with INTERNAL).
#pragma once

#include "server/scheduler.h"
#include "server/scheduler_metrics.h"
#include "zoetrope/v1/video_service.grpc.pb.h"

namespace zoetrope::server {

class VideoServiceImpl final
    : public zoetrope::v1::VideoService::WithRawCallbackMethod_SubmitJob<
          zoetrope::v1::VideoService::WithRawCallbackMethod_Generate<
              zoetrope::v1::VideoService::WithRawCallbackMethod_GetJob<
                  zoetrope::v1::VideoService::WithRawCallbackMethod_WatchJob<
                      zoetrope::v1::VideoService::WithRawCallbackMethod_CancelJob<
                          zoetrope::v1::VideoService::WithRawCallbackMethod_ListJobs<
                              zoetrope::v1::VideoService::WithRawCallbackMethod_FetchResult<
                                  zoetrope::v1::VideoService::Service>>>>>>> {
 public:
  // Both must outlive the service; `metrics` may be null.
  VideoServiceImpl(Scheduler& scheduler, SchedulerMetrics* metrics) : scheduler_(scheduler), metrics_(metrics) {}

  grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                   grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* WatchJob(grpc::CallbackServerContext* context,
                                                       const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                      grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* FetchResult(grpc::CallbackServerContext* context,
                                                          const grpc::ByteBuffer* request) override;

 private:
  Scheduler& scheduler_;
  SchedulerMetrics* metrics_;
};

// The largest chunk FetchResult sends (and the default).
inline constexpr int kMaxResultChunkBytes = 64 * 1024;

}  // namespace zoetrope::server
