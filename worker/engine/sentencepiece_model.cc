#include "worker/engine/sentencepiece_model.h"

#include <algorithm>
#include <cerrno>
#include <cfloat>
#include <cstdint>
#include <cstring>
#include <deque>
#include <fstream>
#include <iterator>
#include <optional>
#include <string_view>
#include <unordered_map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "kernels/check.h"
#include "worker/engine/sentencepiece_proto.h"

namespace zoetrope::internal {

using PieceType = SentencePieceModel::PieceType;

namespace {

constexpr absl::string_view kSpaceSymbol = "\xe2\x96\x81";            // U+2581, what spaces become
constexpr absl::string_view kReplacementCharacter = "\xef\xbf\xbd";   // U+FFFD, for malformed UTF-8
constexpr absl::string_view kDefaultUnknownSurface = " \xe2\x81\x87 ";  // " ⁇ ", trainer_spec's default
// sentencepiece scores a character that no piece covers min_score − 10, below any real segmentation.
constexpr float kUnknownPenalty = 10.0f;

// The length sentencepiece steps by from a lead byte alone (a stray continuation byte counts as one).
size_t CharLength(char lead) {
  static constexpr uint8_t kLengths[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return kLengths[static_cast<unsigned char>(lead) >> 4];
}

bool IsTrailByte(unsigned char byte) { return (byte & 0xC0) == 0x80; }
bool IsScalarValue(uint32_t code_point) {
  return code_point < 0xD800 || (code_point >= 0xE000 && code_point <= 0x10FFFF);
}

// Length of the well-formed UTF-8 character at the start of `text`, 0 when it is not one (truncated,
// overlong, a surrogate, past U+10FFFF, or a stray continuation byte).
size_t ValidCharLength(absl::string_view text) {
  if (text.empty()) return 0;
  const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
  const size_t size = text.size();
  if (bytes[0] < 0x80) return 1;
  if (size >= 2 && (bytes[0] & 0xE0) == 0xC0) {
    const uint32_t code_point = ((bytes[0] & 0x1Fu) << 6) | (bytes[1] & 0x3Fu);
    return IsTrailByte(bytes[1]) && code_point >= 0x80 && IsScalarValue(code_point) ? 2 : 0;
  }
  if (size >= 3 && (bytes[0] & 0xF0) == 0xE0) {
    const uint32_t code_point = ((bytes[0] & 0x0Fu) << 12) | ((bytes[1] & 0x3Fu) << 6) | (bytes[2] & 0x3Fu);
    return IsTrailByte(bytes[1]) && IsTrailByte(bytes[2]) && code_point >= 0x800 && IsScalarValue(code_point) ? 3
                                                                                                               : 0;
  }
  if (size >= 4 && (bytes[0] & 0xF8) == 0xF0) {
    const uint32_t code_point = ((bytes[0] & 0x07u) << 18) | ((bytes[1] & 0x3Fu) << 12) |
                                ((bytes[2] & 0x3Fu) << 6) | (bytes[3] & 0x3Fu);
    return IsTrailByte(bytes[1]) && IsTrailByte(bytes[2]) && IsTrailByte(bytes[3]) && code_point >= 0x10000 &&
                   IsScalarValue(code_point)
               ? 4
               : 0;
  }
  return 0;
}

std::string BytePieceName(int byte) { return absl::StrFormat("<0x%02X>", byte); }

// The byte a piece of type BYTE stands for ("<0x41>" → 0x41; upper-case hex, as sentencepiece writes
// them), -1 for any other spelling.
int BytePieceValue(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  int value = 0;
  for (char digit : piece.substr(3, 2)) {
    value <<= 4;
    if (digit >= '0' && digit <= '9') {
      value |= digit - '0';
    } else if (digit >= 'A' && digit <= 'F') {
      value |= digit - 'A' + 10;
    } else {
      return -1;
    }
  }
  return value;
}

const char* ModelTypeName(int32_t model_type) {
  switch (model_type) {
    case 1: return "UNIGRAM";
    case 2: return "BPE";
    case 3: return "WORD";
    case 4: return "CHAR";
  }
  return "unknown";
}

}  // namespace

// ---- implementation classes ---------------------------------------------------------------------------

struct SentencePieceModel::Piece {
  std::string text;
  float score = 0;
  PieceType type = PieceType::kNormal;
  int byte_value = -1;  // BYTE pieces: the byte
};

// A byte trie over a fixed key set, with the children of a node stored contiguously and sorted by label,
// so it needs no per-node allocation (umT5's vocabulary has 256k pieces).
class SentencePieceModel::PieceTrie {
 public:
  // Keys need not be sorted; of equal keys the first in sorted order (the lowest value) wins. Empty keys
  // are never matched.
  explicit PieceTrie(std::vector<std::pair<std::string_view, int>> entries) {
    std::sort(entries.begin(), entries.end());
    struct Range {
      uint32_t node;
      size_t begin, end, depth;
    };
    std::deque<Range> queue;
    nodes_.emplace_back();
    queue.push_back({0, 0, entries.size(), 0});
    while (!queue.empty()) {
      const Range range = queue.front();
      queue.pop_front();
      size_t begin = range.begin;
      if (begin < range.end && entries[begin].first.size() == range.depth) {
        nodes_[range.node].value = entries[begin].second;
        while (begin < range.end && entries[begin].first.size() == range.depth) ++begin;
      }
      nodes_[range.node].first_edge = static_cast<uint32_t>(labels_.size());
      while (begin < range.end) {
        const char label = entries[begin].first[range.depth];
        size_t end = begin;
        while (end < range.end && entries[end].first[range.depth] == label) ++end;
        const auto child = static_cast<uint32_t>(nodes_.size());
        nodes_.emplace_back();
        labels_.push_back(static_cast<unsigned char>(label));
        targets_.push_back(child);
        queue.push_back({child, begin, end, range.depth + 1});
        begin = end;
      }
      nodes_[range.node].edge_count = static_cast<uint32_t>(labels_.size()) - nodes_[range.node].first_edge;
    }
  }

