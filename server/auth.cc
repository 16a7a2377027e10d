#include "server/auth.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/sha256.h"

namespace zoetrope::server {
namespace {

constexpr size_t kMinTokenLength = 16;

std::string Digest(absl::string_view token) {
  Sha256 hash;
  hash.Update(token);
  return hash.FinishHex();
}

// Equal-length strings compared without data-dependent branches.
bool ConstantTimeEqual(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;  // digests: always the same length
  unsigned char difference = 0;
  for (size_t i = 0; i < a.size(); ++i) difference |= static_cast<unsigned char>(a[i] ^ b[i]);
  return difference == 0;
}

absl::Status CheckToken(absl::string_view token, absl::string_view where) {
  if (token.size() < kMinTokenLength) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": a token must be at least ", kMinTokenLength, " characters long"));
  }
  for (char c : token) {
    if (c <= ' ' || c > '~') {
      return absl::InvalidArgumentError(absl::StrCat(where, ": a token must be printable ASCII without spaces"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> BearerToken(const CallMetadata& metadata) {
  auto found = metadata.find("authorization");
  if (found == metadata.end()) {
    return absl::UnauthenticatedError("missing `authorization: Bearer <token>` metadata");
  }
  const absl::string_view value(found->second.data(), found->second.size());
  constexpr absl::string_view kScheme = "bearer ";
  if (value.size() <= kScheme.size() || !absl::EqualsIgnoreCase(value.substr(0, kScheme.size()), kScheme)) {
    return absl::UnauthenticatedError("the authorization metadata must be `Bearer <token>`");
  }
  return std::string(absl::StripAsciiWhitespace(value.substr(kScheme.size())));
}

absl::StatusOr<TokenRegistry> TokenRegistry::Parse(absl::string_view text, absl::string_view source) {
  TokenRegistry registry;
  std::map<std::string, int> tenant_index;
  struct PendingToken {
    std::string tenant, token, where;
  };
  std::vector<PendingToken> pending;
  std::vector<std::string> seen_digests;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    // Never quote a token line in an error: only its number.
    const std::string where = absl::StrCat(source, ":", line_number);
    if (const size_t hash = line.find('#'); hash != absl::string_view::npos) line = line.substr(0, hash);
    std::vector<absl::string_view> words = absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (words.empty()) continue;
    if (words[0] == "tenant") {
      if (words.size() < 2) return absl::InvalidArgumentError(absl::StrCat(where, ": `tenant <name> [key=N ...]`"));
      Tenant tenant;
      tenant.name = std::string(words[1]);
      if (tenant_index.count(tenant.name) != 0) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": tenant \"", tenant.name, "\" is defined twice"));
      }
      for (size_t i = 2; i < words.size(); ++i) {
        std::pair<std::string, std::string> key_value = absl::StrSplit(words[i], absl::MaxSplits('=', 1));
        int32_t value = 0;
        if (!absl::SimpleAtoi(key_value.second, &value) || value < 0) {
          return absl::InvalidArgumentError(
              absl::StrCat(where, ": \"", words[i], "\": a quota is key=N with N ≥ 0 (0: no limit)"));
        }
        if (key_value.first == "max_queued") {
          tenant.quota.max_queued = value;
        } else if (key_value.first == "max_running") {
          tenant.quota.max_running = value;
        } else if (key_value.first == "submits_per_minute") {
          tenant.quota.submits_per_minute = value;
        } else {
          return absl::InvalidArgumentError(absl::StrCat(where, ": unknown quota \"", key_value.first,
                                                         "\" (max_queued, max_running, submits_per_minute)"));
        }
      }
      tenant_index[tenant.name] = static_cast<int>(registry.tenants_.size());
      registry.tenants_.push_back(std::move(tenant));
    } else if (words[0] == "token") {
      if (words.size() != 3) return absl::InvalidArgumentError(absl::StrCat(where, ": `token <tenant> <token>`"));
      if (absl::Status valid = CheckToken(words[2], where); !valid.ok()) return valid;
      pending.push_back({std::string(words[1]), std::string(words[2]), where});
    } else if (words[0] == "worker") {
      if (words.size() != 2) return absl::InvalidArgumentError(absl::StrCat(where, ": `worker <token>`"));
      if (absl::Status valid = CheckToken(words[1], where); !valid.ok()) return valid;
      registry.workers_.push_back({Digest(words[1]), -1});
      seen_digests.push_back(registry.workers_.back().digest);
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": unknown entry \"", words[0], "\" (tenant, token or worker)"));
    }
  }
  // Tokens may name a tenant defined further down.
  for (PendingToken& entry : pending) {
    auto tenant = tenant_index.find(entry.tenant);
    if (tenant == tenant_index.end()) {
      return absl::InvalidArgumentError(absl::StrCat(entry.where, ": no `tenant ", entry.tenant, "` line"));
    }
    registry.clients_.push_back({Digest(entry.token), tenant->second});
    seen_digests.push_back(registry.clients_.back().digest);
  }
  std::sort(seen_digests.begin(), seen_digests.end());
  if (std::adjacent_find(seen_digests.begin(), seen_digests.end()) != seen_digests.end()) {
    // A token shared by two roles or tenants would make the caller's identity ambiguous.
    return absl::InvalidArgumentError(absl::StrCat(source, ": the same token appears twice"));
  }
  return registry;
}

absl::StatusOr<TokenRegistry> TokenRegistry::LoadFile(const std::string& path) {
  std::ifstream file(path);
  if (!file) return absl::NotFoundError(absl::StrCat("cannot read the tokens file ", path));
  std::stringstream text;
  text << file.rdbuf();
  return Parse(text.str(), path);
}

int TokenRegistry::Match(const std::vector<Entry>& entries, absl::string_view token) {
  const std::string digest = Digest(token);
  int match = -1;
  for (size_t i = 0; i < entries.size(); ++i) {
    const bool equal = ConstantTimeEqual(entries[i].digest, digest);
    match = equal ? static_cast<int>(i) : match;
  }
  return match;
}

absl::StatusOr<Tenant> TokenRegistry::AuthenticateClient(const CallMetadata& metadata) const {
  absl::StatusOr<std::string> token = BearerToken(metadata);
  if (!token.ok()) return token.status();
  const int match = Match(clients_, *token);
  if (match < 0) return absl::UnauthenticatedError("the bearer token is not a valid client token");
  return tenants_[clients_[match].tenant];
}

absl::Status TokenRegistry::AuthenticateWorker(const CallMetadata& metadata) const {
  absl::StatusOr<std::string> token = BearerToken(metadata);
  if (!token.ok()) return token.status();
  if (Match(workers_, *token) < 0) return absl::UnauthenticatedError("the bearer token is not a valid worker token");
  return absl::OkStatus();
}

}  // namespace zoetrope::server
