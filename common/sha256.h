// Incremental SHA-256 (OpenSSL's EVP), for result files: the worker hashes what it uploads, the
// scheduler hashes what it receives, and clients can check what they fetched.
#pragma once

#include <memory>
#include <string>

#include "absl/strings/string_view.h"

namespace zoetrope {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(absl::string_view data);
  // Lowercase hex of the digest; the object cannot be updated afterwards.
  std::string FinishHex();

 private:
  struct Context;
  std::unique_ptr<Context> context_;
};

// SHA-256 of a whole file in lowercase hex; empty when the file cannot be read.
std::string Sha256OfFile(const std::string& path);

}  // namespace zoetrope
