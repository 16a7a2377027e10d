// The channel of the `zoetrope` client commands: TLS when a CA is given, and the bearer token on
// every call (docs/security.md).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/channel.h"

namespace zoetrope {

struct ClientSecurity {
  std::string token;        // sent as `authorization: Bearer <token>`; empty: none
  std::string tls_ca_file;  // PEM CA of the server's certificate; empty: plaintext
};

// NOT_FOUND naming the file when the CA cannot be read.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeClientChannel(const std::string& address,
                                                                 const ClientSecurity& security);

}  // namespace zoetrope
