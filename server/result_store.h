// The result store: result files of finished jobs on local disk, one file per job, written from the
// chunks a worker uploads and deleted after a retention time.
//
// An upload belongs to one (job, attempt): it starts at offset 0 (which discards an earlier partial
// upload of the same job, e.g. after the worker reconnected), continues strictly in order, and is
// committed only when its size and SHA-256 match what the worker announced; then the file is renamed
// to its final name, so a reader never sees a partial result.
//
// Thread-safe (one mutex of its own): the scheduler writes uploaded chunks and commits results outside its
// global lock, so that a slow disk stalls only the worker that uploads, not every API call.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "common/sha256.h"

namespace zoetrope::server {

struct StoredResult {
  std::string path;
  int64_t size_bytes = 0;
  std::string sha256;
};

class ResultStore {
 public:
  // Creates the folder when missing and deletes partial uploads a previous process left behind.
  static absl::StatusOr<std::unique_ptr<ResultStore>> Open(const std::string& directory);
  ~ResultStore();

  const std::string& directory() const { return directory_; }
  // Final path of a job's result (it exists only after Commit).
  std::string PathOf(const std::string& job_id) const;

  // Appends a chunk of (job, attempt). Offset 0 starts the upload afresh; any other offset must equal the
  // bytes received so far (FAILED_PRECONDITION otherwise).
  absl::Status Append(const std::string& job_id, int attempt, int64_t offset, absl::string_view data);
  // Checks size and SHA-256 (hex) and publishes the file under PathOf(job_id).
  absl::StatusOr<StoredResult> Commit(const std::string& job_id, int attempt, int64_t expected_size,
                                      const std::string& expected_sha256);
  // Drops a partial upload of the job (any attempt).
  void Abort(const std::string& job_id);
  // Drops a partial upload of the job only if it belongs to `attempt` (a later attempt's stays).
  void Abort(const std::string& job_id, int attempt);
  // Deletes a published result; OK when it is already gone.
  absl::Status Delete(const std::string& job_id);
  // Bytes of published results currently on disk (tracked, not scanned).
  int64_t stored_bytes() const {
    absl::MutexLock lock(&mutex_);
    return stored_bytes_;
  }

 private:
  struct Upload {
    int attempt = 0;
    int fd = -1;
    int64_t received = 0;
    std::unique_ptr<Sha256> hash;
  };
  explicit ResultStore(std::string directory) : directory_(std::move(directory)) {}
  std::string PartialPathOf(const std::string& job_id) const;
  void Close(Upload& upload);
  absl::Status AppendLocked(const std::string& job_id, int attempt, int64_t offset, absl::string_view data)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);
  void AbortLocked(const std::string& job_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mutex_);

  const std::string directory_;
  mutable absl::Mutex mutex_;
  std::map<std::string, Upload> uploads_ ABSL_GUARDED_BY(mutex_);
  int64_t stored_bytes_ ABSL_GUARDED_BY(mutex_) = 0;
};

}  // namespace zoetrope::server
