#include "server/job_store.h"

#include <sqlite3.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace zoetrope::server {
namespace {

namespace v1 = zoetrope::v1;

constexpr int kSchemaVersion = 1;

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS jobs (
  sequence INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  state INTEGER NOT NULL,
  model TEXT NOT NULL,
  priority INTEGER NOT NULL,
  create_time_ns INTEGER NOT NULL,
  end_time_ns INTEGER,
  client_request_id TEXT,
  request_fingerprint BLOB,
  worker_losses INTEGER NOT NULL DEFAULT 0,
  result_available INTEGER NOT NULL DEFAULT 0,
  job BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_client_request_id ON jobs(client_request_id)
  WHERE client_request_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, sequence);
CREATE INDEX IF NOT EXISTS jobs_by_result ON jobs(result_available, end_time_ns);
)sql";

constexpr const char* kColumns = "sequence, job, worker_losses, request_fingerprint";

int64_t UnixNanos(const google::protobuf::Timestamp& time) {
  return time.seconds() * 1'000'000'000 + time.nanos();
}

bool IsTerminal(v1::JobState state) {
  return state != v1::JOB_STATE_QUEUED && state != v1::JOB_STATE_RUNNING && state != v1::JOB_STATE_UNSPECIFIED;
}

}  // namespace

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(const std::string& path, Sync sync) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) {
    std::error_code error;
    std::filesystem::create_directories(parent, error);
    if (error) {
      return absl::UnavailableError(absl::StrCat("job store ", path, ": cannot create folder ", parent.string(), ": ",
                                                 error.message()));
    }
  }
  sqlite3* database = nullptr;
  const int opened = sqlite3_open_v2(path.c_str(), &database,
                                     SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (opened != SQLITE_OK) {
    std::string message = database != nullptr ? sqlite3_errmsg(database) : sqlite3_errstr(opened);
    sqlite3_close(database);
    return absl::UnavailableError(absl::StrCat("job store ", path, ": cannot open: ", message));
  }
  std::unique_ptr<JobStore> store(new JobStore(path, database));
  sqlite3_busy_timeout(database, 5000);
  // WAL: readers never block the writer and a commit is one sequential append (plus fsync when FULL).
  if (absl::Status status = store->Execute("PRAGMA journal_mode=WAL"); !status.ok()) return status;
  if (absl::Status status = store->Execute(sync == Sync::kFull ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL");
      !status.ok()) {
    return status;
  }
  absl::StatusOr<sqlite3_stmt*> version_query = store->Prepare("PRAGMA user_version");
  if (!version_query.ok()) return version_query.status();
  int version = 0;
  if (sqlite3_step(*version_query) == SQLITE_ROW) version = sqlite3_column_int(*version_query, 0);
  sqlite3_reset(*version_query);
  if (version > kSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat("job store ", path, ": schema version ", version,
                                                      " is newer than this scheduler's (", kSchemaVersion, ")"));
  }
  if (absl::Status status = store->Execute(kSchema); !status.ok()) return status;
  if (absl::Status status = store->Execute(absl::StrCat("PRAGMA user_version=", kSchemaVersion).c_str());
      !status.ok()) {
    return status;
  }
  return store;
}

JobStore::~JobStore() {
  for (auto& [sql, statement] : statements_) sqlite3_finalize(statement);
  if (database_ != nullptr) sqlite3_close(database_);
}

absl::Status JobStore::Error(const char* operation) const {
  return absl::UnavailableError(absl::StrCat("job store ", path_, ": ", operation, ": ", sqlite3_errmsg(database_)));
}

