#include "server/video_service.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/support/byte_buffer.h"
#include "server/request_validation.h"

namespace zoetrope::server {
namespace {

namespace v1 = zoetrope::v1;

// Events a slow client may have pending before older step events are dropped (the newest step and every
// other kind of event are always delivered); previews have one slot besides (EnqueueForWatcher).
constexpr size_t kMaxPendingEvents = 256;

grpc::Status ToGrpc(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

std::string CodeName(const grpc::Status& status) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code()));
}

void Count(SchedulerMetrics* metrics, const char* method, const grpc::Status& status) {
  if (metrics != nullptr) metrics->ApiRequest(method, CodeName(status));
}

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string bytes;
  if (!buffer.Dump(&slices).ok()) return bytes;
  bytes.reserve(buffer.Length());
  for (const grpc::Slice& slice : slices) bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  return bytes;
}

grpc::ByteBuffer Serialize(const google::protobuf::Message& message) {
  grpc::ByteBuffer buffer;
  const std::string bytes = message.SerializeAsString();
  grpc::Slice slice(bytes);
  buffer = grpc::ByteBuffer(&slice, 1);
  return buffer;
}

template <typename Wire>
Wire ToWire(const v1::JobEvent& event);
template <>
v1::JobEvent ToWire<v1::JobEvent>(const v1::JobEvent& event) {
  return event;
}
template <>
grpc::ByteBuffer ToWire<grpc::ByteBuffer>(const v1::JobEvent& event) {
  return Serialize(event);
}

// A server stream of one job's events. The scheduler pushes events into the shared State (its sink);
// one write is in flight at a time; the reactor finishes after the final event, or when the client
// leaves. Reactor methods may run inline inside StartWrite, so StartWrite and Finish are never called
// with the state's mutex held.
template <typename Wire>
class EventStreamReactor final : public grpc::ServerWriteReactor<Wire> {
 public:
  EventStreamReactor(SchedulerMetrics* metrics, const char* method)
      : metrics_(metrics), method_(method), state_(std::make_shared<State>()) {
    state_->reactor = this;
    if (metrics_ != nullptr) metrics_->WatchersChanged(1);
  }

  std::shared_ptr<JobEventSink> sink() const { return state_; }

  // Ends the stream before any event (e.g. NOT_FOUND).
  void FinishWithError(const grpc::Status& status) {
    {
      absl::MutexLock lock(&state_->mutex);
      if (state_->finished) return;
      state_->finished = true;
      state_->open = false;
    }
    Count(metrics_, method_, status);
    this->Finish(status);
  }

  void OnWriteDone(bool ok) override {
    bool finish = false, write_next = false;
    grpc::Status status = grpc::Status::OK;
    {
      absl::MutexLock lock(&state_->mutex);
      if (!ok) {
        state_->open = false;
        finish = !state_->finished;
        state_->finished = true;
        status = grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
      } else if (current_final_) {
        state_->open = false;
        finish = !state_->finished;
        state_->finished = true;
      } else if (state_->pending.empty()) {
        state_->writing = false;
      } else {
        write_next = true;
      }
    }
    if (finish) {
      Count(metrics_, method_, status);
      this->Finish(status);
    } else if (write_next) {
      WriteNext();
    }
  }

  void OnCancel() override {
    bool finish = false;
    {
      absl::MutexLock lock(&state_->mutex);
      state_->open = false;
      // With a write in flight, OnWriteDone(false) follows and finishes.
      if (!state_->writing && !state_->finished) {
        state_->finished = true;
        finish = true;
      }
    }
    if (finish) {
      const grpc::Status status(grpc::StatusCode::CANCELLED, "the client cancelled the stream");
      Count(metrics_, method_, status);
      this->Finish(status);
    }
  }

  void OnDone() override {
    {
      absl::MutexLock lock(&state_->mutex);
      state_->reactor = nullptr;
      state_->open = false;
    }
    if (metrics_ != nullptr) metrics_->WatchersChanged(-1);
    delete this;
  }

 private:
  struct Pending {
    Wire message;
    bool final = false;
    WatchEventKind kind = WatchEventKind::kOther;
  };

