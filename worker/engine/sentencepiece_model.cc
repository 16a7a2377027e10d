// No abseil header may be included here (see sentencepiece_model.h).
//
// The sentencepiece library is not linked into the program: it is reached through the module
// libzoetrope_sentencepiece (sentencepiece_shim.cc), loaded privately with deep binding, because Debian's
// libsentencepiece exports a bundled protobuf that clashes with libprotobuf (gRPC) in one process.
#include "worker/engine/sentencepiece_model.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstddef>
#include <cstdlib>
#include <type_traits>
#include <string>
#include <vector>

namespace zoetrope::internal {
namespace {

using EmitIds = void (*)(void*, const int*, size_t);
using EmitText = void (*)(void*, const char*, size_t);

struct ShimApi {
  void* (*create)() = nullptr;
  void (*destroy)(void*) = nullptr;
  int (*load)(void*, const char*, char*, size_t) = nullptr;
  int (*encode)(const void*, const char*, size_t, EmitIds, void*, char*, size_t) = nullptr;
  int (*decode)(const void*, const int*, size_t, EmitText, void*, char*, size_t) = nullptr;
  int (*number)(const void*, int) = nullptr;
  void (*id_to_piece)(const void*, int, EmitText, void*) = nullptr;
  std::string error;  // why the module could not be loaded; empty when it was
};

constexpr const char* kModuleName = "libzoetrope_sentencepiece.so";

std::string ExecutableDirectory() {
  std::vector<char> buffer(4096);
  const ssize_t size = ::readlink("/proc/self/exe", buffer.data(), buffer.size() - 1);
  if (size <= 0) return "";
  std::string path(buffer.data(), static_cast<size_t>(size));
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "" : path.substr(0, slash);
}

// Deep binding keeps the module's protobuf symbols to itself. Sanitizer runtimes refuse RTLD_DEEPBIND;
// sanitized builds run the tokenizer only in processes without libprotobuf, where plain local loading is
// enough.
int OpenFlags() {
  int flags = RTLD_NOW | RTLD_LOCAL;
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
  flags |= RTLD_DEEPBIND;
#endif
  return flags;
}

const ShimApi& Api() {
  static const ShimApi* api = [] {
    auto* loaded = new ShimApi();
    // $ZOETROPE_SENTENCEPIECE_MODULE, beside the executable, in the build tree, then the library path.
    std::vector<std::string> candidates;
    if (const char* override_path = std::getenv("ZOETROPE_SENTENCEPIECE_MODULE"); override_path && *override_path) {
      candidates.push_back(override_path);
    }
    if (const std::string directory = ExecutableDirectory(); !directory.empty()) {
      candidates.push_back(directory + "/" + kModuleName);
      candidates.push_back(directory + "/../lib/zoetrope/" + kModuleName);
    }
#ifdef ZOETROPE_SENTENCEPIECE_MODULE_PATH
    candidates.push_back(ZOETROPE_SENTENCEPIECE_MODULE_PATH);
#endif
    candidates.push_back(kModuleName);
    void* handle = nullptr;
    std::string tried;
    for (const std::string& candidate : candidates) {
      handle = ::dlopen(candidate.c_str(), OpenFlags());
      if (handle != nullptr) break;
      const char* reason = ::dlerror();
      tried += "\n  " + candidate + ": " + (reason != nullptr ? reason : "not loadable");
    }
    if (handle == nullptr) {
      loaded->error = std::string("cannot load the sentencepiece module ") + kModuleName + tried;
      return loaded;
    }
    auto resolve = [&](const char* name, auto& function) {
      function = reinterpret_cast<std::remove_reference_t<decltype(function)>>(::dlsym(handle, name));
      if (function == nullptr && loaded->error.empty()) {
        loaded->error = std::string("the sentencepiece module lacks ") + name;
      }
    };
    resolve("zoetrope_spm_new", loaded->create);
    resolve("zoetrope_spm_free", loaded->destroy);
    resolve("zoetrope_spm_load", loaded->load);
    resolve("zoetrope_spm_encode", loaded->encode);
    resolve("zoetrope_spm_decode", loaded->decode);
    resolve("zoetrope_spm_number", loaded->number);
    resolve("zoetrope_spm_id_to_piece", loaded->id_to_piece);
    return loaded;
  }();
  return *api;
}

void AppendIds(void* context, const int* ids, size_t count) {
  static_cast<std::vector<int>*>(context)->assign(ids, ids + count);
}

void AssignText(void* context, const char* text, size_t size) {
  static_cast<std::string*>(context)->assign(text, size);
}

}  // namespace

SentencePieceModel::SentencePieceModel() {
  const ShimApi& api = Api();
  if (api.error.empty()) processor_ = api.create();
}

SentencePieceModel::~SentencePieceModel() {
  if (processor_ != nullptr) Api().destroy(processor_);
}

std::string SentencePieceModel::Load(const std::string& path) {
  const ShimApi& api = Api();
  if (!api.error.empty()) return api.error;
  if (processor_ == nullptr) return "out of memory creating the sentencepiece processor";
  char error[1024] = {};
  return api.load(processor_, path.c_str(), error, sizeof(error)) == 0 ? std::string() : std::string(error);
}

std::string SentencePieceModel::Encode(const std::string& text, std::vector<int>* ids) const {
  const ShimApi& api = Api();
  if (!api.error.empty() || processor_ == nullptr) return "the sentencepiece model is not loaded";
  char error[1024] = {};
  return api.encode(processor_, text.data(), text.size(), &AppendIds, ids, error, sizeof(error)) == 0
             ? std::string()
             : std::string(error);
}

std::string SentencePieceModel::Decode(const std::vector<int>& ids, std::string* text) const {
  const ShimApi& api = Api();
  if (!api.error.empty() || processor_ == nullptr) return "the sentencepiece model is not loaded";
  char error[1024] = {};
  return api.decode(processor_, ids.data(), ids.size(), &AssignText, text, error, sizeof(error)) == 0
             ? std::string()
             : std::string(error);
}

int SentencePieceModel::PieceSize() const { return processor_ != nullptr ? Api().number(processor_, 0) : 0; }
int SentencePieceModel::PadId() const { return processor_ != nullptr ? Api().number(processor_, 1) : -1; }
int SentencePieceModel::EosId() const { return processor_ != nullptr ? Api().number(processor_, 2) : -1; }
int SentencePieceModel::UnkId() const { return processor_ != nullptr ? Api().number(processor_, 3) : -1; }
int SentencePieceModel::BosId() const { return processor_ != nullptr ? Api().number(processor_, 4) : -1; }

std::string SentencePieceModel::IdToPiece(int id) const {
  std::string piece;
  if (processor_ != nullptr) Api().id_to_piece(processor_, id, &AssignText, &piece);
  return piece;
}

}  // namespace zoetrope::internal
