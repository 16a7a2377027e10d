// Bearer-token authentication of the scheduler's two APIs (docs/security.md).
//
// A tokens file names the tenants, their quotas and their tokens, and the worker tokens:
//
//   # comment
//   tenant acme max_queued=20 max_running=2 submits_per_minute=30
//   token  acme  <client token>
//   worker       <worker token>
//
// Tokens are at least 16 printable ASCII characters without spaces. Calls carry
// `authorization: Bearer <token>` metadata. Only SHA-256 digests of the tokens are kept in memory,
// and a presented token is compared with every digest without stopping at the first match, so the
// time taken says nothing about which token (or how much of one) matched. Tokens are never logged.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/support/string_ref.h"

namespace zoetrope::server {

// Per-tenant limits; 0 means no limit.
struct TenantQuota {
  int32_t max_queued = 0;          // jobs of the tenant waiting in the queue
  int32_t max_running = 0;         // jobs of the tenant running on workers
  int32_t submits_per_minute = 0;  // accepted submissions in any 60 s window
};

struct Tenant {
  std::string name;
  TenantQuota quota;
};

using CallMetadata = std::multimap<grpc::string_ref, grpc::string_ref>;

// The token of an `authorization: Bearer <token>` entry; UNAUTHENTICATED when there is none or it is
// malformed.
absl::StatusOr<std::string> BearerToken(const CallMetadata& metadata);

class TokenRegistry {
 public:
  // `source` names the text in error messages (the file's path).
  static absl::StatusOr<TokenRegistry> Parse(absl::string_view text, absl::string_view source);
  static absl::StatusOr<TokenRegistry> LoadFile(const std::string& path);

  // The tenant whose token the call carries; UNAUTHENTICATED otherwise (worker tokens included).
  absl::StatusOr<Tenant> AuthenticateClient(const CallMetadata& metadata) const;
  // OK when the call carries a worker token; UNAUTHENTICATED otherwise (client tokens included).
  absl::Status AuthenticateWorker(const CallMetadata& metadata) const;

  bool has_client_tokens() const { return !clients_.empty(); }
  bool has_worker_tokens() const { return !workers_.empty(); }
  const std::vector<Tenant>& tenants() const { return tenants_; }

 private:
  struct Entry {
    std::string digest;  // SHA-256 of the token, hex
    int tenant = -1;     // index into tenants_; -1 for worker tokens
  };
  // Index of the entry whose digest equals the token's, or -1; looks at every entry.
  static int Match(const std::vector<Entry>& entries, absl::string_view token);

  std::vector<Tenant> tenants_;
  std::vector<Entry> clients_;
  std::vector<Entry> workers_;
};

}  // namespace zoetrope::server
