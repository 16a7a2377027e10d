#include "server/request_validation.h"

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/unknown_field_set.h"
#include "parallel/sparsity_plan.h"

namespace zoetrope::server {
namespace {

namespace v1 = zoetrope::v1;

absl::Status Invalid(absl::string_view field, absl::string_view rule) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", rule));
}

// True for a code point with the Unicode White_Space property (PropList.txt): a prompt of nothing else
// (say U+3000 IDEOGRAPHIC SPACE pasted from a CJK keyboard) is as empty as one of ASCII spaces.
bool IsUnicodeWhiteSpace(uint32_t code_point) {
  switch (code_point) {
    case 0x0009: case 0x000A: case 0x000B: case 0x000C: case 0x000D: case 0x0020: case 0x0085: case 0x00A0:
    case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return code_point >= 0x2000 && code_point <= 0x200A;
  }
}

// True when valid UTF-8 `text` holds only White_Space code points (or nothing).
bool IsOnlyWhiteSpace(absl::string_view text) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
  size_t i = 0;
  while (i < text.size()) {
    const unsigned char lead = bytes[i];
    const int length = lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
    uint32_t code_point = length == 1 ? lead : lead & (0x7F >> length);
    for (int k = 1; k < length && i + k < text.size(); ++k) code_point = (code_point << 6) | (bytes[i + k] & 0x3F);
    if (!IsUnicodeWhiteSpace(code_point)) return false;
    i += length;
  }
  return true;
}

// Number of code points of valid UTF-8.
int64_t CodePoints(absl::string_view text) {
  int64_t count = 0;
  for (unsigned char byte : text) count += (byte & 0xC0) != 0x80;
  return count;
}

absl::Status CheckText(absl::string_view field, const std::string& text, bool required) {
  size_t offset = 0;
  if (!IsValidUtf8(text, &offset)) {
    return Invalid(field, absl::StrCat("must be valid UTF-8 (invalid byte at offset ", offset, ")"));
  }
  const int64_t characters = CodePoints(text);
  if (characters > kMaxPromptCharacters) {
    return Invalid(field, absl::StrCat("must be at most ", kMaxPromptCharacters, " characters (got ", characters, ")"));
  }
  // Checked after the UTF-8 check, so the decoding in IsOnlyWhiteSpace sees well-formed text.
  if (required && IsOnlyWhiteSpace(text)) {
    return Invalid(field, "is required and must not be only whitespace");
  }
  for (unsigned char byte : text) {
    if (byte == 0) return Invalid(field, "must not contain NUL characters");
  }
  return absl::OkStatus();
}

}  // namespace

bool IsValidUtf8(absl::string_view text, size_t* error_offset) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
  const size_t size = text.size();
  size_t i = 0;
  while (i < size) {
    const unsigned char lead = bytes[i];
    int length = 0;
    uint32_t code_point = 0;
    if (lead < 0x80) {
      ++i;
      continue;
    } else if (lead >= 0xC2 && lead <= 0xDF) {
      length = 2;
      code_point = lead & 0x1F;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
      length = 3;
      code_point = lead & 0x0F;
    } else if (lead >= 0xF0 && lead <= 0xF4) {
      length = 4;
      code_point = lead & 0x07;
    } else {
      if (error_offset != nullptr) *error_offset = i;
      return false;
    }
    if (i + length > size) {
      if (error_offset != nullptr) *error_offset = i;
      return false;
    }
    for (int k = 1; k < length; ++k) {
      if ((bytes[i + k] & 0xC0) != 0x80) {
        if (error_offset != nullptr) *error_offset = i;
        return false;
      }
      code_point = (code_point << 6) | (bytes[i + k] & 0x3F);
    }
    const bool overlong = (length == 3 && code_point < 0x800) || (length == 4 && code_point < 0x10000);
    const bool surrogate = code_point >= 0xD800 && code_point <= 0xDFFF;
    if (overlong || surrogate || code_point > 0x10FFFF) {
      if (error_offset != nullptr) *error_offset = i;
      return false;
    }
    i += length;
  }
  return true;
}