  bool empty() const { return nodes_.size() == 1 && nodes_[0].value < 0; }

  // Calls visit(length, value) for each key that is a prefix of `text`, shortest first.
  template <typename Visit>
  void ForEachPrefix(std::string_view text, Visit&& visit) const {
    uint32_t node = 0;
    for (size_t i = 0; i < text.size(); ++i) {
      if (!Child(node, static_cast<unsigned char>(text[i]), &node)) return;
      if (nodes_[node].value >= 0) visit(i + 1, nodes_[node].value);
    }
  }

  // The length of the longest key that is a prefix of `text`, 0 when none is.
  size_t LongestPrefix(std::string_view text) const {
    size_t longest = 0;
    ForEachPrefix(text, [&](size_t length, int) { longest = length; });
    return longest;
  }

  // The value of `key`, -1 when it is not a key.
  int Find(std::string_view key) const {
    uint32_t node = 0;
    for (char label : key) {
      if (!Child(node, static_cast<unsigned char>(label), &node)) return -1;
    }
    return key.empty() ? -1 : nodes_[node].value;
  }

 private:
  struct Node {
    uint32_t first_edge = 0;
    uint32_t edge_count = 0;
    int32_t value = -1;
  };

  bool Child(uint32_t node, unsigned char label, uint32_t* child) const {
    const auto first = labels_.begin() + nodes_[node].first_edge;
    const auto last = first + nodes_[node].edge_count;
    const auto found = std::lower_bound(first, last, label);
    if (found == last || *found != label) return false;
    *child = targets_[found - labels_.begin()];
    return true;
  }

  std::vector<Node> nodes_;
  std::vector<unsigned char> labels_;  // edge labels, grouped by parent
  std::vector<uint32_t> targets_;      // edge targets, parallel to labels_
};

// sentencepiece's Normalizer. The precompiled charsmap is `uint32 LE trie byte size | Darts-clone
// double array | replacement strings, each NUL-terminated`; the trie maps UTF-8 sequences to offsets
// into the strings.
class SentencePieceModel::Normalizer {
 public:
  Normalizer(std::vector<uint32_t> units, std::string replacements, bool add_dummy_prefix,
             bool remove_extra_whitespaces, bool escape_whitespaces, bool treat_whitespace_as_suffix,
             const PieceTrie* verbatim)
      : units_(std::move(units)),
        replacements_(std::move(replacements)),
        add_dummy_prefix_(add_dummy_prefix),
        remove_extra_whitespaces_(remove_extra_whitespaces),
        escape_whitespaces_(escape_whitespaces),
        treat_whitespace_as_suffix_(treat_whitespace_as_suffix),
        verbatim_(verbatim) {}

