#include "server/result_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace zoetrope::server {
namespace {

constexpr const char* kResultSuffix = ".result";
constexpr const char* kPartialSuffix = ".partial";

std::string ErrnoText() { return std::strerror(errno); }

}  // namespace

absl::StatusOr<std::unique_ptr<ResultStore>> ResultStore::Open(const std::string& directory) {
  std::error_code error;
  std::filesystem::create_directories(directory, error);
  if (error) {
    return absl::UnavailableError(absl::StrCat("result store ", directory, ": cannot create: ", error.message()));
  }
  std::unique_ptr<ResultStore> store(new ResultStore(directory));
  int64_t stored_bytes = 0;
  for (const auto& entry : std::filesystem::directory_iterator(directory, error)) {
    const std::string name = entry.path().filename().string();
    if (absl::EndsWith(name, kPartialSuffix)) {
      std::filesystem::remove(entry.path(), error);
    } else if (absl::EndsWith(name, kResultSuffix) && entry.is_regular_file(error)) {
      stored_bytes += static_cast<int64_t>(entry.file_size(error));
    }
  }
  {
    absl::MutexLock lock(&store->mutex_);
    store->stored_bytes_ = stored_bytes;
  }
  if (error) return absl::UnavailableError(absl::StrCat("result store ", directory, ": ", error.message()));
  return store;
}

ResultStore::~ResultStore() {
  absl::MutexLock lock(&mutex_);
  for (auto& [job_id, upload] : uploads_) {
    Close(upload);
    std::error_code error;
    std::filesystem::remove(PartialPathOf(job_id), error);
  }
}

std::string ResultStore::PathOf(const std::string& job_id) const {
  return (std::filesystem::path(directory_) / absl::StrCat(job_id, kResultSuffix)).string();
}

std::string ResultStore::PartialPathOf(const std::string& job_id) const {
  return (std::filesystem::path(directory_) / absl::StrCat(job_id, kPartialSuffix)).string();
}

void ResultStore::Close(Upload& upload) {
  if (upload.fd >= 0) ::close(upload.fd);
  upload.fd = -1;
}

absl::Status ResultStore::Append(const std::string& job_id, int attempt, int64_t offset, absl::string_view data) {
  absl::MutexLock lock(&mutex_);
  return AppendLocked(job_id, attempt, offset, data);
}

