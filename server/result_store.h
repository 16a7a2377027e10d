// The result store: result files of finished jobs on local disk, one file per job, written from the
// chunks a worker uploads and deleted after a retention time.
//
// An upload belongs to one (job, attempt): it starts at offset 0 (which discards an earlier partial
// upload of the same job, e.g. after the worker reconnected), continues strictly in order, and is
// committed only when its size and SHA-256 match what the worker announced; then the file is renamed
// to its final name, so a reader never sees a partial result.
//
// Not thread-safe: the scheduler serializes calls.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
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
  // Deletes a published result; OK when it is already gone.
  absl::Status Delete(const std::string& job_id);
  // Bytes of published results currently on disk (tracked, not scanned).
  int64_t stored_bytes() const { return stored_bytes_; }

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

  std::string directory_;
  std::map<std::string, Upload> uploads_;
  int64_t stored_bytes_ = 0;
};

}  // namespace zoetrope::server
