// Delivery of job events to their watchers and the event bodies shared by the scheduler's state changes;
// see job_events.h. One place for the delivery rules, so a new kind of event cannot forget them.
#include "server/job_events.h"

#include <utility>

namespace zoetrope::server {

void JobWatchers::Publish(const zoetrope::v1::JobEvent& event, bool final) {
  std::vector<std::shared_ptr<JobEventSink>> open;
  open.reserve(sinks_.size());
  for (std::shared_ptr<JobEventSink>& sink : sinks_) {
    if (!sink->IsOpen()) continue;
    sink->OnEvent(event, final);
    if (!final) open.push_back(std::move(sink));
  }
  sinks_ = std::move(open);
}

WatchEventKind KindOfEvent(const zoetrope::v1::JobEvent& event) {
  if (event.has_step()) return WatchEventKind::kStep;
  if (event.has_preview()) return WatchEventKind::kPreview;
  return WatchEventKind::kOther;
}

zoetrope::v1::JobEvent QueuedEvent(int position) {
  zoetrope::v1::JobEvent event;
  event.mutable_queued()->set_position(position);
  return event;
}

zoetrope::v1::JobEvent StartedEvent(const std::string& worker_id, int attempt) {
  zoetrope::v1::JobEvent event;
  event.mutable_started()->set_worker_id(worker_id);
  event.mutable_started()->set_attempt(attempt);
  return event;
}

zoetrope::v1::JobEvent FinishedEvent(const zoetrope::v1::Job& job) {
  zoetrope::v1::JobEvent event;
  event.mutable_finished()->set_state(job.state());
  *event.mutable_finished()->mutable_error() = job.error();
  *event.mutable_finished()->mutable_measurements() = job.measurements();
  return event;
}

}  // namespace zoetrope::server
