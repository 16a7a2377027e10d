#include "worker/engine/text_tokenizer.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/prompt_clean.h"
#include "worker/engine/sentencepiece_model.h"

namespace zoetrope {
namespace {

// Where a checkpoint keeps the model: the file itself, or one of these inside a directory.
absl::StatusOr<std::string> ResolveModelPath(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code error;
  if (fs::is_regular_file(path, error)) return path;
  if (!fs::is_directory(path, error)) return absl::NotFoundError(absl::StrCat(path, ": no such tokenizer model"));
  std::vector<std::string> tried;
  for (const char* relative : {"spiece.model", "google/umt5-xxl/spiece.model", "tokenizer/spiece.model"}) {
    const fs::path candidate = fs::path(path) / relative;
    if (fs::is_regular_file(candidate, error)) return candidate.string();
    tried.push_back(candidate.string());
  }
  return absl::NotFoundError(absl::StrCat(path, ": no sentencepiece model in the directory (tried ",
                                          absl::StrJoin(tried, ", "), ")"));
}

}  // namespace

TextTokenizer::TextTokenizer(std::string model_path, TokenizerOptions options,
                             std::unique_ptr<internal::SentencePieceModel> model)
    : model_path_(std::move(model_path)), options_(options), model_(std::move(model)) {}

TextTokenizer::~TextTokenizer() = default;

absl::StatusOr<std::unique_ptr<TextTokenizer>> TextTokenizer::Load(const std::string& path, TokenizerOptions options) {
  if (options.max_length < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer max_length must be ≥ 1 (room for the EOS), got ", options.max_length));
  }
  absl::StatusOr<std::string> model_path = ResolveModelPath(path);
  if (!model_path.ok()) return model_path.status();
  absl::StatusOr<std::unique_ptr<internal::SentencePieceModel>> loaded = internal::SentencePieceModel::Load(*model_path);
  if (!loaded.ok()) return loaded.status();  // names the file
  std::unique_ptr<internal::SentencePieceModel> model = *std::move(loaded);
  // umT5's conventions are baked into the encoder's training: EOS must be id 1 and padding id 0.
  if (model->EosId() != kEosId) {
    return absl::InvalidArgumentError(absl::StrCat(*model_path, ": EOS id is ", model->EosId(), ", expected ", kEosId,
                                                   " (umT5 convention; train with --eos_id=1)"));
  }
  if (model->PadId() != kPadId && model->PadId() != -1) {
    return absl::InvalidArgumentError(absl::StrCat(*model_path, ": pad id is ", model->PadId(), ", expected ", kPadId,
                                                   " (umT5 convention; train with --pad_id=0)"));
  }
  return std::unique_ptr<TextTokenizer>(new TextTokenizer(*std::move(model_path), options, std::move(model)));
}

absl::StatusOr<TokenizedPrompt> TextTokenizer::Tokenize(absl::string_view prompt) const {
  absl::StatusOr<std::string> cleaned = CleanPrompt(prompt);
  if (!cleaned.ok()) return cleaned.status();
  return TokenizeCleaned(*cleaned);
}

absl::StatusOr<std::vector<int32_t>> TextTokenizer::EncodeContent(const std::string& cleaned_text) const {
  const std::vector<int> ids = model_->Encode(cleaned_text);
  return std::vector<int32_t>(ids.begin(), ids.end());
}

absl::StatusOr<TokenizedPrompt> TextTokenizer::TokenizeCleaned(const std::string& cleaned_text) const {
  absl::StatusOr<std::vector<int32_t>> content = EncodeContent(cleaned_text);
  if (!content.ok()) return content.status();
  const auto max_length = static_cast<size_t>(options_.max_length);
  TokenizedPrompt prompt;
  prompt.cleaned_text = cleaned_text;
  prompt.truncated = content->size() > max_length - 1;
  if (prompt.truncated) content->resize(max_length - 1);  // HF truncation keeps the head
  prompt.ids = std::move(*content);
  prompt.ids.push_back(kEosId);
  prompt.length = static_cast<int64_t>(prompt.ids.size());
  prompt.attention_mask.assign(prompt.ids.size(), 1);
  prompt.ids.resize(max_length, kPadId);
  prompt.attention_mask.resize(max_length, 0);
  return prompt;
}

absl::StatusOr<std::string> TextTokenizer::Decode(const std::vector<int32_t>& ids) const {
  absl::StatusOr<std::string> text = model_->Decode(std::vector<int>(ids.begin(), ids.end()));
  if (!text.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(model_path_, ": cannot decode ids: ", text.status().message()));
  }
  return text;
}

int64_t TextTokenizer::vocab_size() const { return model_->PieceSize(); }
int32_t TextTokenizer::unknown_id() const { return model_->UnkId(); }
std::string TextTokenizer::IdToPiece(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return absl::StrCat("<id ", id, " out of range>");
  return model_->IdToPiece(id);
}

}  // namespace zoetrope
