#include "worker/engine/sentencepiece_proto.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace zoetrope::internal {
namespace {

enum WireType : int { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kStartGroup = 3, kEndGroup = 4, kFixed32 = 5 };

const char* WireTypeName(int wire_type) {
  switch (wire_type) {
    case kVarint: return "varint";
    case kFixed64: return "fixed64";
    case kLengthDelimited: return "length-delimited";
    case kStartGroup: return "start-group";
    case kEndGroup: return "end-group";
    case kFixed32: return "fixed32";
  }
  return "invalid";
}

// Reads one message's fields. Offsets in errors are from the start of the file; `path` names the
// message ("trainer_spec", "pieces[12]") so an error says where the damage is.
class WireReader {
 public:
  WireReader(absl::string_view bytes, size_t file_offset, absl::string_view source, std::string path)
      : bytes_(bytes), file_offset_(file_offset), source_(source), path_(std::move(path)) {}

  bool AtEnd() const { return position_ >= bytes_.size(); }
  const std::string& path() const { return path_; }
  size_t FileOffset() const { return file_offset_ + position_; }

  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": malformed sentencepiece model: ", path_, ": ", what,
                                                   " at byte offset ", FileOffset()));
  }

  absl::Status ReadTag(uint32_t* field, int* wire_type) {
    uint64_t tag = 0;
    if (absl::Status status = ReadVarint(&tag); !status.ok()) return status;
    *field = static_cast<uint32_t>(tag >> 3);
    *wire_type = static_cast<int>(tag & 7);
    if (*field == 0 || tag >> 32 != 0) return Error(absl::StrCat("invalid field tag ", tag));
    if (*wire_type > kFixed32) return Error(absl::StrCat("field ", *field, " has invalid wire type ", *wire_type));
    return absl::OkStatus();
  }

  absl::Status ReadVarint(uint64_t* value) {
    *value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (AtEnd()) return Error("truncated varint");
      const auto byte = static_cast<unsigned char>(bytes_[position_++]);
      *value |= static_cast<uint64_t>(byte & 0x7F) << shift;
      if ((byte & 0x80) == 0) return absl::OkStatus();
    }
    return Error("varint longer than 10 bytes");
  }

  absl::Status ReadFixed32(uint32_t* value) {
    if (bytes_.size() - position_ < 4) return Error("truncated fixed32");
    const auto* bytes = reinterpret_cast<const unsigned char*>(bytes_.data() + position_);
    *value = bytes[0] | (bytes[1] << 8) | (bytes[2] << 16) | (static_cast<uint32_t>(bytes[3]) << 24);
    position_ += 4;
    return absl::OkStatus();
  }

  // The payload of a length-delimited field and its offset in the file.
  absl::Status ReadLengthDelimited(absl::string_view* payload, size_t* payload_file_offset) {
    uint64_t length = 0;
    if (absl::Status status = ReadVarint(&length); !status.ok()) return status;
    if (length > bytes_.size() - position_) {
      return Error(absl::StrCat("length ", length, " runs past the end of the message (", bytes_.size() - position_,
                                " bytes left)"));
    }
    *payload = bytes_.substr(position_, length);
    *payload_file_offset = FileOffset();
    position_ += length;
    return absl::OkStatus();
  }

  absl::Status Skip(uint32_t field, int wire_type) {
    switch (wire_type) {
      case kVarint: {
        uint64_t ignored = 0;
        return ReadVarint(&ignored);
      }
      case kFixed64:
        if (bytes_.size() - position_ < 8) return Error("truncated fixed64");
        position_ += 8;
        return absl::OkStatus();
      case kLengthDelimited: {
        absl::string_view ignored;
        size_t ignored_offset = 0;
        return ReadLengthDelimited(&ignored, &ignored_offset);
      }
      case kFixed32: {
        uint32_t ignored = 0;
        return ReadFixed32(&ignored);
      }
    }
    // ModelProto has no groups; a group here means the bytes are not a ModelProto.
    return Error(absl::StrCat("field ", field, " has unsupported wire type ", WireTypeName(wire_type)));
  }

  absl::Status Expect(uint32_t field, absl::string_view name, int wire_type, int expected) const {
    if (wire_type == expected) return absl::OkStatus();
    return Error(absl::StrCat("field ", field, " (", name, ") has wire type ", WireTypeName(wire_type), ", expected ",
                              WireTypeName(expected)));
  }

  absl::Status ReadString(uint32_t field, absl::string_view name, int wire_type, std::string* value) {
    if (absl::Status status = Expect(field, name, wire_type, kLengthDelimited); !status.ok()) return status;
    absl::string_view payload;
    size_t offset = 0;
    if (absl::Status status = ReadLengthDelimited(&payload, &offset); !status.ok()) return status;
    value->assign(payload.data(), payload.size());
    return absl::OkStatus();
  }

  absl::Status ReadBool(uint32_t field, absl::string_view name, int wire_type, bool* value) {
    if (absl::Status status = Expect(field, name, wire_type, kVarint); !status.ok()) return status;
    uint64_t raw = 0;
    if (absl::Status status = ReadVarint(&raw); !status.ok()) return status;
    *value = raw != 0;
    return absl::OkStatus();
  }

  // int32 and enum fields: negative values arrive sign-extended to 64 bits.
  absl::Status ReadInt32(uint32_t field, absl::string_view name, int wire_type, int32_t* value) {
    if (absl::Status status = Expect(field, name, wire_type, kVarint); !status.ok()) return status;
    uint64_t raw = 0;
    if (absl::Status status = ReadVarint(&raw); !status.ok()) return status;
    *value = static_cast<int32_t>(static_cast<uint32_t>(raw));
    return absl::OkStatus();
  }

  // A nested message's reader.
  absl::StatusOr<WireReader> ReadMessage(uint32_t field, absl::string_view name, int wire_type, std::string path) {
    if (absl::Status status = Expect(field, name, wire_type, kLengthDelimited); !status.ok()) return status;
    absl::string_view payload;
    size_t offset = 0;
    if (absl::Status status = ReadLengthDelimited(&payload, &offset); !status.ok()) return status;
    return WireReader(payload, offset, source_, std::move(path));
  }

 private:
  absl::string_view bytes_;
  size_t position_ = 0;
  size_t file_offset_;
  absl::string_view source_;
  std::string path_;
};

