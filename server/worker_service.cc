#include "server/worker_service.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace zoetrope::server {
namespace {

namespace v1 = zoetrope::v1;
using Stream = grpc::ServerReaderWriter<v1::SchedulerMessage, v1::WorkerMessage>;

// The scheduler's side of one worker stream: Send queues (never blocks the scheduler), a writer thread
// writes in order. Close cancels the call, which also ends the reader loop.
class StreamChannel final : public WorkerChannel {
 public:
  StreamChannel(grpc::ServerContext* context, Stream* stream) : context_(context), stream_(stream) {
    writer_ = std::thread([this] { WriterLoop(); });
  }
  ~StreamChannel() override { Shutdown(); }

  void Send(const v1::SchedulerMessage& message) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_) return;
    outbox_.push_back(message);
    wake_.notify_one();
  }

  void Close() override {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
    if (context_ != nullptr) context_->TryCancel();
    wake_.notify_one();
  }

  // Stops the writer; afterwards the call's context may go away.
  void Shutdown() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
      wake_.notify_one();
    }
    if (writer_.joinable()) writer_.join();
    std::lock_guard<std::mutex> lock(mutex_);
    context_ = nullptr;
  }

 private:
  void WriterLoop() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (true) {
      wake_.wait(lock, [this] { return stopping_ || closed_ || !outbox_.empty(); });
      if (stopping_ || closed_) return;
      v1::SchedulerMessage message = std::move(outbox_.front());
      outbox_.pop_front();
      lock.unlock();
      const bool written = stream_->Write(message);
      lock.lock();
      if (!written) {
        closed_ = true;
        if (context_ != nullptr) context_->TryCancel();
        return;
      }
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  grpc::ServerContext* context_;
  Stream* stream_;
  std::deque<v1::SchedulerMessage> outbox_;
  bool closed_ = false;
  bool stopping_ = false;
  std::thread writer_;
};

}  // namespace

grpc::Status WorkerServiceImpl::Connect(grpc::ServerContext* context, Stream* stream) {
  if (tokens_ != nullptr) {
    // Before reading anything: an unauthenticated peer learns nothing and sends nothing we look at.
    if (absl::Status allowed = tokens_->AuthenticateWorker(context->client_metadata()); !allowed.ok()) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, std::string(allowed.message()));
    }
  }
  v1::WorkerMessage first;
  if (!stream->Read(&first)) return grpc::Status(grpc::StatusCode::CANCELLED, "the worker left before its hello");
  if (!first.has_hello()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "the first message of a worker stream must be a hello");
  }
  auto channel = std::make_shared<StreamChannel>(context, stream);
  absl::StatusOr<uint64_t> connection = scheduler_.AttachWorker(first.hello(), channel);
  if (!connection.ok()) {
    channel->Shutdown();
    return grpc::Status(static_cast<grpc::StatusCode>(connection.status().code()),
                        std::string(connection.status().message()));
  }
  v1::WorkerMessage message;
  while (stream->Read(&message)) scheduler_.OnWorkerMessage(*connection, message);
  scheduler_.DetachWorker(*connection);
  channel->Shutdown();
  return grpc::Status::OK;
}

}  // namespace zoetrope::server
