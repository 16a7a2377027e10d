// Sentencepiece unigram models (spiece.model) read and run by our own code, so that no process links
// libsentencepiece (Debian's exports a bundled protobuf 3.14 that clashes with libprotobuf in the same
// process). Use TextTokenizer (text_tokenizer.h), not this class, outside tests.
//
// The behaviour follows sentencepiece 0.1.97's SentencePieceProcessor, which the tests compare against
// spm_encode/spm_decode id for id:
//   - the serialized ModelProto is parsed from the protobuf wire format: pieces (piece, score, type),
//     trainer_spec (model_type, byte_fallback, treat_whitespace_as_suffix, the special piece names,
//     unk_surface), normalizer_spec and denormalizer_spec (name, precompiled_charsmap, add_dummy_prefix,
//     remove_extra_whitespaces, escape_whitespaces). Other fields are skipped; self_test_data is not run.
//   - normalization: user-defined symbols kept verbatim, else the longest rule of the precompiled
//     charsmap, else one UTF-8 character copied (a malformed byte becomes U+FFFD); leading, trailing and
//     repeated spaces removed, the dummy prefix added, spaces escaped as U+2581 '▁', as the spec asks.
//   - encoding: Viterbi over the normalized bytes with the piece scores (sentencepiece's optimized
//     encoder, including its float/double arithmetic, so ties break the same way); user-defined pieces
//     score length × max_score − 0.1; a character no piece covers is the unknown piece scoring
//     min_score − 10; runs of unknowns become one unknown id, or UTF-8 bytes <0xNN> with byte_fallback.
//   - decoding: control pieces vanish, unknown pieces read as unk_surface (default " ⁇ "), byte pieces
//     are reassembled into UTF-8 (an invalid byte becomes U+FFFD), '▁' reads as a space and the leading
//     spaces of the text are dropped.
// Only model_type UNIGRAM is supported (umT5's); BPE, WORD and CHAR models are rejected at load.
//
// Immutable after loading: Encode and Decode are const and thread-safe.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace zoetrope::internal {

class SentencePieceModel {
 public:
  // ModelProto.SentencePiece.Type.
  enum class PieceType : int { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

  // Reads a serialized ModelProto. NotFound when the file cannot be opened, InvalidArgument when it is
  // malformed (the message names the file, the field and the byte offset) or not a supported model.
  static absl::StatusOr<std::unique_ptr<SentencePieceModel>> Load(const std::string& path);
  // The same from bytes in memory; `source` names them in errors (a path, or a description).
  static absl::StatusOr<std::unique_ptr<SentencePieceModel>> FromSerialized(absl::string_view serialized,
                                                                            absl::string_view source);
  ~SentencePieceModel();
  SentencePieceModel(const SentencePieceModel&) = delete;
  SentencePieceModel& operator=(const SentencePieceModel&) = delete;

  // The ids of `text`, without BOS or EOS. Any bytes are accepted: malformed UTF-8 normalizes to U+FFFD.
  std::vector<int> Encode(absl::string_view text) const;
  // Text of ids (see above). OutOfRange for an id outside [0, PieceSize()).
  absl::StatusOr<std::string> Decode(const std::vector<int>& ids) const;
  // The normalized form Encode segments: '▁' for spaces, dummy prefix included.
  std::string Normalize(absl::string_view text) const;

  int PieceSize() const;
  // The id of the piece named by trainer_spec (pad_piece "<pad>", eos_piece "</s>", bos_piece "<s>":
  // control pieces; unk_piece "<unk>": the unknown piece); -1 where the model has no such piece.
  int PadId() const;
  int EosId() const;
  int UnkId() const;
  int BosId() const;
  // The piece's text; "" for an id outside [0, PieceSize()).
  std::string IdToPiece(int id) const;
  // Reserved pieces (control, unknown, byte) first, then the others; the unknown id where none matches.
  int PieceToId(absl::string_view piece) const;

  // Implementation details, defined in sentencepiece_model.cc.
  class PieceTrie;
  class Normalizer;
  struct Piece;

 private:
  SentencePieceModel();
  absl::Status Initialize(absl::string_view serialized, absl::string_view source);
  bool IsType(int id, PieceType type) const;
  // PieceToId(name) when that piece has `type`, else -1.
  int SpecialId(const std::string& name, PieceType type) const;

  std::vector<Piece> pieces_;
  std::unique_ptr<PieceTrie> vocabulary_;     // normal, user-defined and unused pieces → id
  std::unique_ptr<PieceTrie> user_defined_;   // user-defined pieces, kept verbatim by the normalizer
  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<Normalizer> denormalizer_;  // applied to decoded text; null when the model has none
  std::vector<std::pair<std::string, int>> reserved_;  // sorted (piece, id) of control/unknown/byte pieces
  int unknown_id_ = -1;
  bool byte_fallback_ = false;
  int byte_ids_[256] = {};  // with byte_fallback: the id of <0xNN>
  float min_score_ = 0;     // over normal pieces, as sentencepiece computes them
  float max_score_ = 0;
  std::string unk_surface_;
  std::string unk_piece_, bos_piece_, eos_piece_, pad_piece_;
  bool add_dummy_prefix_ = true;
  bool remove_extra_whitespaces_ = true;
};

}  // namespace zoetrope::internal
