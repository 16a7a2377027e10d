// zoetrope.v1.VideoService on gRPC's callback API: no thread is parked per open stream, so hundreds of
// WatchJob streams cost only their buffers.
//
// Every method takes its request as raw bytes and parses it itself (ParseRequest), so that malformed input
// gets INVALID_ARGUMENT with a message, and a text field that is not UTF-8 one naming the field: gRPC's own
// parse on the callback API answers such input with a bare UNIMPLEMENTED (and protobuf's with INTERNAL).
#pragma once

#include <memory>

#include "server/auth.h"
#include "server/scheduler.h"
#include "server/scheduler_metrics.h"
#include "server/tenant_quota.h"
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

  // From then on every call needs a client token of `tokens` (which must outlive the service), a tenant
  // sees only its own jobs and submissions pass its quotas (docs/security.md). Without it, every caller
  // may do everything (the loopback-only development mode). Call before serving.
  void EnableAuthentication(const TokenRegistry* tokens);

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
  // The caller's tenant: UNAUTHENTICATED without a valid token; an empty tenant without authentication.
  absl::StatusOr<Tenant> Caller(const grpc::CallbackServerContext* context) const;
  // NOT_FOUND, worded as for an unknown id, when job `id` is not the tenant's.
  absl::Status CheckOwner(const absl::StatusOr<Tenant>& caller, const std::string& id);
  absl::StatusOr<zoetrope::v1::Job> Submit(const absl::StatusOr<Tenant>& caller,
                                           absl::FunctionRef<absl::StatusOr<zoetrope::v1::Job>()> submit);

  Scheduler& scheduler_;
  SchedulerMetrics* metrics_;
  const TokenRegistry* tokens_ = nullptr;
  std::unique_ptr<TenantQuotaGate> quotas_;
};

// The largest chunk FetchResult sends (and the default).
inline constexpr int kMaxResultChunkBytes = 64 * 1024;

}  // namespace zoetrope::server
