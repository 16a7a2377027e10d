// Transport security of the scheduler's ports from certificate files (docs/security.md).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/security/server_credentials.h"

namespace zoetrope::server {

// The whole file; NOT_FOUND naming `what` and the path when it cannot be read.
absl::StatusOr<std::string> ReadPemFile(const std::string& path, absl::string_view what);

// Insecure credentials when `cert_file` and `key_file` are both empty; TLS with that certificate
// otherwise. A non-empty `client_ca_file` also requires every client to present a certificate signed
// by that CA (mTLS).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const std::string& cert_file,
                                                                               const std::string& key_file,
                                                                               const std::string& client_ca_file);

// Whether a listen address ("host:port", "[v6]:port") binds only the loopback interface.
bool IsLoopbackListenAddress(absl::string_view address);

}  // namespace zoetrope::server
