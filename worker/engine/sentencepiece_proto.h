// The protobuf wire-format reader for sentencepiece's ModelProto: only the fields SentencePieceModel
// needs (sentencepiece_model.h lists them), without libprotobuf or generated code, so a malformed file is
// an error naming the file, the field and the byte offset rather than a crash.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace zoetrope::internal {

struct ParsedPiece {
  std::string text;
  float score = 0;
  int32_t type = 1;  // NORMAL (SentencePieceModel::PieceType)
};

// TrainerSpec: the fields encoding and decoding need. The special ids (unk_id = 40 ...) are not among
// them: sentencepiece finds the special pieces by name.
struct ParsedTrainerSpec {
  int32_t model_type = 1;  // UNIGRAM
  bool byte_fallback = false;
  bool treat_whitespace_as_suffix = false;
  std::optional<std::string> unk_surface;
  std::string unk_piece, bos_piece, eos_piece, pad_piece;  // empty: the default name
};

struct ParsedNormalizerSpec {
  bool present = false;
  std::string name;
  std::string precompiled_charsmap;
  size_t charsmap_file_offset = 0;
  bool add_dummy_prefix = true;
  bool remove_extra_whitespaces = true;
  bool escape_whitespaces = true;
};

struct ParsedModel {
  std::vector<ParsedPiece> pieces;
  ParsedTrainerSpec trainer;
  ParsedNormalizerSpec normalizer;
  ParsedNormalizerSpec denormalizer;
};

// Parses a serialized ModelProto. `source` names it in errors (a path, or a description).
absl::StatusOr<ParsedModel> ParseSentencePieceModelProto(absl::string_view serialized, absl::string_view source);

}  // namespace zoetrope::internal