absl::Status ParseRequest(const std::string& bytes, google::protobuf::Message& message) {
  if (message.ParseFromString(bytes)) return absl::OkStatus();
  // Find out why: protobuf rejects text fields that are not UTF-8 without saying which one.
  google::protobuf::UnknownFieldSet fields;
  if (fields.ParseFromString(bytes)) {
    const google::protobuf::Descriptor* descriptor = message.GetDescriptor();
    for (int i = 0; i < fields.field_count(); ++i) {
      const google::protobuf::UnknownField& field = fields.field(i);
      if (field.type() != google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED) continue;
      const google::protobuf::FieldDescriptor* known = descriptor->FindFieldByNumber(field.number());
      if (known == nullptr || known->type() != google::protobuf::FieldDescriptor::TYPE_STRING) continue;
      size_t offset = 0;
      if (!IsValidUtf8(field.length_delimited(), &offset)) {
        return Invalid(known->name(), absl::StrCat("must be valid UTF-8 (invalid byte at offset ", offset, ")"));
      }
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("request: not a valid ", message.GetDescriptor()->full_name(), " message"));
}

absl::StatusOr<v1::SubmitJobRequest> ParseSubmitJobRequest(const std::string& bytes) {
  v1::SubmitJobRequest request;
  if (absl::Status status = ParseRequest(bytes, request); !status.ok()) return status;
  return request;
}

int64_t LatentTokens(int64_t width, int64_t height, int64_t frames) { return LatentTokenCount(width, height, frames); }

GenerationLimits ServiceLimits(int64_t max_tokens) {
  GenerationLimits limits;
  limits.max_pixels = kMaxPixels;
  limits.max_frames = kMaxFrames;
  limits.max_steps = kMaxSteps;
  limits.max_guidance = kMaxGuidance;
  limits.max_shift = kMaxShift;
  limits.max_tokens = max_tokens;
  return EffectiveLimits(limits);
}

absl::StatusOr<v1::SubmitJobRequest> ValidateAndResolve(const v1::SubmitJobRequest& request,
                                                        const ValidationContext& context) {
  v1::SubmitJobRequest resolved = request;

  // model
  if (request.model().size() > static_cast<size_t>(kMaxModelNameLength)) {
    return Invalid("model", absl::StrCat("must be at most ", kMaxModelNameLength, " characters"));
  }
  if (!IsValidUtf8(request.model())) return Invalid("model", "must be valid UTF-8");
  if (request.model().empty()) {
    if (context.default_model.empty()) {
      return Invalid("model", absl::StrCat("is required: this server has no default model (known: ",
                                           context.known_models ? context.known_models() : "", ")"));
    }
    resolved.set_model(context.default_model);
  } else if (context.is_known_model && !context.is_known_model(request.model())) {
    if (!context.workers_connected) {
      return absl::UnavailableError(absl::StrCat("model: \"", request.model(),
                                                 "\" is not known yet and no worker is connected: retry later "
                                                 "(known: ", context.known_models ? context.known_models() : "",
                                                 ")"));
    }
    return Invalid("model", absl::StrCat("unknown model \"", request.model(), "\" (known: ",
                                         context.known_models ? context.known_models() : "", ")"));
  }

  // prompt, negative_prompt
  if (absl::Status status = CheckText("prompt", request.prompt(), /*required=*/true); !status.ok()) return status;
  if (absl::Status status = CheckText("negative_prompt", request.negative_prompt(), /*required=*/false);
      !status.ok()) {
    return status;
  }

  // width, height, frames, fps, steps, guidance, shift: 0 takes the default; anything else must satisfy
  // the engine's rules under this service's limits (common/generation_rules.h: one set of rules, so a job
  // accepted here is never one the engine refuses).
  if (request.width() == 0) resolved.set_width(kDefaultWidth);
  if (request.height() == 0) resolved.set_height(kDefaultHeight);
  if (request.frames() == 0) resolved.set_frames(kDefaultFrames);
  if (request.fps() == 0) resolved.set_fps(kDefaultFps);
  if (request.steps() == 0) resolved.set_steps(kDefaultSteps);
  if (request.guidance() == 0.0) resolved.set_guidance(kDefaultGuidance);
  if (request.shift() == 0.0) resolved.set_shift(kDefaultShift);
  GenerationShape shape;
  shape.width = resolved.width();
  shape.height = resolved.height();
  shape.frames = resolved.frames();
  shape.steps = resolved.steps();
  shape.guidance = resolved.guidance();
  shape.shift = resolved.shift();
  if (absl::Status status = CheckGenerationRules(shape, ServiceLimits(context.max_tokens)); !status.ok()) {
    return status;
  }
  if (resolved.fps() < 1 || resolved.fps() > kMaxFps) {
    return Invalid("fps", absl::StrCat("must be in [1, ", kMaxFps, "] (got ", resolved.fps(), ")"));
  }

  // sampler, priority, output_format: known enum values.
  if (!v1::Sampler_IsValid(request.sampler())) {
    return Invalid("sampler", absl::StrCat("unknown value ", request.sampler(),
                                           " (SAMPLER_UNIPC, SAMPLER_DPMPP_2M or SAMPLER_EULER)"));
  }
  if (request.sampler() == v1::SAMPLER_UNSPECIFIED) resolved.set_sampler(v1::SAMPLER_UNIPC);
  if (!v1::Priority_IsValid(request.priority())) {
    return Invalid("priority", absl::StrCat("unknown value ", request.priority(),
                                            " (PRIORITY_LOW, PRIORITY_NORMAL or PRIORITY_HIGH)"));
  }
  if (request.priority() == v1::PRIORITY_UNSPECIFIED) resolved.set_priority(v1::PRIORITY_NORMAL);
  if (!v1::OutputFormat_IsValid(request.output_format())) {
    return Invalid("output_format", absl::StrCat("unknown value ", request.output_format(),
                                                 " (OUTPUT_FORMAT_MP4 or OUTPUT_FORMAT_RAW_SAFETENSORS)"));
  }
  // Echo the effective format, as for the other enums: a client reading Job.request learns what it gets.
  if (request.output_format() == v1::OUTPUT_FORMAT_UNSPECIFIED) resolved.set_output_format(v1::OUTPUT_FORMAT_MP4);

  // deadline
  if (request.has_deadline()) {
    const int64_t seconds = request.deadline().seconds();
    const int32_t nanos = request.deadline().nanos();
    if (nanos < 0 || nanos > 999'999'999) {
      return Invalid("deadline", absl::StrCat("nanos must be in [0, 999999999] (got ", nanos, ")"));
    }
    if (seconds < 0 || (seconds == 0 && nanos == 0) || seconds > kMaxDeadlineSeconds ||
        (seconds == kMaxDeadlineSeconds && nanos > 0)) {
      return Invalid("deadline", absl::StrCat("must be in (0, 7 days] (got ", seconds, " s ", nanos, " ns)"));
    }
  }

  // attention: a preset or plan text. Block and head ranges depend on the model, which only the worker
  // knows in full: it checks them; everything else is checked here, before the job is accepted.
  const std::string& attention = request.attention();
  if (attention.size() > static_cast<size_t>(kMaxAttentionPlanBytes)) {
    return Invalid("attention", absl::StrCat("must be a preset name or a plan of at most ", kMaxAttentionPlanBytes,
                                             " bytes (got ", attention.size(), ")"));
  }
  if (!attention.empty()) {
    absl::StatusOr<SparsityPlan> plan = SparsityPlanFromPresetOrText(attention, "attention");
    absl::Status valid = plan.ok() ? plan->Validate(std::numeric_limits<int>::max(), std::numeric_limits<int>::max(),
                                                    resolved.steps())
                                   : plan.status();
    // Plan errors already start with their source, "attention".
    if (!valid.ok()) return absl::InvalidArgumentError(valid.message());
  }

  // preview_every: 0 = no previews (docs/previews.md); more than `steps` would never send one.
  if (request.preview_every() < 0 || request.preview_every() > resolved.steps()) {
    return Invalid("preview_every", absl::StrCat("must be in [0, steps = ", resolved.steps(), "] (got ",
                                                 request.preview_every(), ")"));
  }

  // client_request_id
  const std::string& key = request.client_request_id();
  if (key.size() > static_cast<size_t>(kMaxClientRequestIdLength)) {
    return Invalid("client_request_id",
                   absl::StrCat("must be at most ", kMaxClientRequestIdLength, " characters (got ", key.size(), ")"));
  }
  for (unsigned char byte : key) {
    if (byte < 0x21 || byte > 0x7E) {
      return Invalid("client_request_id", "must be printable ASCII without spaces");
    }
  }
  return resolved;
}

std::string DeterministicFingerprint(const v1::SubmitJobRequest& request) {
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream stream(&bytes);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    request.SerializePartialToCodedStream(&coded);
  }
  return bytes;
}

}  // namespace zoetrope::server
