// A watcher's queue when the client reads slowly (server/job_events.h, EnqueueForWatcher): one preview slot,
// old steps dropped past the bound, every other event kept.
#include "server/job_events.h"

#include <deque>
#include <vector>

#include "gtest/gtest.h"

namespace zoetrope::server {
namespace {

struct Entry {
  int id;
  WatchEventKind kind;
};

std::vector<int> Ids(const std::deque<Entry>& pending) {
  std::vector<int> ids;
  for (const Entry& entry : pending) ids.push_back(entry.id);
  return ids;
}

TEST(JobEventsTest, APreviewReplacesTheOneWaitingAndGoesLast) {
  std::deque<Entry> pending;
  EnqueueForWatcher(pending, Entry{1, WatchEventKind::kStep}, 8);
  EnqueueForWatcher(pending, Entry{2, WatchEventKind::kPreview}, 8);
  EnqueueForWatcher(pending, Entry{3, WatchEventKind::kStep}, 8);
  EnqueueForWatcher(pending, Entry{4, WatchEventKind::kPreview}, 8);
  EXPECT_EQ(Ids(pending), (std::vector<int>{1, 3, 4}));
}

TEST(JobEventsTest, AStuckWatcherKeepsEveryStateChangeAndAtMostOnePreview) {
  std::deque<Entry> pending;
  constexpr size_t kBound = 16;
  EnqueueForWatcher(pending, Entry{0, WatchEventKind::kOther}, kBound);  // queued
  for (int i = 1; i <= 1000; ++i) {
    EnqueueForWatcher(pending, Entry{i, i % 3 == 0 ? WatchEventKind::kPreview : WatchEventKind::kStep}, kBound);
  }
  EnqueueForWatcher(pending, Entry{2000, WatchEventKind::kOther}, kBound);  // finished
  int previews = 0;
  for (const Entry& entry : pending) previews += entry.kind == WatchEventKind::kPreview;
  EXPECT_EQ(previews, 1);
  EXPECT_LE(pending.size(), kBound + 1);
  EXPECT_EQ(pending.front().id, 0);
  EXPECT_EQ(pending.back().id, 2000);
  // The newest steps survive (the last step sent was 1000).
  EXPECT_EQ(pending[pending.size() - 2].id, 1000);
}

TEST(JobEventsTest, KindOfEvent) {
  zoetrope::v1::JobEvent event;
  event.mutable_preview()->set_step(3);
  EXPECT_EQ(KindOfEvent(event), WatchEventKind::kPreview);
  event.mutable_step()->set_step(3);
  EXPECT_EQ(KindOfEvent(event), WatchEventKind::kStep);
  event.mutable_finished();
  EXPECT_EQ(KindOfEvent(event), WatchEventKind::kOther);
}

}  // namespace
}  // namespace zoetrope::server
