// Parsing and validation of SubmitJobRequest: every rule of the API, each failure an INVALID_ARGUMENT
// whose message starts with the field name and states the rule ("width: must be a multiple of 16 (got
// 100)"). Validation is a pure function: it changes no state.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/generation_rules.h"
#include "google/protobuf/message.h"
#include "zoetrope/v1/video_service.pb.h"

namespace zoetrope::server {

// Limits of the API (documented in video_service.proto). The shape, steps, guidance and shift limits
// narrow the engine's (common/generation_rules.h), which also supplies the rules themselves.
inline constexpr int kMaxPromptCharacters = 2000;
inline constexpr int kMinPixels = 16;
inline constexpr int kMaxPixels = 2048;
inline constexpr int kMaxFrames = 257;
inline constexpr int kMaxFps = 120;
inline constexpr int kMaxSteps = 200;
inline constexpr double kMaxGuidance = 30.0;
inline constexpr double kMaxShift = 100.0;
inline constexpr int64_t kMaxDeadlineSeconds = 7 * 24 * 3600;
inline constexpr int kMaxClientRequestIdLength = 128;
inline constexpr int kMaxModelNameLength = 128;
inline constexpr int kMaxAttentionPlanBytes = 65536;

// Defaults of fields left at 0 / unspecified.
inline constexpr int kDefaultWidth = 832;
inline constexpr int kDefaultHeight = 480;
inline constexpr int kDefaultFrames = 81;
inline constexpr int kDefaultFps = 16;
inline constexpr int kDefaultSteps = 50;
inline constexpr double kDefaultGuidance = 5.0;
inline constexpr double kDefaultShift = 5.0;

struct ValidationContext {
  // The model used when the request names none.
  std::string default_model;
  // True for a model the server serves (configured or announced by a worker).
  std::function<bool(const std::string&)> is_known_model;
  // Describes the known models for the error message ("tiny, wan2.1-t2v-1.3b").
  std::function<std::string()> known_models;
  // False while no worker is connected and no model is configured (say right after a restart): a model
  // no one has announced may still arrive, so an unknown model is UNAVAILABLE (retry), not INVALID_ARGUMENT.
  bool workers_connected = true;
  // Largest latent token count accepted (F_latent · H/16 · W/16).
  int64_t max_tokens = 0;
};

// Parses a serialized request of any VideoService method into `message`. A text field holding bytes that are
// not UTF-8 gives INVALID_ARGUMENT naming the field; any other malformed input gives INVALID_ARGUMENT
// "request: not a valid <message type> message". gRPC's own parse would answer with no field named (and,
// on the callback API, not even INVALID_ARGUMENT), so every method parses its raw bytes through this.
absl::Status ParseRequest(const std::string& bytes, google::protobuf::Message& message);

// Parses a serialized SubmitJobRequest. Unlike protobuf's own parser, a text field holding bytes that
// are not UTF-8 gives INVALID_ARGUMENT naming the field (protobuf would fail the whole parse with no
// field named, which gRPC reports as INTERNAL).
absl::StatusOr<zoetrope::v1::SubmitJobRequest> ParseSubmitJobRequest(const std::string& bytes);

// True when `text` is well-formed UTF-8 (no overlongs, surrogates or code points above U+10FFFF);
// otherwise `error_offset` (may be null) receives the offset of the first bad byte.
bool IsValidUtf8(absl::string_view text, size_t* error_offset = nullptr);

// Latent tokens of a video: ((frames − 1)/4 + 1) · (height/16) · (width/16).
int64_t LatentTokens(int64_t width, int64_t height, int64_t frames);

// The engine's limits narrowed by this API's (kMaxPixels, kMaxFrames, kMaxSteps, kMaxGuidance, kMaxShift)
// and `max_tokens` (0: none): what ValidateAndResolve passes to CheckGenerationRules.
GenerationLimits ServiceLimits(int64_t max_tokens);

// The idempotency fingerprint of a request as the client sent it: protobuf's deterministic serialization
// (map entries sorted by key), so the same request always gives the same bytes, whatever the order in
// which a map was filled or the process that serialized it.
std::string DeterministicFingerprint(const zoetrope::v1::SubmitJobRequest& request);

// Checks every rule and returns the request with defaults filled in (model, sizes, steps, guidance,
// shift, sampler, priority, output format).
absl::StatusOr<zoetrope::v1::SubmitJobRequest> ValidateAndResolve(const zoetrope::v1::SubmitJobRequest& request,
                                                                  const ValidationContext& context);

}  // namespace zoetrope::server
