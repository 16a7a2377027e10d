// libzoetrope_sentencepiece: a C interface over Debian's sentencepiece, built as a module that
// sentencepiece_model.cc loads with dlopen(RTLD_LOCAL | RTLD_DEEPBIND).
//
// Why a module: Debian's libsentencepiece0 embeds its own protobuf-lite (3.14) and exports its symbols.
// In a process that also links libprotobuf 3.21 (every service binary: gRPC), one of the two copies
// binds to the other's symbols: libprotobuf's static initialisers crash when sentencepiece comes first,
// and sentencepiece fails its version check when libprotobuf comes first. Loaded privately with deep
// binding, sentencepiece resolves to its own copy and libprotobuf to its own.
//
// Nothing may throw across this boundary; strings and id lists are returned through callbacks so the
// two sides never free each other's memory.
#include <sentencepiece_processor.h>

#include <cstddef>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

namespace {

void SetError(char* error, size_t error_size, const std::string& message) {
  if (error != nullptr && error_size > 0) std::snprintf(error, error_size, "%s", message.c_str());
}

}  // namespace

extern "C" {

typedef void (*zoetrope_spm_emit_ids)(void* context, const int* ids, size_t count);
typedef void (*zoetrope_spm_emit_text)(void* context, const char* text, size_t size);

__attribute__((visibility("default"))) void* zoetrope_spm_new() {
  try {
    return new sentencepiece::SentencePieceProcessor();
  } catch (...) {
    return nullptr;
  }
}

__attribute__((visibility("default"))) void zoetrope_spm_free(void* processor) {
  delete static_cast<sentencepiece::SentencePieceProcessor*>(processor);
}

// Returns 0 on success, else 1 with the message in `error`.
__attribute__((visibility("default"))) int zoetrope_spm_load(void* processor, const char* path, char* error,
                                                             size_t error_size) {
  try {
    const sentencepiece::util::Status status = static_cast<sentencepiece::SentencePieceProcessor*>(processor)->Load(path);
    if (status.ok()) return 0;
    SetError(error, error_size, status.ToString());
  } catch (const std::exception& exception) {
    SetError(error, error_size, exception.what());
  } catch (...) {
    SetError(error, error_size, "unknown exception in sentencepiece");
  }
  return 1;
}

__attribute__((visibility("default"))) int zoetrope_spm_encode(const void* processor, const char* text, size_t size,
                                                               zoetrope_spm_emit_ids emit, void* context, char* error,
                                                               size_t error_size) {
  try {
    std::vector<int> ids;
    const sentencepiece::util::Status status =
        static_cast<const sentencepiece::SentencePieceProcessor*>(processor)->Encode(std::string(text, size), &ids);
    if (status.ok()) {
      emit(context, ids.data(), ids.size());
      return 0;
    }
    SetError(error, error_size, status.ToString());
  } catch (const std::exception& exception) {
    SetError(error, error_size, exception.what());
  } catch (...) {
    SetError(error, error_size, "unknown exception in sentencepiece");
  }
  return 1;
}

__attribute__((visibility("default"))) int zoetrope_spm_decode(const void* processor, const int* ids, size_t count,
                                                               zoetrope_spm_emit_text emit, void* context,
                                                               char* error, size_t error_size) {
  try {
    std::string text;
    const sentencepiece::util::Status status = static_cast<const sentencepiece::SentencePieceProcessor*>(processor)
                                                   ->Decode(std::vector<int>(ids, ids + count), &text);
    if (status.ok()) {
      emit(context, text.data(), text.size());
      return 0;
    }
    SetError(error, error_size, status.ToString());
  } catch (const std::exception& exception) {
    SetError(error, error_size, exception.what());
  } catch (...) {
    SetError(error, error_size, "unknown exception in sentencepiece");
  }
  return 1;
}

// which: 0 piece count, 1 pad id, 2 eos id, 3 unk id, 4 bos id.
__attribute__((visibility("default"))) int zoetrope_spm_number(const void* processor, int which) {
  const auto* model = static_cast<const sentencepiece::SentencePieceProcessor*>(processor);
  try {
    switch (which) {
      case 0: return model->GetPieceSize();
      case 1: return model->pad_id();
      case 2: return model->eos_id();
      case 3: return model->unk_id();
      case 4: return model->bos_id();
    }
  } catch (...) {
  }
  return -1;
}

__attribute__((visibility("default"))) void zoetrope_spm_id_to_piece(const void* processor, int id,
                                                                     zoetrope_spm_emit_text emit, void* context) {
  try {
    const std::string piece = static_cast<const sentencepiece::SentencePieceProcessor*>(processor)->IdToPiece(id);
    emit(context, piece.data(), piece.size());
  } catch (...) {
  }
}

}  // extern "C"
