// The umT5-XXL text encoder of Wan2.1 (spec/wan21.md §6.2), written once over the Backend interface.
//
//   x = Emb[ids]                                    (no √d scaling)
//   per layer: h = RMS(x; norm1); q, k, v = h·Wᵀ;  s = q·kᵀ + bias  (NO 1/√d; bias = the layer's own
//              relative-position table at bucket(j − i), the lowest float where key j is padding);
//              x += softmax(s)·v·Woᵀ;  h = RMS(x; norm2);  x += ((h·W_fc1ᵀ) ⊙ GELU_tanh(h·W_gateᵀ))·W_fc2ᵀ
//   x = RMS(x; norm);  return x[0:L]                (L = real tokens incl. EOS)
//
// Precision: matmul weights and the activations between them are in the backend's compute dtype
// (CPU F32, CUDA BF16, as the reference's bf16 encoder); the residual stream, the norms and the
// attention logits / softmax stay F32 (the reference keeps its residual in bf16; F32 is closer to the
// exact result).
//
// Padding. The reference runs all 512 positions with a key mask and keeps the first L rows. Rows do
// not interact except through attention, and padded keys get weight exactly 0 (exp of the lowest
// float), so the first L rows do not depend on the padded positions at all: kRealTokensOnly (the
// default) runs only the L real tokens and returns the same values (up to summation order) for a
// fraction of the work; kPadded runs every position with the mask, as the reference does.
//
// Not thread-safe (one encoder per device thread), like WanDit.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "worker/engine/text_tokenizer.h"
#include "worker/engine/umt5_weights.h"

namespace zoetrope {

enum class PaddingMode { kRealTokensOnly, kPadded };

class Umt5Encoder {
 public:
  // Loads a checkpoint (a .safetensors file, an index.json, or a directory holding either; Wan or HF
  // names). The config is the preset `config_name` when given (every shape is checked against it), else
  // inferred from the tensor shapes (InferUmt5Config).
  static absl::StatusOr<std::unique_ptr<Umt5Encoder>> Load(const std::string& weights_path, Backend& backend,
                                                           const std::string& config_name = "");
  Umt5Encoder(Umt5Config config, Umt5Weights weights, Backend& backend);

  const Umt5Config& config() const { return config_; }
  Backend& backend() const { return backend_; }

  // `ids`: the padded sequence (length P ≥ `length`), of which the first `length` ≥ 1 are real tokens
  // (attention mask 1) and the rest padding. Every id must be in [0, vocab_size): an id outside is an
  // InvalidArgument naming it (a tokenizer that does not belong to these weights).
  // Returns F32 [length, model_dim] on the backend's device: the final hidden states of the real tokens.
  absl::StatusOr<Tensor> Encode(const std::vector<int32_t>& ids, int64_t length,
                                PaddingMode mode = PaddingMode::kRealTokensOnly);
  absl::StatusOr<Tensor> Encode(const TokenizedPrompt& prompt, PaddingMode mode = PaddingMode::kRealTokensOnly) {
    return Encode(prompt.ids, prompt.length, mode);
  }

 private:
  // I32 [H · N · N] on the device: row of the flattened bias table for (head, query, key), the
  // sentinel row for keys at or after `real_keys`.
  Tensor BiasRows(int64_t positions, int64_t real_keys);

  Umt5Config config_;
  Umt5Weights weights_;
  Backend& backend_;
};

}  // namespace zoetrope
