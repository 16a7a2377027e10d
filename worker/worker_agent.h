// The worker's service side: one bidirectional stream to the scheduler (zoetrope.v1.WorkerService),
// capabilities, heartbeats, one job at a time through a JobRunner, an event per denoising step, the
// result uploaded in 64 KiB chunks, reconnection with backoff, and drain on SIGTERM.
//
// A job survives a broken stream: the worker keeps running it (or keeps its finished result), reconnects,
// names it in the next hello, and delivers it once the scheduler adopts it. The job is forgotten only
// when the scheduler acknowledged its completion or told the worker to drop it.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "grpcpp/security/credentials.h"
#include "worker/job_runner.h"
#include "worker/worker_metrics.h"
#include "zoetrope/v1/worker_service.grpc.pb.h"

namespace zoetrope {

struct WorkerAgentOptions {
  // host:port of the scheduler; ignored when `channel` is set (embedded mode).
  std::string scheduler_address = "127.0.0.1:50051";
  std::shared_ptr<grpc::Channel> channel;
  // The scheduler's worker token, sent as `authorization: Bearer <token>` (docs/security.md); empty: none.
  std::string token;
  // Of the channel to `scheduler_address` (TLS, client certificate); null: plaintext.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // Stable for the life of the process; empty: "<hostname>-<pid>".
  std::string worker_id;
  // Where results wait for their upload.
  std::string work_directory = "/tmp";
  absl::Duration reconnect_initial_backoff = absl::Milliseconds(100);
  absl::Duration reconnect_max_backoff = absl::Seconds(5);
  // On drain, a job still running after this long is handed back to the scheduler (queued again).
  absl::Duration drain_timeout = absl::Minutes(10);
  // The price of one GPU-hour of this worker's pool in dollars, announced to the scheduler for the cost of
  // its jobs (0: the scheduler's default price).
  double price_per_gpu_hour = 0.0;
  // Live previews (docs/previews.md): the smallest interval in steps this worker honours. A request asking
  // for previews more often gets one every `min_preview_every` steps; 0 turns previews off on this worker.
  int min_preview_every = 1;
};

class WorkerAgent {
 public:
  // `runner` and `metrics` (may be null) must outlive the agent.
  WorkerAgent(WorkerAgentOptions options, JobRunner& runner, WorkerMetrics* metrics);
  ~WorkerAgent();  // Stop() and join
  WorkerAgent(const WorkerAgent&) = delete;
  WorkerAgent& operator=(const WorkerAgent&) = delete;

  // Serves until a drain completed or Stop(); returns then. Call once.
  void Run();
  // SIGTERM: no new jobs; the job held now is finished and delivered (or handed back after the drain
  // timeout); then Run returns. Thread-safe, returns at once.
  void Drain();
  // Stops now: a running job is abandoned (the scheduler queues it again). Thread-safe, returns at once.
  void Stop();

  const std::string& worker_id() const { return options_.worker_id; }

 private:
  struct Session;
  struct HeldJob;
  class StepReporter;

  std::shared_ptr<Session> Connect();
  void Serve(const std::shared_ptr<Session>& session);
  void Handle(const std::shared_ptr<Session>& session, const zoetrope::v1::SchedulerMessage& message);
  void StartJob(const std::shared_ptr<Session>& session, const zoetrope::v1::JobAssignment& assignment)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void RunJob(std::shared_ptr<HeldJob> job);
  void Deliver(const std::shared_ptr<HeldJob>& job);
  bool Upload(const std::shared_ptr<Session>& session, const HeldJob& job);
  void DropHeldLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void SendOnCurrentSession(const zoetrope::v1::WorkerMessage& message);
  // Previews go out from their own thread through a one-message slot (a newer preview replaces one not
  // yet sent), so a slow stream to the scheduler costs previews, never time on the job thread.
  void OfferPreview(zoetrope::v1::WorkerMessage message);
  void PreviewLoop();
  void HeartbeatLoop();
  zoetrope::v1::WorkerHello HelloLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  bool DoneLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  WorkerAgentOptions options_;
  JobRunner& runner_;
  WorkerMetrics* metrics_;
  const RunnerCapabilities capabilities_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<zoetrope::v1::WorkerService::Stub> stub_;

  mutable absl::Mutex mutex_;
  std::shared_ptr<Session> session_ ABSL_GUARDED_BY(mutex_);
  std::shared_ptr<HeldJob> held_ ABSL_GUARDED_BY(mutex_);
  bool draining_ ABSL_GUARDED_BY(mutex_) = false;
  absl::Time drain_deadline_ ABSL_GUARDED_BY(mutex_) = absl::InfiniteFuture();
  bool stopping_ ABSL_GUARDED_BY(mutex_) = false;
  absl::Duration heartbeat_interval_ ABSL_GUARDED_BY(mutex_) = absl::Seconds(1);
  int sessions_ ABSL_GUARDED_BY(mutex_) = 0;
  std::thread job_thread_;
  std::thread heartbeat_thread_;

  absl::Mutex preview_mutex_;
  std::unique_ptr<zoetrope::v1::WorkerMessage> preview_slot_ ABSL_GUARDED_BY(preview_mutex_);
  bool preview_stop_ ABSL_GUARDED_BY(preview_mutex_) = false;
  std::thread preview_thread_;
};

}  // namespace zoetrope
