// Job events and their fan-out to watchers: the sink interface a WatchJob or Generate stream implements,
// the set of sinks watching one job, and the bodies of the events that more than one place sends (queued,
// started, finished). Kept out of the scheduler so that the rules of delivery (closed sinks are dropped,
// nothing follows a final event) live in one place instead of at every state change.
//
// Not thread-safe: the scheduler calls all of this under its mutex.
#pragma once

#include <cstddef>
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "zoetrope/v1/video_service.pb.h"

namespace zoetrope::server {

// Receives one job's events. Called with the scheduler's lock held: must not block.
class JobEventSink {
 public:
  virtual ~JobEventSink() = default;
  // `final` is set on the last event (the job finished); nothing follows it.
  virtual void OnEvent(const zoetrope::v1::JobEvent& event, bool final) = 0;
  // False once the client went away; the scheduler then drops the sink.
  virtual bool IsOpen() const = 0;
};

// The sinks watching one job.
class JobWatchers {
 public:
  void Add(std::shared_ptr<JobEventSink> sink) { sinks_.push_back(std::move(sink)); }
  bool empty() const { return sinks_.empty(); }
  // Hands `event` to every open sink and forgets the closed ones; after a final event, all of them.
  void Publish(const zoetrope::v1::JobEvent& event, bool final);

 private:
  std::vector<std::shared_ptr<JobEventSink>> sinks_;
};

// The most bytes of image data one preview event may carry (video_service.proto, JobEvent.Preview).
inline constexpr size_t kMaxPreviewBytes = 64 * 1024;

// How a watcher's queue treats an event when the client reads slowly (see EnqueueForWatcher).
enum class WatchEventKind { kOther, kStep, kPreview };
WatchEventKind KindOfEvent(const zoetrope::v1::JobEvent& event);

// Appends `entry` (anything with a `kind` member of WatchEventKind) to one watcher's queue of events not
// yet written, with the rules for a client that reads slowly or not at all:
//  * previews have one slot: a new preview replaces a preview still waiting (and goes to the end, so
//    events stay in time order); a watcher is never more than one preview behind;
//  * past `max_pending` entries the oldest step event is dropped (the newest steps say where the job is);
//  * every other event (queued, started, phase, finished) is always kept.
// So the memory a stuck watcher holds is bounded (max_pending small events plus one preview), and what it
// loses first are previews, then old steps, never state changes.
template <typename Entry>
void EnqueueForWatcher(std::deque<Entry>& pending, Entry entry, size_t max_pending) {
  if (entry.kind == WatchEventKind::kPreview) {
    for (auto it = pending.begin(); it != pending.end(); ++it) {
      if (it->kind == WatchEventKind::kPreview) {
        pending.erase(it);
        break;
      }
    }
  } else if (pending.size() >= max_pending) {
    for (auto it = pending.begin(); it != pending.end(); ++it) {
      if (it->kind == WatchEventKind::kStep) {
        pending.erase(it);
        break;
      }
    }
  }
  pending.push_back(std::move(entry));
}

// Event bodies; the caller adds the job's snapshot and the time.
zoetrope::v1::JobEvent QueuedEvent(int position);
zoetrope::v1::JobEvent StartedEvent(const std::string& worker_id, int attempt);
// The last event of a job, from its final state, error and measurements as recorded on `job`.
zoetrope::v1::JobEvent FinishedEvent(const zoetrope::v1::Job& job);

}  // namespace zoetrope::server
