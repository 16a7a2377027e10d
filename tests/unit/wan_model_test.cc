// Wan2.1 DiT configs, parameter inventory, key naming, loader errors and model-level invariants.
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "kernels/cpu/cpu_backend.h"
#include "worker/engine/denoise.h"
#include "worker/engine/safetensors.h"
#include "worker/engine/wan_dit.h"
#include "worker/engine/wan_random_weights.h"
#include "worker/engine/wan_weights.h"

namespace zoetrope {
namespace {

int64_t CountParameters(const WanDitConfig& config, absl::string_view prefix = "") {
  int64_t count = 0;
  for (const ParameterSpec& spec : WanDitParameters(config)) {
    if (absl::string_view(spec.name).substr(0, prefix.size()) == prefix) count += NumElements(spec.shape);
  }
  return count;
}

TEST(WanDitConfig, ParameterCountsMatchTheSpecTable) {
  const WanDitConfig small = *WanDitConfigByName("wan2.1-t2v-1.3b");
  const WanDitConfig large = *WanDitConfigByName("wan2.1-t2v-14b");
  EXPECT_EQ(CountParameters(small), 1'418'996'800);
  EXPECT_EQ(CountParameters(large), 14'288'491'584);
  EXPECT_EQ(CountParameters(small, "blocks.0."), 46'440'704);
  EXPECT_EQ(CountParameters(large, "blocks.0."), 351'394'304);
  EXPECT_EQ(CountParameters(small, "time_projection"), 14'164'992);
  EXPECT_EQ(CountParameters(large, "text_embedding"), 47'196'160);
  EXPECT_EQ(CountParameters(small, "head."), 101'440);
}

TEST(WanDitConfig, RopeSplitsTheHeadLikeTheReference) {
  const WanDitConfig config = *WanDitConfigByName("wan2.1-t2v-14b");
  EXPECT_EQ(config.head_dim(), 128);
  EXPECT_EQ(config.rope_frame_dims(), 44);
  EXPECT_EQ(config.rope_spatial_dims(), 42);
}

TEST(WanDitConfig, ParsesTheOriginalConfigJson) {
  absl::StatusOr<WanDitConfig> config = ParseWanDitConfigJson(
      R"({"_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": 1536, "eps": 1e-06,
          "ffn_dim": 8960, "freq_dim": 256, "in_dim": 16, "model_type": "t2v", "num_heads": 12,
          "num_layers": 30, "out_dim": 16, "text_len": 512})",
      "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->dim, 1536);
  EXPECT_EQ(config->num_heads, 12);
  EXPECT_EQ(config->text_dim, 4096);  // not stored in the file: the constructor default
  EXPECT_DOUBLE_EQ(config->eps, 1e-6);
}

TEST(WanDitConfig, ParsesTheDiffusersConfigJson) {
  absl::StatusOr<WanDitConfig> config = ParseWanDitConfigJson(
      R"({"added_kv_proj_dim": null, "attention_head_dim": 128, "cross_attn_norm": true, "eps": 1e-06,
          "ffn_dim": 13824, "freq_dim": 256, "in_channels": 16, "num_attention_heads": 40, "num_layers": 40,
          "out_channels": 16, "patch_size": [1, 2, 2], "qk_norm": "rms_norm_across_heads", "text_dim": 4096})",
      "transformer/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->dim, 5120);
  EXPECT_EQ(config->ffn_dim, 13824);
  EXPECT_EQ(config->text_len, 512);
}

TEST(WanDitConfig, RejectsBadConfigsNamingTheFieldAndFile) {
  struct Case {
    const char* json;
    const char* expected;
  };
  const Case cases[] = {
      {R"({"dim": 100, "num_heads": 12, "num_layers": 2, "ffn_dim": 8})", "multiple of num_heads"},
      {R"({"dim": 1536, "num_heads": 12, "ffn_dim": 8})", "num_layers"},
      {R"({"dim": "big", "num_heads": 12, "num_layers": 2, "ffn_dim": 8})", "\"dim\" must be an integer"},
      {R"([1, 2])", "not a JSON object"},
      {R"({"dim": 1536,)", "not a JSON object"},
      {R"({"attention_head_dim": 128, "num_layers": 2, "ffn_dim": 8})", "num_attention_heads"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<WanDitConfig> config = ParseWanDitConfigJson(c.json, "bad/config.json");
    ASSERT_FALSE(config.ok()) << c.json;
    EXPECT_NE(config.status().message().find(c.expected), std::string::npos) << config.status();
    EXPECT_NE(config.status().message().find("bad/config.json"), std::string::npos) << config.status();
  }
}

TEST(WanWeights, DiffusersNamesFollowTheConverterTable) {
  EXPECT_EQ(DiffusersName("blocks.3.norm3.weight"), "blocks.3.norm2.weight");
  EXPECT_EQ(DiffusersName("blocks.3.self_attn.o.bias"), "blocks.3.attn1.to_out.0.bias");
  EXPECT_EQ(DiffusersName("blocks.12.cross_attn.norm_k.weight"), "blocks.12.attn2.norm_k.weight");
  EXPECT_EQ(DiffusersName("blocks.0.modulation"), "blocks.0.scale_shift_table");
  EXPECT_EQ(DiffusersName("blocks.0.ffn.0.weight"), "blocks.0.ffn.net.0.proj.weight");
  EXPECT_EQ(DiffusersName("blocks.0.ffn.2.bias"), "blocks.0.ffn.net.2.bias");
  EXPECT_EQ(DiffusersName("time_projection.1.weight"), "condition_embedder.time_proj.weight");
  EXPECT_EQ(DiffusersName("text_embedding.2.bias"), "condition_embedder.text_embedder.linear_2.bias");
  EXPECT_EQ(DiffusersName("time_embedding.0.weight"), "condition_embedder.time_embedder.linear_1.weight");
  EXPECT_EQ(DiffusersName("head.modulation"), "scale_shift_table");
  EXPECT_EQ(DiffusersName("head.head.weight"), "proj_out.weight");
  EXPECT_EQ(DiffusersName("patch_embedding.weight"), "patch_embedding.weight");
}

class TinyModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    directory_ = std::filesystem::temp_directory_path() /
                 ("zoetrope_wan_model_test_" + std::to_string(::getpid()) + "_" +
                  ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(directory_ / "original");
    std::filesystem::create_directories(directory_ / "diffusers");
    config_ = *WanDitConfigByName("tiny");
    RandomWeightsOptions options;
    options.seed = 7;
    ASSERT_TRUE(WriteRandomWanDitWeights(config_, options, Path("original/model.safetensors")).ok());
    options.naming = WeightNaming::kDiffusers;
    ASSERT_TRUE(WriteRandomWanDitWeights(config_, options, Path("diffusers/model.safetensors")).ok());
  }
  void TearDown() override { std::filesystem::remove_all(directory_); }
  std::string Path(const std::string& name) const { return (directory_ / name).string(); }

  // Copies the original checkpoint into `name`, dropping `drop` and reshaping `reshape` to [1].
  void WriteModified(const std::string& name, const std::string& drop, const std::string& reshape) {
    auto file = SafetensorsFile::Open(Path("original/model.safetensors"));
    ASSERT_TRUE(file.ok());
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const std::string& key : (*file)->Keys()) {
      if (key == drop) continue;
      Tensor tensor = *(*file)->Get(key);
      if (key == reshape) tensor = Tensor::Host({1}, DType::kF32);
      tensors.emplace_back(key, tensor);
    }
    std::filesystem::create_directories(std::filesystem::path(Path(name)).parent_path());
    ASSERT_TRUE(WriteSafetensors(Path(name), tensors).ok());
    std::filesystem::copy_file(Path("original/config.json"),
                               std::filesystem::path(Path(name)).parent_path() / "config.json");
  }

  std::filesystem::path directory_;
  WanDitConfig config_;
  std::unique_ptr<Backend> backend_ = CreateCpuBackend();
};

Tensor Velocity(WanDit& model, Backend& backend, uint64_t seed) {
  const Tensor latent = InitialNoise(backend, {16, 3, 4, 6}, seed);
  Tensor context = Tensor::Host({5, model.config().text_dim}, DType::kF32);
  for (int64_t i = 0; i < context.numel(); ++i) context.data<float>()[i] = std::sin(0.1f * i);
  auto prompt = model.EncodePrompt(context);
  EXPECT_TRUE(prompt.ok());
  LocalDenseAttention attention;
  return model.Forward(latent, model.EmbedTimestep(500), *prompt, attention);
}

TEST_F(TinyModelTest, BothNamingsLoadToTheSameModel) {
  auto original = WanDit::Load(Path("original/model.safetensors"), *backend_);
  auto diffusers = WanDit::Load(Path("diffusers"), *backend_);
  ASSERT_TRUE(original.ok()) << original.status();
  ASSERT_TRUE(diffusers.ok()) << diffusers.status();
  const std::vector<float> a = ToFloatVector(Velocity(**original, *backend_, 3));
  const std::vector<float> b = ToFloatVector(Velocity(**diffusers, *backend_, 3));
  EXPECT_EQ(a, b);
  double norm = 0;
  for (float value : a) {
    ASSERT_TRUE(std::isfinite(value));
    norm += value * value;
  }
  EXPECT_GT(norm, 0.0);
}

TEST_F(TinyModelTest, MissingTensorErrorNamesFileKeyAndShape) {
  WriteModified("missing/model.safetensors", "blocks.1.ffn.0.weight", "");
  auto model = WanDit::Load(Path("missing/model.safetensors"), *backend_);
  ASSERT_FALSE(model.ok());
  const std::string message(model.status().message());
  EXPECT_NE(message.find("missing/model.safetensors"), std::string::npos) << message;
  EXPECT_NE(message.find("blocks.1.ffn.0.weight"), std::string::npos) << message;
  EXPECT_NE(message.find("[256, 128]"), std::string::npos) << message;
}

TEST_F(TinyModelTest, WrongShapeErrorNamesExpectedAndFound) {
  WriteModified("reshaped/model.safetensors", "", "blocks.0.self_attn.q.weight");
  auto model = WanDit::Load(Path("reshaped/model.safetensors"), *backend_);
  ASSERT_FALSE(model.ok());
  const std::string message(model.status().message());
  EXPECT_NE(message.find("blocks.0.self_attn.q.weight"), std::string::npos) << message;
  EXPECT_NE(message.find("has shape [1], expected [128, 128]"), std::string::npos) << message;
}

TEST_F(TinyModelTest, MissingConfigIsNamed) {
  std::filesystem::remove(Path("original/config.json"));
  auto model = WanDit::Load(Path("original/model.safetensors"), *backend_);
  ASSERT_FALSE(model.ok());
  EXPECT_NE(model.status().message().find("config.json"), std::string::npos) << model.status();
}

TEST_F(TinyModelTest, InputValidation) {
  auto model = WanDit::Load(Path("original"), *backend_);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_FALSE((*model)->ValidateLatentShape({16, 3, 5, 6}).ok());  // odd height
  EXPECT_FALSE((*model)->ValidateLatentShape({8, 3, 4, 6}).ok());   // wrong channels
  EXPECT_TRUE((*model)->ValidateLatentShape({16, 1, 2, 2}).ok());
  EXPECT_FALSE((*model)->EncodePrompt(Tensor::Host({33, 64}, DType::kF32)).ok());  // longer than text_len
  EXPECT_FALSE((*model)->EncodePrompt(Tensor::Host({3, 65}, DType::kF32)).ok());   // wrong width
}

TEST_F(TinyModelTest, ForwardIsDeterministicAndDependsOnItsInputs) {
  auto model = WanDit::Load(Path("original"), *backend_);
  ASSERT_TRUE(model.ok());
  EXPECT_EQ(ToFloatVector(Velocity(**model, *backend_, 3)), ToFloatVector(Velocity(**model, *backend_, 3)));
  EXPECT_NE(ToFloatVector(Velocity(**model, *backend_, 3)), ToFloatVector(Velocity(**model, *backend_, 4)));
}

TEST_F(TinyModelTest, GenerationIsDeterministicPerSeedAndCancellable) {
  auto model = WanDit::Load(Path("original"), *backend_);
  ASSERT_TRUE(model.ok());
  auto positive = (*model)->EncodePrompt(Tensor::Host({0, 64}, DType::kF32));
  Tensor context = Tensor::Host({4, 64}, DType::kF32);
  for (int64_t i = 0; i < context.numel(); ++i) context.data<float>()[i] = std::cos(0.3f * i);
  auto negative = (*model)->EncodePrompt(context);
  DenoiseOptions options;
  options.latent_shape = LatentShapeFor(64, 32, 9);
  options.steps = 4;
  LocalDenseAttention attention;
  int reports = 0;
  auto first = Denoise(**model, attention, *positive, &*negative, options,
                       [&](const DenoiseProgress& progress) { EXPECT_EQ(progress.step, ++reports); });
  auto second = Denoise(**model, attention, *positive, &*negative, options);
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_EQ(reports, 4);
  EXPECT_EQ(first->shape(), (Shape{16, 3, 4, 8}));
  EXPECT_EQ(ToFloatVector(*first), ToFloatVector(*second));
  options.seed = 1;
  EXPECT_NE(ToFloatVector(*first), ToFloatVector(*Denoise(**model, attention, *positive, &*negative, options)));

  std::atomic<bool> cancelled{true};
  auto stopped = Denoise(**model, attention, *positive, &*negative, options, nullptr, &cancelled);
  EXPECT_EQ(stopped.status().code(), absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace zoetrope