  struct State final : public JobEventSink {
    mutable absl::Mutex mutex;
    EventStreamReactor* reactor ABSL_GUARDED_BY(mutex) = nullptr;
    std::deque<Pending> pending ABSL_GUARDED_BY(mutex);
    bool writing ABSL_GUARDED_BY(mutex) = false;
    bool finished ABSL_GUARDED_BY(mutex) = false;
    bool open ABSL_GUARDED_BY(mutex) = true;

    void OnEvent(const v1::JobEvent& event, bool final) override {
      Pending entry{ToWire<Wire>(event), final, KindOfEvent(event)};
      EventStreamReactor* start = nullptr;
      {
        absl::MutexLock lock(&mutex);
        if (!open || finished || reactor == nullptr) return;
        EnqueueForWatcher(pending, std::move(entry), kMaxPendingEvents);
        if (!writing) {
          writing = true;
          start = reactor;
        }
      }
      if (start != nullptr) start->WriteNext();
    }

    bool IsOpen() const override {
      absl::MutexLock lock(&mutex);
      return open && !finished;
    }
  };

  // Called with `writing` set by the caller, so no other write can start meanwhile.
  void WriteNext() {
    {
      absl::MutexLock lock(&state_->mutex);
      current_ = std::move(state_->pending.front().message);
      current_final_ = state_->pending.front().final;
      state_->pending.pop_front();
    }
    this->StartWrite(&current_);
  }

  SchedulerMetrics* metrics_;
  const char* method_;
  std::shared_ptr<State> state_;
  Wire current_;
  bool current_final_ = false;
};

// Streams a result file from an offset in chunks.
class FetchReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  FetchReactor(SchedulerMetrics* metrics, ResultLocation location, int64_t offset, int chunk_size)
      : metrics_(metrics), location_(std::move(location)), offset_(offset), chunk_size_(chunk_size) {}

  void Start() {
    fd_ = ::open(location_.path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) {
      FinishWith(grpc::Status(grpc::StatusCode::NOT_FOUND,
                              absl::StrCat("the result file is gone (", std::strerror(errno), ")")));
      return;
    }
    buffer_.resize(chunk_size_);
    WriteNext();
  }

  void FinishWith(const grpc::Status& status) {
    Count(metrics_, "FetchResult", status);
    Finish(status);
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      FinishWith(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
    } else if (chunk_.last()) {
      FinishWith(grpc::Status::OK);
    } else {
      WriteNext();
    }
  }

  void OnDone() override {
    if (fd_ >= 0) ::close(fd_);
    delete this;
  }

 private:
  void WriteNext() {
    const int64_t remaining = location_.size_bytes - offset_;
    const size_t wanted = static_cast<size_t>(std::min<int64_t>(remaining, chunk_size_));
    size_t have = 0;
    while (have < wanted) {
      const ssize_t count = ::pread(fd_, buffer_.data() + have, wanted - have, offset_ + static_cast<int64_t>(have));
      if (count < 0 && errno == EINTR) continue;
      if (count <= 0) {
        FinishWith(grpc::Status(grpc::StatusCode::DATA_LOSS,
                                absl::StrCat("reading the result at offset ", offset_ + have, ": ",
                                             count < 0 ? std::strerror(errno) : "file shorter than recorded")));
        return;
      }
      have += static_cast<size_t>(count);
    }
    chunk_.Clear();
    chunk_.set_offset(offset_);
    chunk_.set_data(buffer_.data(), have);
    chunk_.set_total_size(location_.size_bytes);
    chunk_.set_media_type(location_.media_type);
    chunk_.set_sha256(location_.sha256);
    offset_ += static_cast<int64_t>(have);
    chunk_.set_last(offset_ == location_.size_bytes);
    wire_ = Serialize(chunk_);
    StartWrite(&wire_);
  }

  SchedulerMetrics* metrics_;
  ResultLocation location_;
  int64_t offset_;
  int chunk_size_;
  int fd_ = -1;
  std::string buffer_;
  v1::ResultChunk chunk_;
  grpc::ByteBuffer wire_;  // chunk_ serialized; must outlive the write
};

