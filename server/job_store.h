// The durable job store: one SQLite database in WAL mode (the embedded default of design.md).
//
// Every job is a row holding its serialized zoetrope.v1.Job plus the columns that queries filter on.
// A write returns after SQLite committed it (with synchronous=FULL, after the WAL was fsynced), so a job
// is on disk before SubmitJob answers and survives kill -9 and power loss.
//
// Not thread-safe: the scheduler serializes calls.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "zoetrope/v1/video_service.pb.h"

struct sqlite3;
struct sqlite3_stmt;

namespace zoetrope::server {

struct StoredJob {
  int64_t sequence = 0;  // insertion order: FIFO order inside a priority class, and list order
  zoetrope::v1::Job job;
  // Times the job's worker disappeared while running it (the retry budget; `job.attempt` counts every
  // hand-out, including jobs a draining worker handed back).
  int worker_losses = 0;
  // Deterministic serialization of the request as the client sent it (idempotency check).
  std::string request_fingerprint;
};

struct JobListQuery {
  std::vector<int> states;  // zoetrope.v1.JobState values; empty: all
  std::string model;        // empty: all
  int64_t created_after_unix_nanos = 0;   // 0: unbounded
  int64_t created_before_unix_nanos = 0;  // 0: unbounded
  int64_t before_sequence = 0;            // page start: rows with a smaller sequence; 0: from the newest
  int limit = 50;
};

class JobStore {
 public:
  enum class Sync { kFull, kNormal };

  // Opens or creates the database (and its folder), enables WAL, creates or checks the schema.
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(const std::string& path, Sync sync = Sync::kFull);
  ~JobStore();
  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  const std::string& path() const { return path_; }

  // Inserts a new job; ALREADY_EXISTS when its id or client request id is taken. Returns its sequence.
  absl::StatusOr<int64_t> Insert(const zoetrope::v1::Job& job, const std::string& request_fingerprint);
  // Rewrites an existing job (state, blob, retry budget); NOT_FOUND when it does not exist.
  absl::Status Update(const zoetrope::v1::Job& job, int worker_losses);

  absl::StatusOr<std::optional<StoredJob>> Get(const std::string& id);
  absl::StatusOr<std::optional<StoredJob>> GetByClientRequestId(const std::string& client_request_id);
  // QUEUED and RUNNING jobs in sequence order (recovery after a restart).
  absl::StatusOr<std::vector<StoredJob>> LoadUnfinished();
  // Newest first.
  absl::StatusOr<std::vector<StoredJob>> List(const JobListQuery& query);
  // SUCCEEDED jobs whose result is still stored and that ended before the given time (retention).
  absl::StatusOr<std::vector<StoredJob>> ResultsEndedBefore(int64_t end_time_unix_nanos, int limit);
  absl::StatusOr<int64_t> CountJobs();

 private:
  JobStore(std::string path, sqlite3* database) : path_(std::move(path)), database_(database) {}
  absl::Status Execute(const char* sql);
  absl::StatusOr<sqlite3_stmt*> Prepare(const char* sql);
  absl::Status Error(const char* operation) const;
  absl::StatusOr<std::vector<StoredJob>> ReadRows(sqlite3_stmt* statement);

  std::string path_;
  sqlite3* database_ = nullptr;
  std::vector<std::pair<const char*, sqlite3_stmt*>> statements_;
};

}  // namespace zoetrope::server
