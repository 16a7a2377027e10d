// The whole text-to-video pipeline on the CPU with tiny random models: both model-folder layouts,
// determinism, cancellation, validation, the MP4 a user gets, and errors for broken model folders.
// The model folders are written before this test by scripts/make-model.sh (a ctest fixture).
#include "worker/engine/text_to_video.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "kernels/cpu/cpu_backend.h"
#include "worker/engine/video_writer.h"

namespace zoetrope {
namespace {

namespace fs = std::filesystem;

const std::string kDiffusersModel = ZOETROPE_TEST_MODEL_DIR "/diffusers";
const std::string kOriginalModel = ZOETROPE_TEST_MODEL_DIR "/original";

GenerationParameters SmallRequest() {
  GenerationParameters parameters;
  parameters.prompt = "a red kite over a windy beach";
  parameters.width = 64;
  parameters.height = 48;
  parameters.frames = 9;
  parameters.steps = 3;
  parameters.seed = 11;
  return parameters;
}

class TextToVideoTest : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> backend_ = CreateCpuBackend();
};

TEST_F(TextToVideoTest, GeneratesFramesFromBothLayouts) {
  for (const std::string& folder : {kDiffusersModel, kOriginalModel}) {
    auto pipeline = TextToVideoPipeline::Load(folder, *backend_);
    ASSERT_TRUE(pipeline.ok()) << pipeline.status();
    std::vector<GenerationPhase> phases;
    int steps = 0;
    auto result = (*pipeline)->Generate(SmallRequest(), [&](const GenerationProgress& progress) {
      if (phases.empty() || phases.back() != progress.phase) phases.push_back(progress.phase);
      if (progress.phase == GenerationPhase::kDenoising && progress.denoise.step > 0) ++steps;
    });
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->frames.shape(), (Shape{9, 3, 48, 64}));
    EXPECT_EQ(steps, 3);
    EXPECT_EQ(phases, (std::vector<GenerationPhase>{GenerationPhase::kEncodingText, GenerationPhase::kDenoising,
                                                    GenerationPhase::kDecoding}));
    double sum_squares = 0;
    for (float value : ToFloatVector(result->frames)) {
      ASSERT_TRUE(std::isfinite(value));
      ASSERT_LE(std::abs(value), 1.0f);
      sum_squares += value * value;
    }
    EXPECT_GT(sum_squares, 0.0);
  }
}

TEST_F(TextToVideoTest, SameSeedSameVideoOtherPromptOtherVideo) {
  auto pipeline = TextToVideoPipeline::Load(kDiffusersModel, *backend_);
  ASSERT_TRUE(pipeline.ok()) << pipeline.status();
  GenerationParameters request = SmallRequest();
  const auto first = ToFloatVector((*pipeline)->Generate(request)->frames);
  const auto again = ToFloatVector((*pipeline)->Generate(request)->frames);
  EXPECT_EQ(first, again);
  // The repeated prompt and the default negative prompt came from the cache the second time.
  EXPECT_GE((*pipeline)->prompt_encoder().cache().hits(), 2);
  request.prompt = "a lighthouse at night";
  EXPECT_NE(first, ToFloatVector((*pipeline)->Generate(request)->frames));
  request = SmallRequest();
  request.seed = 12;
  EXPECT_NE(first, ToFloatVector((*pipeline)->Generate(request)->frames));
}

TEST_F(TextToVideoTest, CancellationStopsTheLoop) {
  auto pipeline = TextToVideoPipeline::Load(kDiffusersModel, *backend_);
  ASSERT_TRUE(pipeline.ok());
  std::atomic<bool> cancelled{false};
  auto result = (*pipeline)->Generate(
      SmallRequest(),
      [&](const GenerationProgress& progress) {
        if (progress.denoise.step == 1) cancelled = true;
      },
      &cancelled);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled);
}

TEST_F(TextToVideoTest, RejectsBadParametersNamingTheField) {
  struct Case {
    void (*change)(GenerationParameters&);
    const char* field;
  };
  const Case cases[] = {
      {[](GenerationParameters& p) { p.width = 100; }, "width"},
      {[](GenerationParameters& p) { p.height = 0; }, "height"},
      {[](GenerationParameters& p) { p.frames = 8; }, "frames"},
      {[](GenerationParameters& p) { p.steps = 0; }, "steps"},
      {[](GenerationParameters& p) { p.guidance = -1; }, "guidance"},
      {[](GenerationParameters& p) { p.shift = 0; }, "shift"},
  };
  for (const Case& c : cases) {
    GenerationParameters parameters = SmallRequest();
    c.change(parameters);
    absl::Status status = ValidateGenerationParameters(parameters);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(status.message().substr(0, std::string(c.field).size()), c.field) << status;
  }
  EXPECT_TRUE(ValidateGenerationParameters(SmallRequest()).ok());
}