// A unary method on raw bytes: parses the request (INVALID_ARGUMENT when malformed), runs `call` on it,
// serializes the answer and counts the call.
template <typename Request, typename Call>
grpc::ServerUnaryReactor* RunUnary(grpc::CallbackServerContext* context, SchedulerMetrics* metrics, const char* method,
                                   const absl::Status& authenticated, const grpc::ByteBuffer& request_bytes,
                                   grpc::ByteBuffer* response, Call call) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  Request request;
  absl::Status status = authenticated.ok() ? ParseRequest(Flatten(request_bytes), request) : authenticated;
  if (status.ok()) {
    auto answer = call(request);
    if (answer.ok()) *response = Serialize(*answer);
    status = answer.status();
  }
  const grpc::Status grpc_status = ToGrpc(status);
  Count(metrics, method, grpc_status);
  reactor->Finish(grpc_status);
  return reactor;
}

}  // namespace

void VideoServiceImpl::EnableAuthentication(const TokenRegistry* tokens) {
  tokens_ = tokens;
  quotas_ = std::make_unique<TenantQuotaGate>(scheduler_);
}

absl::StatusOr<Tenant> VideoServiceImpl::Caller(const grpc::CallbackServerContext* context) const {
  if (tokens_ == nullptr) return Tenant{};
  return tokens_->AuthenticateClient(context->client_metadata());
}

absl::Status VideoServiceImpl::CheckOwner(const absl::StatusOr<Tenant>& caller, const std::string& id) {
  if (!caller.ok()) return caller.status();
  if (tokens_ == nullptr) return absl::OkStatus();
  absl::StatusOr<v1::Job> job = scheduler_.GetJob(id);
  if (!job.ok()) return job.status();
  // NOT_FOUND rather than PERMISSION_DENIED, in the words used for an unknown id: job ids must not
  // tell one tenant which jobs another has.
  if (job->tenant() != caller->name) return absl::NotFoundError(absl::StrCat("id: no job \"", id, "\""));
  return absl::OkStatus();
}

absl::StatusOr<v1::Job> VideoServiceImpl::Submit(const absl::StatusOr<Tenant>& caller,
                                                 absl::FunctionRef<absl::StatusOr<v1::Job>()> submit) {
  if (!caller.ok()) return caller.status();
  if (quotas_ == nullptr) return submit();
  return quotas_->Admit(*caller, submit);
}