absl::Status ParsePiece(WireReader reader, ParsedPiece* piece) {
  while (!reader.AtEnd()) {
    uint32_t field = 0;
    int wire_type = 0;
    if (absl::Status status = reader.ReadTag(&field, &wire_type); !status.ok()) return status;
    absl::Status status;
    switch (field) {
      case 1:
        status = reader.ReadString(field, "piece", wire_type, &piece->text);
        break;
      case 2: {
        uint32_t bits = 0;
        status = reader.Expect(field, "score", wire_type, kFixed32);
        if (status.ok()) status = reader.ReadFixed32(&bits);
        std::memcpy(&piece->score, &bits, sizeof(bits));
        break;
      }
      case 3:
        status = reader.ReadInt32(field, "type", wire_type, &piece->type);
        if (status.ok() && (piece->type < 1 || piece->type > 6)) {
          status = reader.Error(absl::StrCat("unknown piece type ", piece->type));
        }
        break;
      default:
        status = reader.Skip(field, wire_type);
    }
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

// A repeated occurrence of the message merges into what was read before, as protobuf does.
absl::Status ParseTrainerSpec(WireReader reader, ParsedTrainerSpec* spec) {
  while (!reader.AtEnd()) {
    uint32_t field = 0;
    int wire_type = 0;
    if (absl::Status status = reader.ReadTag(&field, &wire_type); !status.ok()) return status;
    absl::Status status;
    switch (field) {
      case 3:
        status = reader.ReadInt32(field, "model_type", wire_type, &spec->model_type);
        break;
      case 24:
        status = reader.ReadBool(field, "treat_whitespace_as_suffix", wire_type, &spec->treat_whitespace_as_suffix);
        break;
      case 35:
        status = reader.ReadBool(field, "byte_fallback", wire_type, &spec->byte_fallback);
        break;
      case 44:
        status = reader.ReadString(field, "unk_surface", wire_type, &spec->unk_surface.emplace());
        break;
      case 45:
        status = reader.ReadString(field, "unk_piece", wire_type, &spec->unk_piece);
        break;
      case 46:
        status = reader.ReadString(field, "bos_piece", wire_type, &spec->bos_piece);
        break;
      case 47:
        status = reader.ReadString(field, "eos_piece", wire_type, &spec->eos_piece);
        break;
      case 48:
        status = reader.ReadString(field, "pad_piece", wire_type, &spec->pad_piece);
        break;
      default:
        status = reader.Skip(field, wire_type);
    }
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

absl::Status ParseNormalizerSpec(WireReader reader, ParsedNormalizerSpec* spec) {
  spec->present = true;
  while (!reader.AtEnd()) {
    uint32_t field = 0;
    int wire_type = 0;
    if (absl::Status status = reader.ReadTag(&field, &wire_type); !status.ok()) return status;
    absl::Status status;
    switch (field) {
      case 1:
        status = reader.ReadString(field, "name", wire_type, &spec->name);
        break;
      case 2: {
        status = reader.Expect(field, "precompiled_charsmap", wire_type, kLengthDelimited);
        absl::string_view payload;
        if (status.ok()) status = reader.ReadLengthDelimited(&payload, &spec->charsmap_file_offset);
        spec->precompiled_charsmap.assign(payload.data(), payload.size());
        break;
      }
      case 3:
        status = reader.ReadBool(field, "add_dummy_prefix", wire_type, &spec->add_dummy_prefix);
        break;
      case 4:
        status = reader.ReadBool(field, "remove_extra_whitespaces", wire_type, &spec->remove_extra_whitespaces);
        break;
      case 5:
        status = reader.ReadBool(field, "escape_whitespaces", wire_type, &spec->escape_whitespaces);
        break;
      default:
        status = reader.Skip(field, wire_type);
    }
    if (!status.ok()) return status;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ParsedModel> ParseSentencePieceModelProto(absl::string_view serialized, absl::string_view source) {
  ParsedModel model;
  WireReader reader(serialized, 0, source, "ModelProto");
  while (!reader.AtEnd()) {
    uint32_t field = 0;
    int wire_type = 0;
    if (absl::Status status = reader.ReadTag(&field, &wire_type); !status.ok()) return status;
    absl::Status status;
    switch (field) {
      case 1: {
        absl::StatusOr<WireReader> message =
            reader.ReadMessage(field, "pieces", wire_type, absl::StrCat("pieces[", model.pieces.size(), "]"));
        status = message.status();
        if (status.ok()) status = ParsePiece(*std::move(message), &model.pieces.emplace_back());
        break;
      }
      case 2: {
        absl::StatusOr<WireReader> message = reader.ReadMessage(field, "trainer_spec", wire_type, "trainer_spec");
        status = message.status();
        if (status.ok()) status = ParseTrainerSpec(*std::move(message), &model.trainer);
        break;
      }
      case 3: {
        absl::StatusOr<WireReader> message =
            reader.ReadMessage(field, "normalizer_spec", wire_type, "normalizer_spec");
        status = message.status();
        if (status.ok()) status = ParseNormalizerSpec(*std::move(message), &model.normalizer);
        break;
      }
      case 5: {
        absl::StatusOr<WireReader> message =
            reader.ReadMessage(field, "denormalizer_spec", wire_type, "denormalizer_spec");
        status = message.status();
        if (status.ok()) status = ParseNormalizerSpec(*std::move(message), &model.denormalizer);
        break;
      }
      default:  // 4: self_test_data, which only sentencepiece's own loader runs
        status = reader.Skip(field, wire_type);
    }
    if (!status.ok()) return status;
  }
  return model;
}

}  // namespace zoetrope::internal