  // Splits a serialized charsmap into trie units and replacement strings. `what` names it in errors.
  static absl::Status DecodeCharsMap(absl::string_view blob, std::vector<uint32_t>* units,
                                     std::string* replacements, const std::string& what) {
    units->clear();
    replacements->clear();
    if (blob.empty()) return absl::OkStatus();  // no rules: the identity
    if (blob.size() <= 4) return absl::InvalidArgumentError(absl::StrCat(what, " of ", blob.size(), " bytes is too short"));
    const auto* bytes = reinterpret_cast<const unsigned char*>(blob.data());
    const uint32_t trie_size =
        bytes[0] | (bytes[1] << 8) | (bytes[2] << 16) | (static_cast<uint32_t>(bytes[3]) << 24);
    if (trie_size > blob.size() - 4) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": its trie of ", trie_size, " bytes exceeds the ", blob.size() - 4, " bytes that follow"));
    }
    units->resize(trie_size / 4);
    for (size_t i = 0; i < units->size(); ++i) {
      const unsigned char* unit = bytes + 4 + 4 * i;
      (*units)[i] = unit[0] | (unit[1] << 8) | (unit[2] << 16) | (static_cast<uint32_t>(unit[3]) << 24);
    }
    *replacements = std::string(blob.substr(4 + trie_size));
    return absl::OkStatus();
  }

  std::string Normalize(absl::string_view input) const {
    std::string normalized;
    if (remove_extra_whitespaces_) {
      while (!input.empty()) {
        const auto [text, consumed] = NormalizePrefix(input);
        if (text != " ") break;
        input.remove_prefix(consumed);
      }
    }
    if (input.empty()) return normalized;
    normalized.reserve(input.size() * 3);
    const absl::string_view space = escape_whitespaces_ ? kSpaceSymbol : " ";
    if (!treat_whitespace_as_suffix_ && add_dummy_prefix_) normalized.append(space.data(), space.size());
    bool previous_is_space = remove_extra_whitespaces_;
    while (!input.empty()) {
      auto [text, consumed] = NormalizePrefix(input);
      while (previous_is_space && absl::ConsumePrefix(&text, " ")) {
      }
      if (!text.empty()) {
        for (char byte : text) {
          if (escape_whitespaces_ && byte == ' ') {
            normalized.append(kSpaceSymbol.data(), kSpaceSymbol.size());
          } else {
            normalized.push_back(byte);
          }
        }
        previous_is_space = absl::EndsWith(text, " ");
      }
      input.remove_prefix(consumed);
      if (!remove_extra_whitespaces_) previous_is_space = false;
    }
    if (remove_extra_whitespaces_) {
      while (absl::EndsWith(normalized, space)) normalized.resize(normalized.size() - space.size());
    }
    if (treat_whitespace_as_suffix_ && add_dummy_prefix_) normalized.append(space.data(), space.size());
    return normalized;
  }

 private:
  // What the start of `input` normalizes to, and how many bytes of it that consumes (≥ 1).
  std::pair<absl::string_view, size_t> NormalizePrefix(absl::string_view input) const {
    if (verbatim_ != nullptr) {
      if (const size_t length = verbatim_->LongestPrefix(std::string_view(input.data(), input.size())); length > 0) return {input.substr(0, length), length};
    }
    absl::string_view replacement;
    if (const size_t length = LongestRule(input, &replacement); length > 0) return {replacement, length};
    if (const size_t length = ValidCharLength(input); length > 0) return {input.substr(0, length), length};
    return {kReplacementCharacter, 1};
  }

  // Darts-clone's common prefix search, keeping the longest match. A unit is
  // `offset(22 bits, scaled by 2^8 when bit 9 is set) | bit 9 | has_leaf (bit 8) | label (8 bits)`, a leaf
  // unit `1 (bit 31) | value (31 bits)`. Indices are checked so a corrupt trie only ends the match.
  size_t LongestRule(absl::string_view input, absl::string_view* replacement) const {
    if (units_.empty()) return 0;
    auto offset = [](uint32_t unit) -> size_t { return (unit >> 10) << ((unit & (1u << 9)) >> 6); };
    size_t node = offset(units_[0]);
    size_t longest = 0;
    uint32_t value = 0;
    for (size_t i = 0; i < input.size(); ++i) {
      const auto label = static_cast<unsigned char>(input[i]);
      node ^= label;
      if (node >= units_.size()) break;
      const uint32_t unit = units_[node];
      if ((unit & ((1u << 31) | 0xFFu)) != label) break;
      node ^= offset(unit);
      if ((unit >> 8) & 1) {
        if (node >= units_.size()) break;
        longest = i + 1;
        value = units_[node] & ((1u << 31) - 1);
      }
    }
    if (longest == 0) return 0;
    // A replacement runs to its NUL (or the end of a corrupt blob).
    if (value >= replacements_.size()) {
      *replacement = absl::string_view();
    } else {
      const size_t end = replacements_.find('\0', value);
      *replacement = absl::string_view(replacements_).substr(value, end == std::string::npos ? end : end - value);
    }
    return longest;
  }

  std::vector<uint32_t> units_;
  std::string replacements_;
  bool add_dummy_prefix_;
  bool remove_extra_whitespaces_;
  bool escape_whitespaces_;
  bool treat_whitespace_as_suffix_;
  const PieceTrie* verbatim_;  // user-defined symbols, not normalized; owned by the model; may be null
};

