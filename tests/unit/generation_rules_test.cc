// One set of request rules (issue 12, item 3) and the largest accepted request (item 2):
//   - the engine's limits at their boundaries, each field named when broken;
//   - the scheduler's ValidateAndResolve accepts nothing the engine's ValidateGenerationParameters rejects
//     (a seeded sweep over both sides' ranges), and rejects with the same field when the engine does;
//   - the largest request the API accepts in every dimension passes validation on both sides, the next
//     larger one is refused naming the field, and its peak-memory estimate is what admission compares.
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "common/generation_rules.h"
#include "gtest/gtest.h"
#include "server/request_validation.h"
#include "worker/engine/text_to_video.h"

namespace zoetrope {
namespace {

namespace v1 = zoetrope::v1;

server::ValidationContext Context(int64_t max_tokens = 75600) {
  server::ValidationContext context;
  context.default_model = "tiny";
  context.is_known_model = [](const std::string& model) { return model == "tiny"; };
  context.known_models = [] { return std::string("tiny"); };
  context.max_tokens = max_tokens;
  return context;
}

v1::SubmitJobRequest ApiRequest(int width, int height, int frames) {
  v1::SubmitJobRequest request;
  request.set_model("tiny");
  request.set_prompt("a paper boat");
  request.set_width(width);
  request.set_height(height);
  request.set_frames(frames);
  request.set_steps(2);
  return request;
}

// What the worker hands the engine for a resolved request (worker/pipeline_job_runner.cc).
GenerationParameters EngineParameters(const v1::SubmitJobRequest& resolved) {
  GenerationParameters parameters;
  parameters.prompt = resolved.prompt();
  parameters.width = resolved.width();
  parameters.height = resolved.height();
  parameters.frames = resolved.frames();
  parameters.steps = resolved.steps();
  parameters.guidance = resolved.guidance();
  parameters.shift = resolved.shift();
  return parameters;
}

std::string FieldOf(const absl::Status& status) {
  const std::string message(status.message());
  return message.substr(0, message.find(':'));
}

TEST(GenerationRulesTest, EngineLimitsAtTheirBoundariesNameTheField) {
  GenerationShape largest{16384, 16384, 4093, 1000, 100.0, 100.0};
  EXPECT_TRUE(CheckGenerationRules(largest).ok()) << CheckGenerationRules(largest);
  GenerationShape smallest{16, 16, 1, 1, 0.0, 1e-9};
  EXPECT_TRUE(CheckGenerationRules(smallest).ok()) << CheckGenerationRules(smallest);
  struct Case {
    const char* field;
    void (*change)(GenerationShape&);
  };
  const Case cases[] = {
      {"width", [](GenerationShape& s) { s.width = 16384 + 16; }},
      {"width", [](GenerationShape& s) { s.width = 24; }},
      {"height", [](GenerationShape& s) { s.height = 0; }},
      {"frames", [](GenerationShape& s) { s.frames = 4097; }},
      {"frames", [](GenerationShape& s) { s.frames = 8; }},
      {"steps", [](GenerationShape& s) { s.steps = 1001; }},
      {"guidance", [](GenerationShape& s) { s.guidance = -0.5; }},
      {"guidance", [](GenerationShape& s) { s.guidance = std::nan(""); }},
      {"shift", [](GenerationShape& s) { s.shift = 0.0; }},
      {"shift", [](GenerationShape& s) { s.shift = INFINITY; }},
  };
  for (const Case& c : cases) {
    GenerationShape shape = smallest;
    c.change(shape);
    const absl::Status status = CheckGenerationRules(shape);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_EQ(FieldOf(status), c.field) << status;
  }
}

TEST(GenerationRulesTest, AServiceCanOnlyNarrowTheEngineLimits) {
  GenerationLimits wider;
  wider.max_pixels = 1 << 20;
  wider.max_frames = 1 << 20;
  wider.max_steps = 1 << 20;
  wider.max_guidance = 1e9;
  const GenerationLimits effective = EffectiveLimits(wider);
  EXPECT_EQ(effective.max_pixels, kEngineLimits.max_pixels);
  EXPECT_EQ(effective.max_frames, kEngineLimits.max_frames);
  EXPECT_EQ(effective.max_steps, kEngineLimits.max_steps);
  EXPECT_EQ(effective.max_guidance, kEngineLimits.max_guidance);
  const GenerationLimits service = server::ServiceLimits(75600);
  EXPECT_EQ(service.max_pixels, server::kMaxPixels);
  EXPECT_EQ(service.max_frames, server::kMaxFrames);
  EXPECT_EQ(service.max_steps, server::kMaxSteps);
  EXPECT_EQ(service.max_tokens, 75600);
}

// A seeded sweep across both sides' ranges, valid and invalid values mixed.
TEST(GenerationRulesTest, TheSchedulerAcceptsNothingTheEngineRejects) {
  std::mt19937_64 random(12);
  auto pick = [&](std::vector<int64_t> values) { return values[random() % values.size()]; };
  int accepted = 0, rejected = 0;
  for (int i = 0; i < 20000; ++i) {
    v1::SubmitJobRequest request = ApiRequest(
        static_cast<int>(pick({0, -16, 8, 16, 24, 32, 100, 832, 2032, 2048, 2064, 4096, 16384, 16400})),
        static_cast<int>(pick({0, -16, 16, 130, 480, 2048, 2064, 16384})),
        static_cast<int>(pick({0, -3, 1, 5, 8, 81, 257, 261, 4093, 4097})));
    request.set_steps(static_cast<int>(pick({0, -1, 1, 50, 200, 201, 1000, 1001})));
    request.set_guidance(std::vector<double>{0.0, -1.0, 0.5, 1.0, 30.0, 30.5, 100.0, std::nan(""),
                                             INFINITY}[random() % 9]);
    request.set_shift(std::vector<double>{0.0, -0.5, 1.0, 100.0, 100.5, std::nan("")}[random() % 6]);
    const absl::StatusOr<v1::SubmitJobRequest> resolved = server::ValidateAndResolve(request, Context());
    if (!resolved.ok()) {
      ++rejected;
      continue;
    }
    ++accepted;
    const absl::Status engine = ValidateGenerationParameters(EngineParameters(*resolved));
    ASSERT_TRUE(engine.ok()) << "the scheduler accepted what the engine rejects: " << request.ShortDebugString()
                             << ": " << engine;
  }
  EXPECT_GT(accepted, 100);
  EXPECT_GT(rejected, 100);

  // Where the engine refuses a value on a rule (not a limit), the scheduler refuses it naming the same field.
  struct Case {
    const char* field;
    void (*change)(v1::SubmitJobRequest&, GenerationParameters&);
  };
  const Case cases[] = {
      {"width", [](v1::SubmitJobRequest& r, GenerationParameters& p) { r.set_width(100); p.width = 100; }},
      {"height", [](v1::SubmitJobRequest& r, GenerationParameters& p) { r.set_height(-16); p.height = -16; }},
      {"frames", [](v1::SubmitJobRequest& r, GenerationParameters& p) { r.set_frames(18); p.frames = 18; }},
      {"steps", [](v1::SubmitJobRequest& r, GenerationParameters& p) { r.set_steps(-2); p.steps = -2; }},
      {"guidance", [](v1::SubmitJobRequest& r, GenerationParameters& p) { r.set_guidance(-1); p.guidance = -1; }},
      {"shift", [](v1::SubmitJobRequest& r, GenerationParameters& p) { r.set_shift(-1); p.shift = -1; }},
  };
  for (const Case& c : cases) {
    v1::SubmitJobRequest request = ApiRequest(64, 64, 5);
    absl::StatusOr<v1::SubmitJobRequest> resolved = server::ValidateAndResolve(request, Context());
    ASSERT_TRUE(resolved.ok());
    GenerationParameters parameters = EngineParameters(*resolved);
    c.change(request, parameters);
    const absl::Status engine = ValidateGenerationParameters(parameters);
    const absl::Status api = server::ValidateAndResolve(request, Context()).status();
    EXPECT_EQ(FieldOf(engine), c.field) << engine;
    EXPECT_EQ(FieldOf(api), c.field) << api;
  }
}

// Issue 12, item 2: the largest request the API accepts in every dimension, with the others at their
// smallest, passes the scheduler's and the engine's validation; one step further is refused naming the field.
TEST(GenerationRulesTest, LargestAcceptedRequestInEveryDimension) {
  struct Case {
    const char* what;
    v1::SubmitJobRequest largest;
    v1::SubmitJobRequest too_large;
    const char* field;
  };
  auto with = [](v1::SubmitJobRequest request, auto change) {
    change(request);
    return request;
  };
  const v1::SubmitJobRequest base = ApiRequest(16, 16, 1);
  const std::vector<Case> cases = {
      {"width", ApiRequest(2048, 16, 1), ApiRequest(2064, 16, 1), "width"},
      {"height", ApiRequest(16, 2048, 1), ApiRequest(16, 2064, 1), "height"},
      {"frames", ApiRequest(16, 16, 257), ApiRequest(16, 16, 261), "frames"},
      // The request: 2048 × 2048, one frame, 16,384 tokens.
      {"area", ApiRequest(2048, 2048, 1), ApiRequest(2048, 2064, 1), "height"},
      // 720p at 81 frames is exactly the default --max_tokens (21 · 45 · 80 = 75,600).
      {"tokens", ApiRequest(1280, 720, 81), ApiRequest(1280, 720, 85), "width, height, frames"},
      {"steps", with(base, [](auto& r) { r.set_steps(200); }), with(base, [](auto& r) { r.set_steps(201); }),
       "steps"},
      {"guidance", with(base, [](auto& r) { r.set_guidance(30); }), with(base, [](auto& r) { r.set_guidance(30.01); }),
       "guidance"},
      {"shift", with(base, [](auto& r) { r.set_shift(100); }), with(base, [](auto& r) { r.set_shift(100.01); }),
       "shift"},
      {"prompt", with(base, [](auto& r) { r.set_prompt(std::string(2000, 'p')); }),
       with(base, [](auto& r) { r.set_prompt(std::string(2001, 'p')); }), "prompt"},
      {"fps", with(base, [](auto& r) { r.set_fps(120); }), with(base, [](auto& r) { r.set_fps(121); }), "fps"},
  };
  for (const Case& c : cases) {
    const absl::StatusOr<v1::SubmitJobRequest> resolved = server::ValidateAndResolve(c.largest, Context());
    ASSERT_TRUE(resolved.ok()) << c.what << ": " << resolved.status();
    EXPECT_TRUE(ValidateGenerationParameters(EngineParameters(*resolved)).ok()) << c.what;
    const absl::Status refused = server::ValidateAndResolve(c.too_large, Context()).status();
    EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << c.what;
    EXPECT_EQ(FieldOf(refused), c.field) << c.what << ": " << refused;
  }
}

TEST(GenerationRulesTest, PeakMemoryEstimate) {
  PeakMemoryModel unknown;
  EXPECT_EQ(EstimatePeakMemoryBytes(unknown, 2048, 2048, 1), 0);
  PeakMemoryModel model;
  model.resident_bytes = 1000;
  model.denoise_bytes_per_token = 10;
  model.decode_bytes_per_pixel = 1;
  // 2048 × 2048 × 1: 16,384 tokens · 10 = 163,840 < 4,194,304 pixels · 1: the decode dominates.
  EXPECT_EQ(EstimatePeakMemoryBytes(model, 2048, 2048, 1), 1000 + 2048 * 2048);
  // 16 × 16 × 257: 65 tokens · 10 = 650 > 256 pixels.
  EXPECT_EQ(EstimatePeakMemoryBytes(model, 16, 16, 257), 1000 + 650);
  // Sequence parallelism divides the tokens a rank holds (rounded up), not the frame area.
  model.sequence_parallel = 4;
  EXPECT_EQ(EstimatePeakMemoryBytes(model, 16, 16, 1025), 1000 + 65 * 10);  // 257 tokens, 65 a rank
  // Saturates rather than overflowing.
  model.decode_bytes_per_pixel = int64_t{1} << 50;
  EXPECT_EQ(EstimatePeakMemoryBytes(model, 16384, 16384, 1), std::numeric_limits<int64_t>::max());
}

}  // namespace
}  // namespace zoetrope