absl::Status ResultStore::AppendLocked(const std::string& job_id, int attempt, int64_t offset, absl::string_view data) {
  auto found = uploads_.find(job_id);
  if (offset == 0) {
    if (found != uploads_.end()) {
      Close(found->second);
      uploads_.erase(found);
    }
    Upload upload;
    upload.attempt = attempt;
    upload.fd = ::open(PartialPathOf(job_id).c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (upload.fd < 0) {
      return absl::UnavailableError(absl::StrCat("result store: cannot create ", PartialPathOf(job_id), ": ", ErrnoText()));
    }
    upload.hash = std::make_unique<Sha256>();
    found = uploads_.emplace(job_id, std::move(upload)).first;
  }
  if (found == uploads_.end() || found->second.attempt != attempt) {
    return absl::FailedPreconditionError(
        absl::StrCat("result upload of job ", job_id, " attempt ", attempt, ": chunk at offset ", offset,
                     " without an upload started at offset 0"));
  }
  Upload& upload = found->second;
  if (offset != upload.received) {
    return absl::FailedPreconditionError(absl::StrCat("result upload of job ", job_id, ": chunk at offset ", offset,
                                                      ", expected offset ", upload.received));
  }
  size_t written = 0;
  while (written < data.size()) {
    const ssize_t count = ::write(upload.fd, data.data() + written, data.size() - written);
    if (count < 0) {
      if (errno == EINTR) continue;
      return absl::UnavailableError(absl::StrCat("result store: writing ", PartialPathOf(job_id), ": ", ErrnoText()));
    }
    written += static_cast<size_t>(count);
  }
  upload.hash->Update(data);
  upload.received += static_cast<int64_t>(data.size());
  return absl::OkStatus();
}

absl::StatusOr<StoredResult> ResultStore::Commit(const std::string& job_id, int attempt, int64_t expected_size,
                                                 const std::string& expected_sha256) {
  absl::MutexLock lock(&mutex_);
  auto found = uploads_.find(job_id);
  if (found == uploads_.end() || found->second.attempt != attempt) {
    if (expected_size == 0) {
      // An empty result sends no chunk.
      if (absl::Status started = AppendLocked(job_id, attempt, 0, ""); !started.ok()) return started;
      found = uploads_.find(job_id);
    } else {
      return absl::FailedPreconditionError(
          absl::StrCat("result of job ", job_id, " attempt ", attempt, ": completion without an upload"));
    }
  }
  Upload upload = std::move(found->second);
  uploads_.erase(found);
  const std::string partial = PartialPathOf(job_id);
  if (upload.received != expected_size) {
    Close(upload);
    std::error_code error;
    std::filesystem::remove(partial, error);
    return absl::DataLossError(absl::StrCat("result of job ", job_id, ": received ", upload.received,
                                            " bytes, the worker announced ", expected_size));
  }
  const std::string sha256 = upload.hash->FinishHex();
  if (!expected_sha256.empty() && sha256 != expected_sha256) {
    Close(upload);
    std::error_code error;
    std::filesystem::remove(partial, error);
    return absl::DataLossError(absl::StrCat("result of job ", job_id, ": SHA-256 ", sha256,
                                            " differs from the worker's ", expected_sha256));
  }
  // The result must be on disk before the job is recorded as SUCCEEDED.
  if (::fsync(upload.fd) != 0) {
    const std::string error_text = ErrnoText();
    Close(upload);
    return absl::UnavailableError(absl::StrCat("result store: fsync ", partial, ": ", error_text));
  }
  Close(upload);
  const std::string final_path = PathOf(job_id);
  if (::rename(partial.c_str(), final_path.c_str()) != 0) {
    return absl::UnavailableError(absl::StrCat("result store: rename ", partial, " to ", final_path, ": ", ErrnoText()));
  }
  // The rename is durable only once the directory entry is: without this a power loss after the job is
  // recorded SUCCEEDED could leave the result under its .partial name, or gone.
  const int directory_fd = ::open(directory_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (directory_fd < 0) {
    return absl::UnavailableError(absl::StrCat("result store: open ", directory_, ": ", ErrnoText()));
  }
  const bool synced = ::fsync(directory_fd) == 0;
  const std::string sync_error = synced ? "" : ErrnoText();
  ::close(directory_fd);
  if (!synced) return absl::UnavailableError(absl::StrCat("result store: fsync ", directory_, ": ", sync_error));
  stored_bytes_ += expected_size;
  return StoredResult{final_path, expected_size, sha256};
}

void ResultStore::Abort(const std::string& job_id) {
  absl::MutexLock lock(&mutex_);
  AbortLocked(job_id);
}

void ResultStore::Abort(const std::string& job_id, int attempt) {
  absl::MutexLock lock(&mutex_);
  auto found = uploads_.find(job_id);
  if (found != uploads_.end() && found->second.attempt == attempt) AbortLocked(job_id);
}

void ResultStore::AbortLocked(const std::string& job_id) {
  auto found = uploads_.find(job_id);
  if (found == uploads_.end()) return;
  Close(found->second);
  uploads_.erase(found);
  std::error_code error;
  std::filesystem::remove(PartialPathOf(job_id), error);
}

absl::Status ResultStore::Delete(const std::string& job_id) {
  absl::MutexLock lock(&mutex_);
  const std::string path = PathOf(job_id);
  std::error_code error;
  const auto size = std::filesystem::file_size(path, error);
  if (error) return absl::OkStatus();  // already gone
  if (!std::filesystem::remove(path, error) || error) {
    return absl::UnavailableError(absl::StrCat("result store: cannot delete ", path, ": ", error.message()));
  }
  stored_bytes_ -= static_cast<int64_t>(size);
  return absl::OkStatus();
}

}  // namespace zoetrope::server
