// Prompt embeddings, encoded once: an LRU cache keyed by the cleaned prompt text, and PromptEncoder,
// which puts cleaning, tokenization, the umT5 encoder and the cache together.
//
// A service sees the same prompts again and again: the default negative prompt on every request with
// CFG, and resubmitted prompts. umT5-XXL costs ~5.7 GFLOP per token, so a hit saves real time. The key is
// the *cleaned* text (CleanPrompt), so prompts that differ only in whitespace, entities, full-width forms
// or curly quotes share one entry, exactly as they share one embedding.
#pragma once

#include <cstdint>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/tensor.h"
#include "worker/engine/text_tokenizer.h"
#include "worker/engine/umt5_encoder.h"

namespace zoetrope {

// Thread-safe. Entries are Tensor handles shared with the callers: an embedding handed out must not
// be modified in place (the DiT only reads it).
class PromptCache {
 public:
  // `capacity` entries; 0 disables caching (every lookup misses, nothing is stored).
  explicit PromptCache(size_t capacity);

  // The cached embedding of `cleaned_text`, made the most recently used; counts a hit or a miss.
  std::optional<Tensor> Find(const std::string& cleaned_text);
  // Stores (or replaces) the entry, evicting the least recently used one beyond capacity.
  void Insert(const std::string& cleaned_text, Tensor embedding);
  void Clear();

  size_t capacity() const { return capacity_; }
  size_t size() const;
  int64_t hits() const;
  int64_t misses() const;
  int64_t evictions() const;

 private:
  using Entry = std::pair<std::string, Tensor>;
  const size_t capacity_;
  mutable std::mutex mutex_;
  std::list<Entry> entries_;  // most recently used first
  std::unordered_map<std::string, std::list<Entry>::iterator> index_;
  int64_t hits_ = 0, misses_ = 0, evictions_ = 0;
};

// Not thread-safe (the encoder is not): one per device thread, like the encoder it drives.
class PromptEncoder {
 public:
  // Both must outlive this object.
  PromptEncoder(const TextTokenizer& tokenizer, Umt5Encoder& encoder, size_t cache_capacity = 32);

  // F32 [L, model_dim] on the encoder's device, L = real tokens incl. EOS (≤ the tokenizer's
  // max_length). InvalidArgument for text that is not valid UTF-8 or ids outside the encoder's vocab.
  absl::StatusOr<Tensor> Encode(absl::string_view prompt);
  // The unconditional side of CFG: an empty negative prompt means Wan's default negative prompt (spec §0
  // step 1; Wan tests `n_prompt == ""`, so a whitespace-only one is encoded as it is: just the EOS).
  absl::StatusOr<Tensor> EncodeNegative(absl::string_view negative_prompt);

  PromptCache& cache() { return cache_; }

 private:
  const TextTokenizer& tokenizer_;
  Umt5Encoder& encoder_;
  PromptCache cache_;
};

}  // namespace zoetrope