// ---- SentencePieceModel -------------------------------------------------------------------------------

SentencePieceModel::SentencePieceModel() = default;
SentencePieceModel::~SentencePieceModel() = default;

absl::StatusOr<std::unique_ptr<SentencePieceModel>> SentencePieceModel::Load(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return absl::NotFoundError(absl::StrCat(path, ": cannot open the sentencepiece model: ", std::strerror(errno)));
  std::string bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (file.bad()) return absl::DataLossError(absl::StrCat(path, ": cannot read the sentencepiece model"));
  return FromSerialized(bytes, path);
}

absl::StatusOr<std::unique_ptr<SentencePieceModel>> SentencePieceModel::FromSerialized(absl::string_view serialized,
                                                                                      absl::string_view source) {
  std::unique_ptr<SentencePieceModel> model(new SentencePieceModel());
  if (absl::Status status = model->Initialize(serialized, source); !status.ok()) return status;
  return model;
}

absl::Status SentencePieceModel::Initialize(absl::string_view serialized, absl::string_view source) {
  absl::StatusOr<ParsedModel> parsed = ParseSentencePieceModelProto(serialized, source);
  if (!parsed.ok()) return parsed.status();
  auto invalid = [&](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": invalid sentencepiece model: ", parts...));
  };
  const ParsedTrainerSpec& trainer = parsed->trainer;
  if (trainer.model_type != 1) {
    return invalid("trainer_spec.model_type is ", ModelTypeName(trainer.model_type), " (", trainer.model_type,
                   "); only UNIGRAM models are supported");
  }
  byte_fallback_ = trainer.byte_fallback;

  // The checks of sentencepiece's ModelInterface::InitializePieces, in its order.
  pieces_.reserve(parsed->pieces.size());
  for (ParsedPiece& parsed_piece : parsed->pieces) {
    pieces_.push_back(Piece{std::move(parsed_piece.text), parsed_piece.score, static_cast<PieceType>(parsed_piece.type)});
  }
  std::unordered_map<std::string_view, int> normal_ids, reserved_ids;
  std::vector<std::pair<std::string_view, int>> user_defined;
  std::vector<bool> byte_seen(256, false);
  for (int id = 0; id < static_cast<int>(pieces_.size()); ++id) {
    Piece& piece = pieces_[id];
    if (piece.text.empty()) return invalid("pieces[", id, "] is empty");
    const bool is_normal = piece.type == PieceType::kNormal || piece.type == PieceType::kUserDefined ||
                           piece.type == PieceType::kUnused;
    auto [existing, inserted] = (is_normal ? normal_ids : reserved_ids).emplace(piece.text, id);
    if (!inserted) return invalid("pieces[", id, "] \"", piece.text, "\" is already defined as pieces[", existing->second, "]");
    if (piece.type == PieceType::kUserDefined) user_defined.emplace_back(piece.text, id);
    if (piece.type == PieceType::kUnknown) {
      if (unknown_id_ >= 0) return invalid("pieces[", id, "] is a second unknown piece (pieces[", unknown_id_, "] is one)");
      unknown_id_ = id;
    }
    if (piece.type == PieceType::kByte) {
      if (!byte_fallback_) return invalid("byte piece pieces[", id, "] \"", piece.text, "\" although byte_fallback is false");
      piece.byte_value = BytePieceValue(piece.text);
      if (piece.byte_value < 0) return invalid("byte piece pieces[", id, "] \"", piece.text, "\" is not <0xNN>");
      byte_seen[piece.byte_value] = true;
      byte_ids_[piece.byte_value] = id;
    }
  }
  if (unknown_id_ < 0) return invalid("no piece has type UNKNOWN");
  if (byte_fallback_) {
    for (int byte = 0; byte < 256; ++byte) {
      if (!byte_seen[byte]) return invalid("byte_fallback is true but there is no byte piece ", BytePieceName(byte));
    }
  }
  if (normal_ids.empty()) return invalid("no normal pieces");

  min_score_ = FLT_MAX;
  max_score_ = FLT_MIN;  // sentencepiece's start value (the smallest positive float), kept for equal results
  for (const Piece& piece : pieces_) {
    if (piece.type != PieceType::kNormal) continue;
    min_score_ = std::min(min_score_, piece.score);
    max_score_ = std::max(max_score_, piece.score);
  }
  vocabulary_ = std::make_unique<PieceTrie>(
      std::vector<std::pair<std::string_view, int>>(normal_ids.begin(), normal_ids.end()));
  if (!user_defined.empty()) user_defined_ = std::make_unique<PieceTrie>(std::move(user_defined));
  for (const auto& [text, id] : reserved_ids) reserved_.emplace_back(std::string(text), id);
  std::sort(reserved_.begin(), reserved_.end());

  auto make_normalizer = [&](const ParsedNormalizerSpec& spec, const char* name, bool treat_whitespace_as_suffix,
                             const PieceTrie* verbatim) -> absl::StatusOr<std::unique_ptr<Normalizer>> {
    std::vector<uint32_t> units;
    std::string replacements;
    if (absl::Status status = Normalizer::DecodeCharsMap(
            spec.precompiled_charsmap, &units, &replacements,
            absl::StrCat(name, ".precompiled_charsmap at byte offset ", spec.charsmap_file_offset));
        !status.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": malformed sentencepiece model: ", status.message()));
    }
    return std::make_unique<Normalizer>(std::move(units), std::move(replacements), spec.add_dummy_prefix,
                                        spec.remove_extra_whitespaces, spec.escape_whitespaces,
                                        treat_whitespace_as_suffix, verbatim);
  };
  absl::StatusOr<std::unique_ptr<Normalizer>> normalizer =
      make_normalizer(parsed->normalizer, "normalizer_spec", trainer.treat_whitespace_as_suffix, user_defined_.get());
  if (!normalizer.ok()) return normalizer.status();
  normalizer_ = *std::move(normalizer);
  // sentencepiece denormalizes decoded text only with a charsmap, and then with no user-defined symbols.
  if (parsed->denormalizer.present && !parsed->denormalizer.precompiled_charsmap.empty()) {
    absl::StatusOr<std::unique_ptr<Normalizer>> denormalizer =
        make_normalizer(parsed->denormalizer, "denormalizer_spec", false, nullptr);
    if (!denormalizer.ok()) return denormalizer.status();
    denormalizer_ = *std::move(denormalizer);
  }
  add_dummy_prefix_ = parsed->normalizer.add_dummy_prefix;
  remove_extra_whitespaces_ = parsed->normalizer.remove_extra_whitespaces;

  // sentencepiece reads the surface as a C string.
  unk_surface_ = trainer.unk_surface.has_value() ? trainer.unk_surface->substr(0, trainer.unk_surface->find('\0'))
                                                 : std::string(kDefaultUnknownSurface);
  unk_piece_ = trainer.unk_piece.empty() ? "<unk>" : trainer.unk_piece;
  bos_piece_ = trainer.bos_piece.empty() ? "<s>" : trainer.bos_piece;
  eos_piece_ = trainer.eos_piece.empty() ? "</s>" : trainer.eos_piece;
  pad_piece_ = trainer.pad_piece.empty() ? "<pad>" : trainer.pad_piece;
  return absl::OkStatus();
}

