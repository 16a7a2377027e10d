#include "server/sha256.h"

#include <openssl/evp.h>

#include <cstdio>
#include <vector>

#include "kernels/check.h"

namespace zoetrope::server {

struct Sha256::Context {
  EVP_MD_CTX* digest = nullptr;
};

Sha256::Sha256() : context_(std::make_unique<Context>()) {
  context_->digest = EVP_MD_CTX_new();
  ZCHECK(context_->digest != nullptr);
  ZCHECK(EVP_DigestInit_ex(context_->digest, EVP_sha256(), nullptr) == 1);
}

Sha256::~Sha256() { EVP_MD_CTX_free(context_->digest); }

void Sha256::Update(absl::string_view data) {
  ZCHECK(EVP_DigestUpdate(context_->digest, data.data(), data.size()) == 1);
}

std::string Sha256::FinishHex() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  ZCHECK(EVP_DigestFinal_ex(context_->digest, digest, &length) == 1);
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

}  // namespace zoetrope::server