absl::Status JobStore::Execute(const char* sql) {
  char* message = nullptr;
  if (sqlite3_exec(database_, sql, nullptr, nullptr, &message) != SQLITE_OK) {
    std::string text = message != nullptr ? message : "unknown error";
    sqlite3_free(message);
    return absl::UnavailableError(absl::StrCat("job store ", path_, ": ", text, " (in: ", sql, ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<sqlite3_stmt*> JobStore::Prepare(const char* sql) {
  for (auto& [cached_sql, statement] : statements_) {
    if (cached_sql == sql) {
      sqlite3_reset(statement);
      sqlite3_clear_bindings(statement);
      return statement;
    }
  }
  sqlite3_stmt* statement = nullptr;
  if (sqlite3_prepare_v2(database_, sql, -1, &statement, nullptr) != SQLITE_OK) return Error("prepare");
  statements_.emplace_back(sql, statement);
  return statement;
}

absl::StatusOr<int64_t> JobStore::Insert(const v1::Job& job, const std::string& request_fingerprint) {
  static constexpr const char* kSql =
      "INSERT INTO jobs (id, state, model, priority, create_time_ns, end_time_ns, client_request_id, "
      "request_fingerprint, worker_losses, result_available, job) VALUES (?, ?, ?, ?, ?, NULL, ?, ?, 0, 0, ?)";
  absl::StatusOr<sqlite3_stmt*> statement = Prepare(kSql);
  if (!statement.ok()) return statement.status();
  const std::string blob = job.SerializeAsString();
  sqlite3_bind_text(*statement, 1, job.id().data(), static_cast<int>(job.id().size()), SQLITE_TRANSIENT);
  sqlite3_bind_int(*statement, 2, job.state());
  sqlite3_bind_text(*statement, 3, job.request().model().data(), static_cast<int>(job.request().model().size()),
                    SQLITE_TRANSIENT);
  sqlite3_bind_int(*statement, 4, job.request().priority());
  sqlite3_bind_int64(*statement, 5, UnixNanos(job.create_time()));
  if (job.request().client_request_id().empty()) {
    sqlite3_bind_null(*statement, 6);
  } else {
    sqlite3_bind_text(*statement, 6, job.request().client_request_id().data(),
                      static_cast<int>(job.request().client_request_id().size()), SQLITE_TRANSIENT);
  }
  sqlite3_bind_blob(*statement, 7, request_fingerprint.data(), static_cast<int>(request_fingerprint.size()),
                    SQLITE_TRANSIENT);
  sqlite3_bind_blob(*statement, 8, blob.data(), static_cast<int>(blob.size()), SQLITE_TRANSIENT);
  const int result = sqlite3_step(*statement);
  sqlite3_reset(*statement);
  if (result == SQLITE_CONSTRAINT) {
    return absl::AlreadyExistsError(absl::StrCat("job store ", path_, ": job ", job.id(), " or client request id \"",
                                                 job.request().client_request_id(), "\" exists"));
  }
  if (result != SQLITE_DONE) return Error("insert");
  return static_cast<int64_t>(sqlite3_last_insert_rowid(database_));
}

absl::Status JobStore::Update(const v1::Job& job, int worker_losses) {
  static constexpr const char* kSql =
      "UPDATE jobs SET state = ?, end_time_ns = ?, worker_losses = ?, result_available = ?, job = ? WHERE id = ?";
  absl::StatusOr<sqlite3_stmt*> statement = Prepare(kSql);
  if (!statement.ok()) return statement.status();
  const std::string blob = job.SerializeAsString();
  sqlite3_bind_int(*statement, 1, job.state());
  if (IsTerminal(job.state()) && job.has_end_time()) {
    sqlite3_bind_int64(*statement, 2, UnixNanos(job.end_time()));
  } else {
    sqlite3_bind_null(*statement, 2);
  }
  sqlite3_bind_int(*statement, 3, worker_losses);
  sqlite3_bind_int(*statement, 4, job.result_available() ? 1 : 0);
  sqlite3_bind_blob(*statement, 5, blob.data(), static_cast<int>(blob.size()), SQLITE_TRANSIENT);
  sqlite3_bind_text(*statement, 6, job.id().data(), static_cast<int>(job.id().size()), SQLITE_TRANSIENT);
  const int result = sqlite3_step(*statement);
  sqlite3_reset(*statement);
  if (result != SQLITE_DONE) return Error("update");
  if (sqlite3_changes(database_) == 0) {
    return absl::NotFoundError(absl::StrCat("job store ", path_, ": no job ", job.id()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<StoredJob>> JobStore::ReadRows(sqlite3_stmt* statement) {
  std::vector<StoredJob> rows;
  while (true) {
    const int result = sqlite3_step(statement);
    if (result == SQLITE_DONE) break;
    if (result != SQLITE_ROW) {
      sqlite3_reset(statement);
      return Error("query");
    }
    StoredJob row;
    row.sequence = sqlite3_column_int64(statement, 0);
    const void* blob = sqlite3_column_blob(statement, 1);
    const int blob_size = sqlite3_column_bytes(statement, 1);
    if (!row.job.ParseFromArray(blob, blob_size)) {
      sqlite3_reset(statement);
      return absl::DataLossError(absl::StrCat("job store ", path_, ": row ", row.sequence, " holds a corrupt job"));
    }
    row.worker_losses = sqlite3_column_int(statement, 2);
    const void* fingerprint = sqlite3_column_blob(statement, 3);
    row.request_fingerprint.assign(static_cast<const char*>(fingerprint),
                                   fingerprint != nullptr ? sqlite3_column_bytes(statement, 3) : 0);
    rows.push_back(std::move(row));
  }
  sqlite3_reset(statement);
  return rows;
}

absl::StatusOr<std::optional<StoredJob>> JobStore::Get(const std::string& id) {
  static const std::string kSql = absl::StrCat("SELECT ", kColumns, " FROM jobs WHERE id = ?");
  absl::StatusOr<sqlite3_stmt*> statement = Prepare(kSql.c_str());
  if (!statement.ok()) return statement.status();
  sqlite3_bind_text(*statement, 1, id.data(), static_cast<int>(id.size()), SQLITE_TRANSIENT);
  absl::StatusOr<std::vector<StoredJob>> rows = ReadRows(*statement);
  if (!rows.ok()) return rows.status();
  if (rows->empty()) return std::optional<StoredJob>();
  return std::optional<StoredJob>(std::move(rows->front()));
}

absl::StatusOr<std::optional<StoredJob>> JobStore::GetByClientRequestId(const std::string& client_request_id) {
  static const std::string kSql = absl::StrCat("SELECT ", kColumns, " FROM jobs WHERE client_request_id = ?");
  absl::StatusOr<sqlite3_stmt*> statement = Prepare(kSql.c_str());
  if (!statement.ok()) return statement.status();
  sqlite3_bind_text(*statement, 1, client_request_id.data(), static_cast<int>(client_request_id.size()),
                    SQLITE_TRANSIENT);
  absl::StatusOr<std::vector<StoredJob>> rows = ReadRows(*statement);
  if (!rows.ok()) return rows.status();
  if (rows->empty()) return std::optional<StoredJob>();
  return std::optional<StoredJob>(std::move(rows->front()));
}

absl::StatusOr<std::vector<StoredJob>> JobStore::LoadUnfinished() {
  static const std::string kSql =
      absl::StrCat("SELECT ", kColumns, " FROM jobs WHERE state IN (", static_cast<int>(v1::JOB_STATE_QUEUED), ", ",
                   static_cast<int>(v1::JOB_STATE_RUNNING), ") ORDER BY sequence");
  absl::StatusOr<sqlite3_stmt*> statement = Prepare(kSql.c_str());
  if (!statement.ok()) return statement.status();
  return ReadRows(*statement);
}

absl::StatusOr<std::vector<StoredJob>> JobStore::List(const JobListQuery& query) {
  // Built per call (the filter set varies); every value is bound, never spliced.
  std::string sql = absl::StrCat("SELECT ", kColumns, " FROM jobs WHERE 1");
  if (!query.states.empty()) {
    sql += absl::StrCat(" AND state IN (", absl::StrJoin(std::vector<std::string>(query.states.size(), "?"), ", "), ")");
  }
  if (!query.model.empty()) sql += " AND model = ?";
  if (query.created_after_unix_nanos != 0) sql += " AND create_time_ns >= ?";
  if (query.created_before_unix_nanos != 0) sql += " AND create_time_ns < ?";
  if (query.before_sequence != 0) sql += " AND sequence < ?";
  sql += " ORDER BY sequence DESC LIMIT ?";
  sqlite3_stmt* statement = nullptr;
  if (sqlite3_prepare_v2(database_, sql.c_str(), -1, &statement, nullptr) != SQLITE_OK) return Error("prepare list");
  int index = 1;
  for (int state : query.states) sqlite3_bind_int(statement, index++, state);
  if (!query.model.empty()) {
    sqlite3_bind_text(statement, index++, query.model.data(), static_cast<int>(query.model.size()), SQLITE_TRANSIENT);
  }
  if (query.created_after_unix_nanos != 0) sqlite3_bind_int64(statement, index++, query.created_after_unix_nanos);
  if (query.created_before_unix_nanos != 0) sqlite3_bind_int64(statement, index++, query.created_before_unix_nanos);
  if (query.before_sequence != 0) sqlite3_bind_int64(statement, index++, query.before_sequence);
  sqlite3_bind_int(statement, index++, query.limit);
  absl::StatusOr<std::vector<StoredJob>> rows = ReadRows(statement);
  sqlite3_finalize(statement);
  return rows;
}

absl::StatusOr<std::vector<StoredJob>> JobStore::ResultsEndedBefore(int64_t end_time_unix_nanos, int limit) {
  static const std::string kSql = absl::StrCat(
      "SELECT ", kColumns, " FROM jobs WHERE result_available = 1 AND end_time_ns < ? ORDER BY end_time_ns LIMIT ?");
  absl::StatusOr<sqlite3_stmt*> statement = Prepare(kSql.c_str());
  if (!statement.ok()) return statement.status();
  sqlite3_bind_int64(*statement, 1, end_time_unix_nanos);
  sqlite3_bind_int(*statement, 2, limit);
  return ReadRows(*statement);
}

absl::StatusOr<int64_t> JobStore::CountJobs() {
  absl::StatusOr<sqlite3_stmt*> statement = Prepare("SELECT COUNT(*) FROM jobs");
  if (!statement.ok()) return statement.status();
  int64_t count = 0;
  if (sqlite3_step(*statement) == SQLITE_ROW) count = sqlite3_column_int64(*statement, 0);
  sqlite3_reset(*statement);
  return count;
}

}  // namespace zoetrope::server
