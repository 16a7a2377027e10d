#include "worker/engine/prompt_cache.h"

#include "worker/engine/prompt_clean.h"

namespace zoetrope {

PromptCache::PromptCache(size_t capacity) : capacity_(capacity) {}

std::optional<Tensor> PromptCache::Find(const std::string& cleaned_text) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto found = index_.find(cleaned_text);
  if (found == index_.end()) {
    ++misses_;
    return std::nullopt;
  }
  ++hits_;
  entries_.splice(entries_.begin(), entries_, found->second);
  return found->second->second;
}

void PromptCache::Insert(const std::string& cleaned_text, Tensor embedding) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (capacity_ == 0) return;
  if (auto found = index_.find(cleaned_text); found != index_.end()) {
    found->second->second = std::move(embedding);
    entries_.splice(entries_.begin(), entries_, found->second);
    return;
  }
  entries_.emplace_front(cleaned_text, std::move(embedding));
  index_[cleaned_text] = entries_.begin();
  while (entries_.size() > capacity_) {
    index_.erase(entries_.back().first);
    entries_.pop_back();
    ++evictions_;
  }
}

void PromptCache::Clear() {
  std::lock_guard<std::mutex> lock(mutex_);
  index_.clear();
  entries_.clear();
}

size_t PromptCache::size() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return entries_.size();
}

int64_t PromptCache::hits() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return hits_;
}

int64_t PromptCache::misses() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return misses_;
}

int64_t PromptCache::evictions() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return evictions_;
}

PromptEncoder::PromptEncoder(const TextTokenizer& tokenizer, Umt5Encoder& encoder, size_t cache_capacity)
    : tokenizer_(tokenizer), encoder_(encoder), cache_(cache_capacity) {}

absl::StatusOr<Tensor> PromptEncoder::Encode(absl::string_view prompt) {
  absl::StatusOr<std::string> cleaned = CleanPrompt(prompt);
  if (!cleaned.ok()) return cleaned.status();
  if (std::optional<Tensor> cached = cache_.Find(*cleaned); cached.has_value()) return *std::move(cached);
  absl::StatusOr<TokenizedPrompt> tokens = tokenizer_.TokenizeCleaned(*cleaned);
  if (!tokens.ok()) return tokens.status();
  absl::StatusOr<Tensor> embedding = encoder_.Encode(*tokens);
  if (!embedding.ok()) return embedding.status();
  cache_.Insert(*cleaned, *embedding);
  return embedding;
}

absl::StatusOr<Tensor> PromptEncoder::EncodeNegative(absl::string_view negative_prompt) {
  return Encode(negative_prompt.empty() ? absl::string_view(kWanDefaultNegativePrompt) : negative_prompt);
}

}  // namespace zoetrope