std::string SentencePieceModel::Normalize(absl::string_view text) const { return normalizer_->Normalize(text); }

std::vector<int> SentencePieceModel::Encode(absl::string_view text) const {
  std::vector<int> ids;
  const std::string normalized = Normalize(text);
  if (normalized.empty()) return ids;

  // sentencepiece's optimized unigram Viterbi: the best path ending at each byte position. Its arithmetic
  // is kept exactly (piece candidates summed in double, the unknown's in float, both stored as float, the
  // first of equal candidates kept) so near-ties resolve as spm_encode resolves them.
  struct BestPath {
    int id = -1;
    float score = 0;
    int64_t starts_at = -1;  // -1: no path ends here yet
  };
  const size_t size = normalized.size();
  std::vector<BestPath> best(size + 1);
  const float unknown_score = min_score_ - kUnknownPenalty;
  const std::string_view text_view(normalized);
  for (size_t starts_at = 0; starts_at < size;) {
    const float score_till_here = best[starts_at].score;
    const size_t char_length = std::min(CharLength(normalized[starts_at]), size - starts_at);
    bool has_single_character = false;
    vocabulary_->ForEachPrefix(text_view.substr(starts_at), [&](size_t length, int id) {
      const Piece& piece = pieces_[id];
      if (piece.type == PieceType::kUnused) return;
      // User-defined symbols get a bonus that makes them win over any segmentation of their text.
      const double score = piece.type == PieceType::kUserDefined
                               ? static_cast<double>(static_cast<float>(length) * max_score_) - 0.1
                               : static_cast<double>(piece.score);
      const double candidate = score + static_cast<double>(score_till_here);
      BestPath& target = best[starts_at + length];
      if (target.starts_at < 0 || candidate > static_cast<double>(target.score)) {
        target.score = static_cast<float>(candidate);
        target.starts_at = static_cast<int64_t>(starts_at);
        target.id = id;
      }
      if (length == char_length) has_single_character = true;
    });
    if (!has_single_character) {
      BestPath& target = best[starts_at + char_length];
      const float candidate = unknown_score + score_till_here;
      if (target.starts_at < 0 || candidate > target.score) {
        target.score = candidate;
        target.starts_at = static_cast<int64_t>(starts_at);
        target.id = unknown_id_;
      }
    }
    starts_at += char_length;
  }

  struct Segment {
    size_t begin, end;
    int id;
  };
  std::vector<Segment> segments;
  for (size_t ends_at = size; ends_at > 0;) {
    const BestPath& node = best[ends_at];
    ZCHECK(node.starts_at >= 0 && static_cast<size_t>(node.starts_at) < ends_at);
    segments.push_back({static_cast<size_t>(node.starts_at), ends_at, node.id});
    ends_at = static_cast<size_t>(node.starts_at);
  }
  std::reverse(segments.begin(), segments.end());

  // Unknown characters: their UTF-8 bytes with byte_fallback, else one unknown id per run of them.
  ids.reserve(segments.size());
  bool previous_unknown = false;
  for (const Segment& segment : segments) {
    const bool unknown = pieces_[segment.id].type == PieceType::kUnknown;
    if (unknown && byte_fallback_) {
      for (size_t i = segment.begin; i < segment.end; ++i) ids.push_back(byte_ids_[static_cast<unsigned char>(normalized[i])]);
    } else if (!(unknown && previous_unknown)) {
      ids.push_back(segment.id);
    }
    previous_unknown = unknown;
  }
  return ids;
}

