// The umT5 tokenizer (spec/wan21.md §6.3): prompt cleaning (§6.4, prompt_clean.h), then the
// sentencepiece model, with the conventions of Wan's call into the HF tokenizer
// (`padding='max_length', truncation=True, max_length=512, add_special_tokens=True`):
//
//   ids  = EncodeAsIds(clean(text))[:max_length − 1] + [EOS = 1], then PAD = 0 up to max_length
//   mask = 1 for the content tokens and the EOS, 0 for the padding
//
// No BOS. The model is the real `spiece.model` of google/umt5-xxl (in Wan's checkpoint directory at
// google/umt5-xxl/spiece.model, in the diffusers layout at tokenizer/spiece.model) or the small
// deterministic stand-in that scripts/build-tokenizer.sh trains for tests and the quick start.
// Raw sentencepiece is expected to match the HF fast tokenizer for ordinary text; that is not verified
// (spec U-2).
//
// Thread-safe after Load (sentencepiece encoding is const).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace zoetrope {

namespace internal {
class SentencePieceModel;
}

// Wan's default negative prompt (spec §4.1), used whenever the negative prompt is empty.
inline constexpr char kWanDefaultNegativePrompt[] =
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，"
    "JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，"
    "手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走";

struct TokenizerOptions {
  // Positions per prompt, EOS included (Wan: 512 = the DiT's text_len).
  int64_t max_length = 512;
};

struct TokenizedPrompt {
  std::string cleaned_text;             // what was encoded (the prompt cache's key)
  std::vector<int32_t> ids;             // max_length ids: content, EOS, then PAD
  std::vector<int32_t> attention_mask;  // max_length entries: 1 for content and EOS, 0 for padding
  int64_t length = 0;                   // real tokens, EOS included: 1 ≤ length ≤ max_length
  bool truncated = false;               // content was cut to max_length − 1 tokens
};

class TextTokenizer {
 public:
  static constexpr int32_t kPadId = 0;
  static constexpr int32_t kEosId = 1;

  // `path`: a spiece.model file, or a directory holding spiece.model directly, in google/umt5-xxl/ or in
  // tokenizer/. The model must use pad id 0 (or none) and EOS id 1, as umT5 does; errors name the file.
  static absl::StatusOr<std::unique_ptr<TextTokenizer>> Load(const std::string& path, TokenizerOptions options = {});
  ~TextTokenizer();

  // Cleans (CleanPrompt) and tokenizes. InvalidArgument for text that is not valid UTF-8.
  absl::StatusOr<TokenizedPrompt> Tokenize(absl::string_view prompt) const;
  // Tokenizes text that CleanPrompt already produced (no second cleaning).
  absl::StatusOr<TokenizedPrompt> TokenizeCleaned(const std::string& cleaned_text) const;

  // Content ids only (no EOS, no truncation, no padding) and their decoding, for tests and tools.
  absl::StatusOr<std::vector<int32_t>> EncodeContent(const std::string& cleaned_text) const;
  absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids) const;

  const std::string& model_path() const { return model_path_; }
  const TokenizerOptions& options() const { return options_; }
  // Pieces in the model (ids are in [0, vocab_size)).
  int64_t vocab_size() const;
  int32_t unknown_id() const;
  std::string IdToPiece(int32_t id) const;

 private:
  TextTokenizer(std::string model_path, TokenizerOptions options, std::unique_ptr<internal::SentencePieceModel> model);

  std::string model_path_;
  TokenizerOptions options_;
  std::unique_ptr<internal::SentencePieceModel> model_;
};

}  // namespace zoetrope
