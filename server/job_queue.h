// The scheduler's queue of waiting jobs: priority classes (HIGH before NORMAL before LOW), FIFO inside a
// class by acceptance sequence, 1-based positions, and how many jobs wait per (model, priority) for the
// queue-depth gauge. It knows jobs only by id, priority, sequence and model, so the ordering rules can be
// read (and changed) apart from dispatch, persistence and events, which stay in the Scheduler.
//
// Not thread-safe: the scheduler serializes calls under its mutex.
#pragma once

#include <compare>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include "zoetrope/v1/video_service.pb.h"

namespace zoetrope::server {

class JobQueue {
 public:
  // A queued job as the queue orders it: higher priority first, then lower sequence (accepted earlier).
  struct Entry {
    int negated_priority = 0;
    int64_t sequence = 0;
    std::string job_id;
    auto operator<=>(const Entry&) const = default;
  };
  using const_iterator = std::set<Entry>::const_iterator;

  // Both return how many jobs of the job's (model, priority) wait afterwards, for the queue-depth gauge;
  // Erase returns nothing when the job was not queued (nothing changed).
  int Insert(const std::string& job_id, const std::string& model, zoetrope::v1::Priority priority, int64_t sequence);
  std::optional<int> Erase(const std::string& job_id, const std::string& model, zoetrope::v1::Priority priority,
                           int64_t sequence);

  // 1 for the job that runs next; 0 when the job is not queued.
  int PositionOf(const std::string& job_id, zoetrope::v1::Priority priority, int64_t sequence) const;

  size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }
  // In queue order. Erasing an entry invalidates only iterators to that entry.
  const_iterator begin() const { return entries_.begin(); }
  const_iterator end() const { return entries_.end(); }

 private:
  static Entry MakeEntry(const std::string& job_id, zoetrope::v1::Priority priority, int64_t sequence);

  std::set<Entry> entries_;
  std::map<std::pair<std::string, int>, int> count_by_model_priority_;
};

}  // namespace zoetrope::server