TEST_F(TextToVideoTest, WritesAnMp4ThatFfprobeReads) {
  auto pipeline = TextToVideoPipeline::Load(kOriginalModel, *backend_);
  ASSERT_TRUE(pipeline.ok());
  auto result = (*pipeline)->Generate(SmallRequest());
  ASSERT_TRUE(result.ok());
  const std::string path = (fs::temp_directory_path() / ("zoetrope_t2v_" + std::to_string(::getpid()) + ".mp4")).string();
  VideoOutputOptions options;
  options.path = path;
  ASSERT_TRUE(WriteVideo(result->frames, options).ok());
  FILE* probe = ::popen(("ffprobe -v error -count_frames -select_streams v:0 -show_entries "
                         "stream=codec_name,width,height,nb_read_frames,r_frame_rate -of csv=p=0 " + path)
                            .c_str(),
                        "r");
  ASSERT_NE(probe, nullptr);
  char line[256] = {0};
  ASSERT_NE(std::fgets(line, sizeof(line), probe), nullptr);
  ::pclose(probe);
  EXPECT_EQ(std::string(line), "h264,64,48,16/1,9\n");
  fs::remove(path);
}

class BrokenModelFolderTest : public TextToVideoTest {
 protected:
  void SetUp() override {
    folder_ = fs::temp_directory_path() / ("zoetrope_broken_model_" + std::to_string(::getpid()));
    fs::remove_all(folder_);
    fs::copy(kDiffusersModel, folder_, fs::copy_options::recursive);
  }
  void TearDown() override { fs::remove_all(folder_); }
  fs::path folder_;
};

TEST_F(BrokenModelFolderTest, MissingPartsAreNamed) {
  fs::remove_all(folder_ / "vae");
  fs::remove(folder_ / "tokenizer" / "spiece.model");
  auto pipeline = TextToVideoPipeline::Load(folder_.string(), *backend_);
  ASSERT_FALSE(pipeline.ok());
  const std::string message(pipeline.status().message());
  EXPECT_NE(message.find("vae/"), std::string::npos) << message;
  EXPECT_NE(message.find("tokenizer/spiece.model"), std::string::npos) << message;
  EXPECT_NE(message.find(folder_.string()), std::string::npos) << message;
}

TEST_F(BrokenModelFolderTest, PickledCheckpointGetsAConversionHint) {
  const fs::path original = folder_ / "original";
  fs::copy(kOriginalModel, original, fs::copy_options::recursive);
  for (const auto& entry : fs::directory_iterator(original)) {
    if (entry.path().filename().string().rfind("models_t5_", 0) == 0) {
      fs::rename(entry.path(), original / "models_t5_umt5-xxl-enc-bf16.pth");
    }
  }
  auto pipeline = TextToVideoPipeline::Load(original.string(), *backend_);
  ASSERT_FALSE(pipeline.ok());
  EXPECT_NE(pipeline.status().message().find("models_t5_umt5-xxl-enc-bf16.pth"), std::string::npos);
  EXPECT_NE(pipeline.status().message().find("convert-wan-checkpoint.py"), std::string::npos);
}

TEST_F(BrokenModelFolderTest, MismatchedPartsAreNamed) {
  // A DiT whose text width differs from the text encoder's.
  std::ifstream in(folder_ / "transformer" / "config.json");
  std::string config((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  in.close();
  const size_t at = config.find("\"text_dim\": 64");
  ASSERT_NE(at, std::string::npos) << config;
  config.replace(at, 14, "\"text_dim\": 32");
  std::ofstream(folder_ / "transformer" / "config.json") << config;
  auto pipeline = TextToVideoPipeline::Load(folder_.string(), *backend_);
  ASSERT_FALSE(pipeline.ok());
  // The DiT's own weights no longer match its config: the loader names the tensor and both shapes.
  EXPECT_NE(pipeline.status().message().find("text_embedder"), std::string::npos) << pipeline.status();
}

}  // namespace
}  // namespace zoetrope