absl::StatusOr<std::string> SentencePieceModel::Decode(const std::vector<int>& ids) const {
  // sentencepiece decodes the pieces of the ids, looking their ids up again.
  std::vector<int> piece_ids;
  piece_ids.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= PieceSize()) {
      return absl::OutOfRangeError(
          absl::StrCat("id ", ids[i], " at position ", i, " is outside the vocabulary [0, ", PieceSize(), ")"));
    }
    piece_ids.push_back(PieceToId(pieces_[ids[i]].text));
  }

  std::string text;
  // Byte pieces [begin, end) become the UTF-8 characters they spell, each malformed byte U+FFFD.
  auto append_bytes = [&](size_t begin, size_t end) {
    std::string bytes;
    for (size_t i = begin; i < end; ++i) bytes.push_back(static_cast<char>(pieces_[piece_ids[i]].byte_value));
    for (size_t offset = 0; offset < bytes.size();) {
      const size_t length = ValidCharLength(absl::string_view(bytes).substr(offset));
      if (length == 0) {
        text.append(kReplacementCharacter.data(), kReplacementCharacter.size());
        ++offset;
      } else {
        text.append(bytes, offset, length);
        offset += length;
      }
    }
  };
  size_t byte_start = 0;
  bool at_start = true;        // no text yet, so a leading '▁' is the dummy prefix
  bool start_space_seen = false;
  for (size_t i = 0; i < piece_ids.size(); ++i) {
    const int id = piece_ids[i];
    const Piece& piece = pieces_[id];
    if (piece.type == PieceType::kByte) continue;
    append_bytes(byte_start, i);
    byte_start = i + 1;
    if (start_space_seen || !text.empty()) at_start = false;
    start_space_seen = false;
    if (piece.type == PieceType::kControl) continue;  // <s>, </s>: invisible
    if (piece.type == PieceType::kUnknown) {
      text += pieces_[ids[i]].text == piece.text ? unk_surface_ : pieces_[ids[i]].text;
      continue;
    }
    absl::string_view surface = pieces_[ids[i]].text;
    if (at_start && (add_dummy_prefix_ || remove_extra_whitespaces_)) {
      start_space_seen = absl::ConsumePrefix(&surface, kSpaceSymbol);
      // With extra whitespace removed, every leading space of the text goes, not only the first.
      if (remove_extra_whitespaces_) start_space_seen = false;
    }
    while (!surface.empty()) {
      if (absl::ConsumePrefix(&surface, kSpaceSymbol)) {
        text.push_back(' ');
      } else {
        text.push_back(surface.front());
        surface.remove_prefix(1);
      }
    }
  }
  append_bytes(byte_start, piece_ids.size());
  if (denormalizer_ != nullptr) text = denormalizer_->Normalize(text);
  return text;
}