grpc::ServerUnaryReactor* VideoServiceImpl::SubmitJob(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const absl::StatusOr<Tenant> caller = Caller(context);
  absl::StatusOr<v1::SubmitJobRequest> parsed =
      caller.ok() ? ParseSubmitJobRequest(Flatten(*request)) : absl::StatusOr<v1::SubmitJobRequest>(caller.status());
  absl::StatusOr<v1::Job> job =
      parsed.ok() ? Submit(caller, [&] { return scheduler_.Submit(*parsed, caller->name); })
                  : absl::StatusOr<v1::Job>(parsed.status());
  if (job.ok()) *response = Serialize(*job);
  const grpc::Status status = ToGrpc(job.status());
  Count(metrics_, "SubmitJob", status);
  reactor->Finish(status);
  return reactor;
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* VideoServiceImpl::Generate(grpc::CallbackServerContext* context,
                                                                       const grpc::ByteBuffer* request) {
  auto* reactor = new EventStreamReactor<grpc::ByteBuffer>(metrics_, "Generate");
  const absl::StatusOr<Tenant> caller = Caller(context);
  absl::StatusOr<v1::SubmitJobRequest> parsed =
      caller.ok() ? ParseSubmitJobRequest(Flatten(*request)) : absl::StatusOr<v1::SubmitJobRequest>(caller.status());
  absl::Status status = parsed.status();
  if (parsed.ok()) {
    status = Submit(caller, [&] { return scheduler_.SubmitAndWatch(*parsed, reactor->sink(), caller->name); }).status();
  }
  if (!status.ok()) reactor->FinishWithError(ToGrpc(status));
  return reactor;
}

grpc::ServerUnaryReactor* VideoServiceImpl::GetJob(grpc::CallbackServerContext* context,
                                                   const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
  const absl::StatusOr<Tenant> caller = Caller(context);
  return RunUnary<v1::GetJobRequest>(context, metrics_, "GetJob", caller.status(), *request, response,
                                     [&](const v1::GetJobRequest& parsed) -> absl::StatusOr<v1::Job> {
                                       if (absl::Status owner = CheckOwner(caller, parsed.id()); !owner.ok()) {
                                         return owner;
                                       }
                                       return scheduler_.GetJob(parsed.id());
                                     });
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* VideoServiceImpl::WatchJob(grpc::CallbackServerContext* context,
                                                                       const grpc::ByteBuffer* request) {
  auto* reactor = new EventStreamReactor<grpc::ByteBuffer>(metrics_, "WatchJob");
  v1::WatchJobRequest parsed;
  const absl::StatusOr<Tenant> caller = Caller(context);
  absl::Status status = caller.ok() ? ParseRequest(Flatten(*request), parsed) : caller.status();
  if (status.ok()) status = CheckOwner(caller, parsed.id());
  if (status.ok()) status = scheduler_.Watch(parsed.id(), reactor->sink());
  if (!status.ok()) reactor->FinishWithError(ToGrpc(status));
  return reactor;
}

grpc::ServerUnaryReactor* VideoServiceImpl::CancelJob(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
  const absl::StatusOr<Tenant> caller = Caller(context);
  return RunUnary<v1::CancelJobRequest>(context, metrics_, "CancelJob", caller.status(), *request, response,
                                        [&](const v1::CancelJobRequest& parsed) -> absl::StatusOr<v1::Job> {
                                          if (absl::Status owner = CheckOwner(caller, parsed.id()); !owner.ok()) {
                                            return owner;
                                          }
                                          return scheduler_.CancelJob(parsed.id());
                                        });
}

grpc::ServerUnaryReactor* VideoServiceImpl::ListJobs(grpc::CallbackServerContext* context,
                                                     const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
  const absl::StatusOr<Tenant> caller = Caller(context);
  return RunUnary<v1::ListJobsRequest>(
      context, metrics_, "ListJobs", caller.status(), *request, response,
      [&](const v1::ListJobsRequest& parsed) -> absl::StatusOr<v1::ListJobsResponse> {
        absl::StatusOr<v1::ListJobsResponse> page = scheduler_.ListJobs(parsed);
        if (!page.ok() || tokens_ == nullptr) return page;
        // Other tenants' jobs are taken out of the page, so a page may hold fewer than page_size jobs
        // (even none) while next_page_token says more may follow.
        auto* jobs = page->mutable_jobs();
        jobs->erase(std::remove_if(jobs->begin(), jobs->end(),
                                   [&](const v1::Job& job) { return job.tenant() != caller->name; }),
                    jobs->end());
        return page;
      });
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* VideoServiceImpl::FetchResult(grpc::CallbackServerContext* context,
                                                                          const grpc::ByteBuffer* request_bytes) {
  v1::FetchResultRequest request;
  const absl::StatusOr<Tenant> caller = Caller(context);
  absl::Status invalid = caller.ok() ? ParseRequest(Flatten(*request_bytes), request) : caller.status();
  if (invalid.ok()) invalid = CheckOwner(caller, request.id());
  if (invalid.ok() && (request.chunk_size() < 0 || request.chunk_size() > kMaxResultChunkBytes)) {
    invalid = absl::InvalidArgumentError(absl::StrCat("chunk_size: must be in [0, ", kMaxResultChunkBytes, "] (got ",
                                                      request.chunk_size(), ")"));
  } else if (invalid.ok() && request.offset() < 0) {
    invalid = absl::InvalidArgumentError(absl::StrCat("offset: must be ≥ 0 (got ", request.offset(), ")"));
  }
  absl::StatusOr<ResultLocation> location =
      invalid.ok() ? scheduler_.GetResult(request.id()) : absl::StatusOr<ResultLocation>(invalid);
  if (location.ok() && request.offset() > location->size_bytes) {
    location = absl::OutOfRangeError(absl::StrCat("offset: ", request.offset(), " is past the end of the result (",
                                                  location->size_bytes, " bytes)"));
  }
  const int chunk_size = request.chunk_size() <= 0 || request.chunk_size() > kMaxResultChunkBytes
                             ? kMaxResultChunkBytes
                             : request.chunk_size();
  auto* reactor =
      new FetchReactor(metrics_, location.ok() ? *location : ResultLocation{}, request.offset(), chunk_size);
  if (!location.ok()) {
    reactor->FinishWith(ToGrpc(location.status()));
  } else {
    reactor->Start();
  }
  return reactor;
}

}  // namespace zoetrope::server
