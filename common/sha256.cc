#include "common/sha256.h"

#include <openssl/evp.h>

#include <cstdio>
#include <cstdlib>
#include <vector>


namespace zoetrope {

namespace {

// OpenSSL's digest calls fail only when it cannot allocate: there is nothing to recover, and a hash that
// silently skipped data would corrupt the integrity checks that rely on it.
void RequireOpenSsl(bool succeeded, const char* call) {
  if (succeeded) return;
  std::fprintf(stderr, "zoetrope: OpenSSL %s failed (out of memory?)\n", call);
  std::abort();
}

}  // namespace

struct Sha256::Context {
  EVP_MD_CTX* digest = nullptr;
};

Sha256::Sha256() : context_(std::make_unique<Context>()) {
  context_->digest = EVP_MD_CTX_new();
  RequireOpenSsl(context_->digest != nullptr, "EVP_MD_CTX_new");
  RequireOpenSsl(EVP_DigestInit_ex(context_->digest, EVP_sha256(), nullptr) == 1, "EVP_DigestInit_ex");
}

Sha256::~Sha256() { EVP_MD_CTX_free(context_->digest); }

void Sha256::Update(absl::string_view data) {
  RequireOpenSsl(EVP_DigestUpdate(context_->digest, data.data(), data.size()) == 1, "EVP_DigestUpdate");
}

std::string Sha256::FinishHex() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  RequireOpenSsl(EVP_DigestFinal_ex(context_->digest, digest, &length) == 1, "EVP_DigestFinal_ex");
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(2 * length);
  for (unsigned int i = 0; i < length; ++i) {
    hex.push_back(kHex[digest[i] >> 4]);
    hex.push_back(kHex[digest[i] & 15]);
  }
  return hex;
}

std::string Sha256OfFile(const std::string& path) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) return "";
  Sha256 hash;
  std::vector<char> buffer(1 << 16);
  size_t read = 0;
  while ((read = std::fread(buffer.data(), 1, buffer.size(), file)) > 0) hash.Update(absl::string_view(buffer.data(), read));
  const bool failed = std::ferror(file) != 0;
  std::fclose(file);
  return failed ? "" : hash.FinishHex();
}

}  // namespace zoetrope