int SentencePieceModel::PieceSize() const { return static_cast<int>(pieces_.size()); }

int SentencePieceModel::PieceToId(absl::string_view piece) const {
  const std::string_view key(piece.data(), piece.size());
  const auto found = std::lower_bound(reserved_.begin(), reserved_.end(), key,
                                      [](const std::pair<std::string, int>& entry, std::string_view wanted) {
                                        return std::string_view(entry.first) < wanted;
                                      });
  if (found != reserved_.end() && found->first == key) return found->second;
  const int id = vocabulary_->Find(key);
  return id >= 0 ? id : unknown_id_;
}

bool SentencePieceModel::IsType(int id, PieceType type) const {
  return id >= 0 && id < PieceSize() && pieces_[id].type == type;
}

int SentencePieceModel::SpecialId(const std::string& name, PieceType type) const {
  const int id = PieceToId(name);
  return IsType(id, type) ? id : -1;
}

int SentencePieceModel::PadId() const { return SpecialId(pad_piece_, PieceType::kControl); }
int SentencePieceModel::EosId() const { return SpecialId(eos_piece_, PieceType::kControl); }
int SentencePieceModel::BosId() const { return SpecialId(bos_piece_, PieceType::kControl); }
int SentencePieceModel::UnkId() const { return SpecialId(unk_piece_, PieceType::kUnknown); }

std::string SentencePieceModel::IdToPiece(int id) const {
  return id >= 0 && id < PieceSize() ? pieces_[id].text : std::string();
}

}  // namespace zoetrope::internal
