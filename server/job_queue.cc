// The JobQueue's ordering, positions and per-(model, priority) counts; see job_queue.h. Kept apart from
// the scheduler so that the queue's rules can be read without the job lifecycle around them.
#include "server/job_queue.h"

namespace zoetrope::server {

JobQueue::Entry JobQueue::MakeEntry(const std::string& job_id, zoetrope::v1::Priority priority, int64_t sequence) {
  // Negated so that the set's ascending order puts the highest priority first.
  return Entry{-static_cast<int>(priority), sequence, job_id};
}

int JobQueue::Insert(const std::string& job_id, const std::string& model, zoetrope::v1::Priority priority,
                     int64_t sequence) {
  entries_.insert(MakeEntry(job_id, priority, sequence));
  return ++count_by_model_priority_[{model, static_cast<int>(priority)}];
}

std::optional<int> JobQueue::Erase(const std::string& job_id, const std::string& model, zoetrope::v1::Priority priority,
                                   int64_t sequence) {
  if (entries_.erase(MakeEntry(job_id, priority, sequence)) == 0) return std::nullopt;
  return --count_by_model_priority_[{model, static_cast<int>(priority)}];
}

int JobQueue::PositionOf(const std::string& job_id, zoetrope::v1::Priority priority, int64_t sequence) const {
  const Entry key = MakeEntry(job_id, priority, sequence);
  int position = 1;
  for (const Entry& entry : entries_) {
    if (entry == key) return position;
    ++position;
  }
  return 0;
}

}  // namespace zoetrope::server
