// A thin wrapper over the sentencepiece library, in a translation unit of its own.
//
// Debian's sentencepiece 0.1.97 header declares `namespace absl { using std::string_view; }`, which
// collides with Debian abseil's own absl::string_view class. So <sentencepiece_processor.h> is included
// only by sentencepiece_model.cc, which includes no abseil header, and this interface uses std types
// only (errors as message strings). Use TextTokenizer (text_tokenizer.h), not this class.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace zoetrope::internal {

class SentencePieceModel {
 public:
  SentencePieceModel();
  ~SentencePieceModel();
  SentencePieceModel(const SentencePieceModel&) = delete;
  SentencePieceModel& operator=(const SentencePieceModel&) = delete;

  // Loads a serialized ModelProto (spiece.model). Returns "" on success, else the library's message.
  std::string Load(const std::string& path);
  // Encodes UTF-8 text with the model's own normalizer. Returns "" on success. Thread-safe.
  std::string Encode(const std::string& text, std::vector<int>* ids) const;
  // Decodes ids to text (pieces joined, '▁' → space). Returns "" on success.
  std::string Decode(const std::vector<int>& ids, std::string* text) const;

  int PieceSize() const;
  // -1 where the model defines no such id.
  int PadId() const;
  int EosId() const;
  int UnkId() const;
  int BosId() const;
  std::string IdToPiece(int id) const;

 private:
  // A sentencepiece::SentencePieceProcessor owned by the module libzoetrope_sentencepiece, which
  // sentencepiece_model.cc loads privately (see sentencepiece_shim.cc for why).
  void* processor_ = nullptr;
};

}  // namespace zoetrope::internal
