// The text side of the pipeline (spec/wan21.md §6): prompt cleaning against a Python reference,
// the sentencepiece tokenizer with umT5 conventions (on the stand-in model the build trains),
// the umT5 encoder against the float64 PyTorch reference (tests/reference/umt5_reference.py),
// weight loading in both namings, the CPU text operators and the prompt cache.
//
// Paths come from tests/unit/text_encoder_test.cmake: ZOETROPE_SOURCE_DIR, ZOETROPE_REFERENCE_PYTHON
// and ZOETROPE_STAND_IN_TOKENIZER (built by scripts/build-tokenizer.sh when this test is built).
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <random>
#include <sstream>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/unit/numerics.h"
#include "worker/engine/prompt_cache.h"
#include "worker/engine/prompt_clean.h"
#include "worker/engine/safetensors.h"
#include "worker/engine/text_tokenizer.h"
#include "worker/engine/umt5_encoder.h"
#include "worker/engine/umt5_random_weights.h"
#include "worker/engine/umt5_weights.h"
#include "worker/engine/wan_config.h"

namespace zoetrope {
namespace {

using test::RelativeL2;

namespace fs = std::filesystem;

fs::path ScratchDirectory() { return fs::path(testing::TempDir()) / absl::StrCat("text_encoder_test_", getpid()); }

std::string ScratchPath(const std::string& name) {
  fs::create_directories(ScratchDirectory());
  return (ScratchDirectory() / name).string();
}

// Removes this process's scratch files when its tests are done.
class ScratchCleanup : public testing::Environment {
 public:
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(ScratchDirectory(), ignored);
  }
};
[[maybe_unused]] testing::Environment* const scratch_cleanup = testing::AddGlobalTestEnvironment(new ScratchCleanup);

// Runs a shell command with its output in `log`; on failure the log goes into the test output.
bool RunCommand(const std::string& command, const std::string& log) {
  const int status = std::system(absl::StrCat(command, " >", log, " 2>&1").c_str());
  if (status != 0) {
    std::ifstream file(log);
    std::stringstream text;
    text << file.rdbuf();
    ADD_FAILURE() << "command failed (" << status << "): " << command << "\n" << text.str();
    return false;
  }
  return true;
}

std::string Hex(const std::string& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

std::string Unhex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

std::string Clean(absl::string_view text) {
  absl::StatusOr<std::string> cleaned = CleanPrompt(text);
  EXPECT_TRUE(cleaned.ok()) << cleaned.status();
  return cleaned.ok() ? *cleaned : std::string("<error>");
}

// ---- prompt cleaning ----------------------------------------------------------------------------------

TEST(PromptClean, SpecExamples) {
  // spec §6.4: the ftfy example, and the negative prompt's full-width commas.
  EXPECT_EQ(Clean("\u201cHello\u201d  \uff21\uff22\uff23\u3000world"), "\"Hello\" ABC world");
  std::string negative = kWanDefaultNegativePrompt;
  for (size_t at; (at = negative.find("\uff0c")) != std::string::npos;) negative.replace(at, 3, ",");
  EXPECT_EQ(Clean(kWanDefaultNegativePrompt), negative);
  EXPECT_EQ(Clean("a paper boat drifting down a rainy street"), "a paper boat drifting down a rainy street");
}

TEST(PromptClean, HtmlEntities) {
  EXPECT_EQ(Clean("Tom &amp;amp; Jerry"), "Tom & Jerry");
  EXPECT_EQ(Clean("caf&eacute; &#x41;&#66; &hellip;"), "caf\u00e9 AB \u2026");
  EXPECT_EQ(Clean("P&EACUTE;REZ"), "P\u00c9REZ");         // ftfy's all-caps extras
  EXPECT_EQ(Clean("fish &amp chips"), "fish & chips");    // html.unescape's legacy name without ';'
  EXPECT_EQ(Clean("&ampx; &notit;"), "&x; \u00acit;");    // longest legacy prefix
  EXPECT_EQ(Clean("&#0; &#1; &#x110000; &#150;"), "\ufffd \ufffd \u2013");
  // A '<' switches ftfy's unescaping off; html.unescape still runs twice.
  EXPECT_EQ(Clean("a < b &amp;amp;amp; c"), "a < b &amp; c");
  EXPECT_EQ(Clean("&lt;b&gt;bold&lt;/b&gt;"), "<b>bold</b>");
}

TEST(PromptClean, WidthLigaturesQuotesControlsAndNfc) {
  EXPECT_EQ(Clean("\uff2c\uff2f\uff35\uff24\u3000\uff2e\uff2f\uff29\uff33\uff25\uff33\uff01"), "LOUD NOISES!");
  EXPECT_EQ(Clean("\uff73\uff80\uff70\uff9d \uff76\uff9e"), "\u30a6\u30bf\u30fc\u30f3 \u30ac");  // half-width kana, composed
  EXPECT_EQ(Clean("\ufb01ne \ufb02ower \ufb03x"), "fine flower ffix");
  EXPECT_EQ(Clean("\u2018single\u2019 \u201cdouble\u201d \u201e\u02bc"), "'single' \"double\" \"'");
  EXPECT_EQ(Clean("\x1b[31;1mred\x1b[0m text\x07\x7f\ufeff"), "red text");
  EXPECT_EQ(Clean("a\xc2\x93quoted\xc2\x94"), "a\"quoted\"");  // C1 controls (U+0093/4) read as Windows-1252
  EXPECT_EQ(Clean("e\u0301 \u1100\u1161\u11a8 A\u030a"), "\u00e9 \uac01 \u00c5");
  EXPECT_EQ(Clean("zero\u200bwidth"), "zero\u200bwidth");  // not whitespace, not a removed control
}

TEST(PromptClean, Whitespace) {
  EXPECT_EQ(Clean("  a \t\n b\u3000c\u00a0d\r\n\u2028e\u2003 "), "a b c d e");
  EXPECT_EQ(Clean(""), "");
  EXPECT_EQ(Clean(" \n\t "), "");
}

TEST(PromptClean, InvalidUtf8NamesTheByteOffset) {
  const std::vector<std::pair<std::string, int>> cases = {
      {"abc\xff", 3},         {"ab\xe4\xb8", 2},     {"\xc0\xaf", 0},      {"x\xed\xa0\x80", 1},
      {"ok\x80", 2},          {"\xf4\x90\x80\x80", 0}, {"\xe4\xb8z", 0},     {"caf\xc3\xa9\xc3", 5},
  };
  for (const auto& [text, offset] : cases) {
    absl::StatusOr<std::string> cleaned = CleanPrompt(text);
    ASSERT_FALSE(cleaned.ok()) << Hex(text);
    EXPECT_EQ(cleaned.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(cleaned.status().message(), absl::StrCat("byte offset ", offset, " ")))
        << Hex(text) << ": " << cleaned.status();
  }
}

// Every string through the C++ cleaner and through the Python reference; NFC against unicodedata.
TEST(PromptClean, MatchesPythonReference) {
  std::vector<std::string> inputs = {
      "a paper boat drifting down a rainy street",
      kWanDefaultNegativePrompt,
      "\u201cHello\u201d  \uff21\uff22\uff23\u3000world",
      "Tom &amp;amp;amp;amp; Jerry &AMP; &Amp; &amp &ampx &amp;x &#38;#38;",
      "line one &lt;\nline two &amp; three\rfour\r\nfive",
      "&NotEqualTilde; &nLt; &ThickSpace; &fjlig; &#X1F600; &#128512 &#x; &#; &# &#xD800; &#1114112;",
      "&AElig;&AELIG;&aelig;&SZLIG;&ETH;&eth;&ntilde;&NTILDE;&nTILDE;",
      "\ufb00\ufb01\ufb02\ufb03\ufb04\ufb05\ufb06 \u0132\u0133\u0149\u01c4\u01c5\u01c6\u01c7\u01f1",
      "\uff01\uff5e\uff5f\uff60\uff61\uff64\uff65\uff9e\uff9f\uffa0\uffa1\uffe0\uffe3\uffe8\uffee\uffef",
      "\x1b[1;31mbold\x1b[0m \x1b[\u0663mx \x1b[;m \x1b[12",
      "\x01\x08\x0b\x0c\x0e\x1f\x7f\u206a\u206f\ufeff\ufff9\ufffc\ufffd\u200e",
      "\xc2\x80\xc2\x81\xc2\x85\xc2\x8d\xc2\x90\xc2\x9d\xc2\x9f",  // C1 controls
      "a\u0301\u0327 \u1e0b\u0323 q\u0307\u0323 \u0958 \u2126 \u212b \u0344 \u0f73 \u1100\u1161\u11a8\u11a8",
      "\u304b\u3099 \u30cf\u309a \ud55c\uad6d\uc5b4 \u1112\u1161\u11ab",
      "emoji \U0001F431\U0001F3FD \U0001F468\u200d\U0001F469\u200d\U0001F467 \U0001F3F4\U000E0067\U000E0062\U000E007F",
      "   \t leading and trailing \u00a0\u2000\u3000 ",
      "&&&;&;;&#&#x&#X41;&#x41&#65&#0065;&lt&gt&quot",
      "\u00e9\u0065\u0301 \u00c5\u212b",
  };
  // Random strings over a pool of the characters that exercise every step.
  const std::vector<std::string> pool = {
      "a", "Z", "0", " ", "  ", "\t", "\n", "\r", "&", "amp;", "#", "x41", ";", "<", "lt;", "eacute;", "EACUTE;",
      "\u0301", "\u0327", "\u0323", "\u0307", "e", "\u00e9", "\u1100", "\u1161", "\u11a8", "\uac00", "\u3099",
      "\u304b", "\uff76", "\uff9e", "\uff21", "\uff0c", "\u3000", "\u201c", "\u2019", "\ufb01", "\x1b[", "3m",
      "\x7f", "\xc2\x93", "\u2028", "\u00a0", "\U0001F431", "\u4e00", "\u732b", "\u0958", "\u0344", "\u0f73",
  };
  std::mt19937 random(1234);
  for (int i = 0; i < 300; ++i) {
    std::string text;
    const int pieces = 1 + static_cast<int>(random() % 12);
    for (int p = 0; p < pieces; ++p) text += pool[random() % pool.size()];
    inputs.push_back(text);
  }
  const std::string input_path = ScratchPath("clean_in.txt"), output_path = ScratchPath("clean_out.txt");
  {
    std::ofstream file(input_path);
    for (const std::string& text : inputs) file << Hex(text) << "\n";
  }
  ASSERT_TRUE(RunCommand(absl::StrCat(ZOETROPE_REFERENCE_PYTHON, " ", ZOETROPE_SOURCE_DIR,
                               "/tests/reference/prompt_clean_reference.py ", input_path, " ", output_path),
                  ScratchPath("clean.log")));
  std::ifstream file(output_path);
  std::string line;
  size_t index = 0, mismatches = 0;
  while (std::getline(file, line)) {
    ASSERT_LT(index, inputs.size());
    const size_t tab = line.find('\t');
    ASSERT_NE(tab, std::string::npos);
    const std::string expected_clean = Unhex(line.substr(0, tab)), expected_nfc = Unhex(line.substr(tab + 1));
    const std::string& input = inputs[index++];
    const std::string cleaned = Clean(input);
    const std::string nfc = EncodeUtf8(NormalizeNfc(*DecodeUtf8(input)));
    if (cleaned != expected_clean || nfc != expected_nfc) ++mismatches;
    EXPECT_EQ(Hex(cleaned), Hex(expected_clean)) << "clean of " << Hex(input);
    EXPECT_EQ(Hex(nfc), Hex(expected_nfc)) << "NFC of " << Hex(input);
  }
  EXPECT_EQ(index, inputs.size());
  EXPECT_EQ(mismatches, 0u);
}

// ---- tokenizer --------------------------------------------------------------------------------------

class TokenizerTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::unique_ptr<TextTokenizer>> loaded = TextTokenizer::Load(ZOETROPE_STAND_IN_TOKENIZER);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    tokenizer_ = loaded->release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    tokenizer_ = nullptr;
  }

  // Tokenizes and checks the layout every result must have: content, EOS, padding, and the mask.
  static TokenizedPrompt Tokenize(absl::string_view text) {
    absl::StatusOr<TokenizedPrompt> prompt = tokenizer_->Tokenize(text);
    EXPECT_TRUE(prompt.ok()) << prompt.status();
    if (!prompt.ok()) return {};
    const int64_t max_length = tokenizer_->options().max_length;
    EXPECT_EQ(static_cast<int64_t>(prompt->ids.size()), max_length);
    EXPECT_EQ(static_cast<int64_t>(prompt->attention_mask.size()), max_length);
    EXPECT_GE(prompt->length, 1);
    EXPECT_EQ(prompt->ids[prompt->length - 1], TextTokenizer::kEosId);
    for (int64_t i = 0; i < max_length; ++i) {
      EXPECT_EQ(prompt->attention_mask[i], i < prompt->length ? 1 : 0);
      if (i >= prompt->length) {
        EXPECT_EQ(prompt->ids[i], TextTokenizer::kPadId);
      } else if (i < prompt->length - 1) {
        EXPECT_GE(prompt->ids[i], 2);  // content never uses pad or EOS
      }
    }
    return *prompt;
  }
  static std::vector<int32_t> Content(const TokenizedPrompt& prompt) {
    return std::vector<int32_t>(prompt.ids.begin(), prompt.ids.begin() + prompt.length - 1);
  }
  static bool HasUnknown(const TokenizedPrompt& prompt) {
    const std::vector<int32_t> content = Content(prompt);
    return std::find(content.begin(), content.end(), tokenizer_->unknown_id()) != content.end();
  }

  static TextTokenizer* tokenizer_;
};
TextTokenizer* TokenizerTest::tokenizer_ = nullptr;

TEST_F(TokenizerTest, StandInModelHasUmt5SpecialIds) {
  EXPECT_EQ(tokenizer_->vocab_size(), 1000);
  EXPECT_EQ(tokenizer_->IdToPiece(0), "<pad>");
  EXPECT_EQ(tokenizer_->IdToPiece(1), "</s>");
  EXPECT_EQ(tokenizer_->unknown_id(), 2);
  EXPECT_LE(tokenizer_->vocab_size(), Umt5ConfigByName("tiny")->vocab_size);
}

TEST_F(TokenizerTest, AsciiRoundTrips) {
  const TokenizedPrompt prompt = Tokenize("a cat playing piano in a sunlit living room");
  EXPECT_GT(prompt.length, 3);
  EXPECT_FALSE(HasUnknown(prompt));
  EXPECT_EQ(*tokenizer_->Decode(Content(prompt)), "a cat playing piano in a sunlit living room");
  EXPECT_FALSE(prompt.truncated);
}

TEST_F(TokenizerTest, CjkRoundTrips) {
  const std::string text = "\u4e00\u53ea\u5c0f\u732b\u5728\u9633\u5149\u4e0b\u7684\u7a97\u53f0\u4e0a\u7761\u89c9";
  const TokenizedPrompt prompt = Tokenize(text);
  EXPECT_FALSE(HasUnknown(prompt));
  EXPECT_EQ(*tokenizer_->Decode(Content(prompt)), text);
  EXPECT_FALSE(HasUnknown(Tokenize("\u96e8\u306e\u6771\u4eac\u306e\u8857")));
}

TEST_F(TokenizerTest, EmojiInTheCorpusIsKnownOthersAreUnknown) {
  const TokenizedPrompt known = Tokenize("a cat \U0001F431 sleeping");
  EXPECT_FALSE(HasUnknown(known));
  EXPECT_EQ(*tokenizer_->Decode(Content(known)), "a cat \U0001F431 sleeping");
  EXPECT_TRUE(HasUnknown(Tokenize("a pink \U0001F9A9 flamingo")));  // not in the stand-in's corpus
}

TEST_F(TokenizerTest, CleaningHappensBeforeEncoding) {
  const TokenizedPrompt entities = Tokenize("Tom &amp;amp; Jerry");
  EXPECT_EQ(entities.cleaned_text, "Tom & Jerry");
  EXPECT_EQ(entities.ids, Tokenize("Tom & Jerry").ids);
  const TokenizedPrompt full_width = Tokenize("\uff21\uff22\uff23\uff0c\uff48\uff45\uff4c\uff4c\uff4f\u3000cat");
  EXPECT_EQ(full_width.cleaned_text, "ABC,hello cat");
  EXPECT_EQ(full_width.ids, Tokenize("ABC,hello cat").ids);
  EXPECT_EQ(Tokenize("  a   cat\n").ids, Tokenize("a cat").ids);
  const TokenizedPrompt negative = Tokenize(kWanDefaultNegativePrompt);
  EXPECT_FALSE(HasUnknown(negative));
  EXPECT_EQ(negative.cleaned_text.find("\uff0c"), std::string::npos);
}

TEST_F(TokenizerTest, EmptyPromptIsJustTheEos) {
  for (const char* text : {"", "   \n\t ", "\x01\x02"}) {
    const TokenizedPrompt prompt = Tokenize(text);
    EXPECT_EQ(prompt.length, 1) << Hex(text);
    EXPECT_EQ(prompt.ids[0], TextTokenizer::kEosId);
    EXPECT_EQ(prompt.cleaned_text, "");
  }
}

TEST_F(TokenizerTest, OverLongPromptIsTruncatedTo511PlusEos) {
  std::string text;
  for (int i = 0; i < 120; ++i) text += absl::StrCat("a golden retriever running along a beach number ", i, " ");
  absl::StatusOr<std::vector<int32_t>> content = tokenizer_->EncodeContent(*CleanPrompt(text));
  ASSERT_TRUE(content.ok()) << content.status();
  ASSERT_GT(content->size(), 600u);
  const TokenizedPrompt prompt = Tokenize(text);
  EXPECT_EQ(prompt.length, 512);
  EXPECT_TRUE(prompt.truncated);
  EXPECT_EQ(prompt.ids[511], TextTokenizer::kEosId);
  EXPECT_EQ(std::vector<int32_t>(prompt.ids.begin(), prompt.ids.begin() + 511),
            std::vector<int32_t>(content->begin(), content->begin() + 511));
  EXPECT_EQ(tokenizer_->TokenizeCleaned(*CleanPrompt(text))->ids, prompt.ids);
}

// The truncation boundary: content + EOS fills max_length exactly, one position less truncates.
TEST_F(TokenizerTest, MaxLengthBoundary) {
  const std::string text = "a cat playing piano in a sunlit living room";
  const std::vector<int32_t> content = *tokenizer_->EncodeContent(text);
  const auto fitting = static_cast<int64_t>(content.size()) + 1;
  for (int64_t max_length : {fitting, fitting - 1, int64_t{1}}) {
    absl::StatusOr<std::unique_ptr<TextTokenizer>> tokenizer =
        TextTokenizer::Load(ZOETROPE_STAND_IN_TOKENIZER, TokenizerOptions{.max_length = max_length});
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    absl::StatusOr<TokenizedPrompt> prompt = (*tokenizer)->Tokenize(text);
    ASSERT_TRUE(prompt.ok());
    EXPECT_EQ(static_cast<int64_t>(prompt->ids.size()), max_length);
    EXPECT_EQ(prompt->length, max_length);
    EXPECT_EQ(prompt->truncated, max_length < fitting);
    EXPECT_EQ(prompt->ids.back(), TextTokenizer::kEosId);
    EXPECT_TRUE(std::equal(prompt->ids.begin(), prompt->ids.end() - 1, content.begin()));
  }
  EXPECT_FALSE(TextTokenizer::Load(ZOETROPE_STAND_IN_TOKENIZER, TokenizerOptions{.max_length = 0}).ok());
}

TEST_F(TokenizerTest, InvalidUtf8IsAnError) {
  absl::StatusOr<TokenizedPrompt> prompt = tokenizer_->Tokenize("a cat \xe7\x8c");
  ASSERT_FALSE(prompt.ok());
  EXPECT_EQ(prompt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(prompt.status().message(), "byte offset 6")) << prompt.status();
}

TEST_F(TokenizerTest, LoadResolvesDirectoriesAndReportsErrors) {
  const fs::path checkpoint = ScratchPath("checkpoint");
  fs::create_directories(checkpoint / "google" / "umt5-xxl");
  fs::copy_file(ZOETROPE_STAND_IN_TOKENIZER, checkpoint / "google" / "umt5-xxl" / "spiece.model",
                fs::copy_options::overwrite_existing);
  absl::StatusOr<std::unique_ptr<TextTokenizer>> from_directory = TextTokenizer::Load(checkpoint.string());
  ASSERT_TRUE(from_directory.ok()) << from_directory.status();
  EXPECT_EQ((*from_directory)->Tokenize("a cat")->ids, Tokenize("a cat").ids);

  absl::StatusOr<std::unique_ptr<TextTokenizer>> missing = TextTokenizer::Load(ScratchPath("nothing-here"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(missing.status().message(), "nothing-here"));

  const std::string garbage = ScratchPath("garbage.model");
  std::ofstream(garbage) << "this is not a protobuf";
  absl::StatusOr<std::unique_ptr<TextTokenizer>> corrupt = TextTokenizer::Load(garbage);
  ASSERT_FALSE(corrupt.ok());
  EXPECT_TRUE(absl::StrContains(corrupt.status().message(), garbage)) << corrupt.status();
}

TEST(StandInTokenizer, BuildIsDeterministic) {
  const std::string directory = ScratchPath("rebuilt-tokenizer");
  ASSERT_TRUE(RunCommand(absl::StrCat(ZOETROPE_SOURCE_DIR, "/scripts/build-tokenizer.sh ", directory),
                  ScratchPath("build-tokenizer.log")));
  auto read = [](const std::string& path) {
    std::ifstream file(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(file), {});
  };
  const std::string rebuilt = read(directory + "/spiece.model");
  EXPECT_GT(rebuilt.size(), 1000u);
  EXPECT_TRUE(rebuilt == read(ZOETROPE_STAND_IN_TOKENIZER)) << "two builds of the stand-in tokenizer differ";
}

// ---- CPU text operators ---------------------------------------------------------------------------------

TEST(CpuTextOps, GatherRowsCopiesRowsAndConverts) {
  std::unique_ptr<Backend> backend = CreateCpuBackend(1);
  const Tensor table = HostTensorFromFloats({1.5f, -2.f, 3.25f, 4.f, 5.f, -6.5f}, {3, 2}, DType::kBF16);
  Tensor ids = Tensor::Host({4}, DType::kI32);
  const int32_t values[] = {2, 0, 2, 1};
  std::copy(values, values + 4, ids.data<int32_t>());
  const Tensor gathered = backend->GatherRows(table, backend->Upload(ids, DType::kI32), DType::kF32);
  ASSERT_EQ(gathered.shape(), Shape({4, 2}));
  EXPECT_EQ(ToFloatVector(gathered), std::vector<float>({5.f, -6.5f, 1.5f, -2.f, 5.f, -6.5f, 3.25f, 4.f}));
  EXPECT_EQ(backend->GatherRows(table, backend->Upload(Tensor::Host({0}, DType::kI32), DType::kI32), DType::kF32)
                .shape(),
            Shape({0, 2}));
}

TEST(CpuTextOps, AttentionWithBiasMatchesADoubleLoopAndMasks) {
  std::unique_ptr<Backend> backend = CreateCpuBackend(1);
  const int64_t queries = 5, keys = 7, heads = 3, head_dim = 4;
  std::mt19937 random(7);
  std::normal_distribution<float> normal;
  auto random_values = [&](int64_t count) {
    std::vector<float> v(static_cast<size_t>(count));
    for (float& x : v) x = normal(random);
    return v;
  };
  const std::vector<float> q = random_values(queries * heads * head_dim), k = random_values(keys * heads * head_dim),
                           v = random_values(keys * heads * head_dim);
  std::vector<float> bias = random_values(heads * queries * keys);
  const int64_t real_keys = 4;  // keys 4..6 masked with the lowest float, as the encoder does
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < queries; ++i)
      for (int64_t j = real_keys; j < keys; ++j) bias[(h * queries + i) * keys + j] = std::numeric_limits<float>::lowest();
  const float scale = 0.7f;
  const Tensor out = backend->AttentionWithBias(HostTensorFromFloats(q, {queries, heads, head_dim}),
                                                HostTensorFromFloats(k, {keys, heads, head_dim}),
                                                HostTensorFromFloats(v, {keys, heads, head_dim}),
                                                HostTensorFromFloats(bias, {heads, queries, keys}), scale);
  std::vector<float> expected(static_cast<size_t>(queries * heads * head_dim));
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < queries; ++i) {
      std::vector<double> weights(static_cast<size_t>(real_keys));
      double sum = 0.0;
      for (int64_t j = 0; j < real_keys; ++j) {
        double dot = 0.0;
        for (int64_t c = 0; c < head_dim; ++c) dot += double{q[(i * heads + h) * head_dim + c]} * k[(j * heads + h) * head_dim + c];
        weights[j] = std::exp(scale * dot + bias[(h * queries + i) * keys + j]);
        sum += weights[j];
      }
      for (int64_t c = 0; c < head_dim; ++c) {
        double value = 0.0;
        for (int64_t j = 0; j < real_keys; ++j) value += weights[j] / sum * v[(j * heads + h) * head_dim + c];
        expected[(i * heads + h) * head_dim + c] = static_cast<float>(value);
      }
    }
  }
  EXPECT_LE(RelativeL2(expected, ToFloatVector(out)), 1e-6);
}

TEST(CpuTextOps, MultiplyIsElementWise) {
  std::unique_ptr<Backend> backend = CreateCpuBackend(1);
  const Tensor product = backend->Multiply(HostTensorFromFloats({1.f, -2.f, 3.f, 0.5f}, {2, 2}),
                                           HostTensorFromFloats({4.f, 5.f, -6.f, 8.f}, {2, 2}, DType::kBF16));
  EXPECT_EQ(product.dtype(), DType::kF32);
  EXPECT_EQ(ToFloatVector(product), std::vector<float>({4.f, -10.f, -18.f, 4.f}));
}

// ---- umT5 encoder --------------------------------------------------------------------------------------------

TEST(Umt5Config, PresetsAndParameterCount) {
  const Umt5Config xxl = *Umt5ConfigByName("umt5-xxl");
  int64_t count = 0;
  for (const ParameterSpec& spec : Umt5Parameters(xxl)) count += NumElements(spec.shape);
  EXPECT_EQ(count, 5'680'910'336);  // spec §6.1
  const Umt5Config tiny = *Umt5ConfigByName("tiny");
  EXPECT_EQ(tiny.model_dim, WanDitConfigByName("tiny")->text_dim);  // feeds the tiny DiT directly
  EXPECT_EQ(xxl.model_dim, WanDitConfigByName("wan2.1-t2v-14b")->text_dim);
  EXPECT_FALSE(Umt5ConfigByName("t5-small").ok());
  Umt5Config broken = tiny;
  broken.num_buckets = 31;
  EXPECT_TRUE(absl::StrContains(broken.Validate().message(), "num_buckets"));
}

TEST(Umt5Config, HuggingFaceNamesFollowTheSpecTable) {
  EXPECT_EQ(Umt5HuggingFaceName("token_embedding.weight"), "shared.weight");
  EXPECT_EQ(Umt5HuggingFaceName("blocks.3.attn.q.weight"), "encoder.block.3.layer.0.SelfAttention.q.weight");
  EXPECT_EQ(Umt5HuggingFaceName("blocks.11.pos_embedding.embedding.weight"),
            "encoder.block.11.layer.0.SelfAttention.relative_attention_bias.weight");
  EXPECT_EQ(Umt5HuggingFaceName("blocks.0.ffn.gate.0.weight"), "encoder.block.0.layer.1.DenseReluDense.wi_0.weight");
  EXPECT_EQ(Umt5HuggingFaceName("blocks.0.ffn.fc1.weight"), "encoder.block.0.layer.1.DenseReluDense.wi_1.weight");
  EXPECT_EQ(Umt5HuggingFaceName("blocks.0.ffn.fc2.weight"), "encoder.block.0.layer.1.DenseReluDense.wo.weight");
  EXPECT_EQ(Umt5HuggingFaceName("blocks.2.norm2.weight"), "encoder.block.2.layer.1.layer_norm.weight");
  EXPECT_EQ(Umt5HuggingFaceName("norm.weight"), "encoder.final_layer_norm.weight");
}

// The table of spec §6.2 (bucket offset by n = |rel|, +16 for keys after the query).
TEST(Umt5Encoder, RelativePositionBucketMatchesTheSpecTable) {
  auto expected_offset = [](int64_t n) {
    if (n < 8) return n;
    if (n <= 11) return int64_t{8};
    if (n <= 15) return int64_t{9};
    if (n <= 22) return int64_t{10};
    if (n <= 31) return int64_t{11};
    if (n <= 45) return int64_t{12};
    if (n <= 63) return int64_t{13};
    if (n <= 90) return int64_t{14};
    return int64_t{15};
  };
  for (int64_t n = 0; n <= 1100; ++n) {
    EXPECT_EQ(RelativePositionBucket(-n, 32, 128), expected_offset(n)) << "rel = " << -n;
    if (n > 0) {
      EXPECT_EQ(RelativePositionBucket(n, 32, 128), 16 + expected_offset(n)) << "rel = " << n;
    }
  }
}

class Umt5EncoderTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    backend_ = CreateCpuBackend(1).release();
    wan_path_ = new std::string(ScratchPath("umt5_tiny_wan.safetensors"));
    hf_path_ = new std::string(ScratchPath("umt5_tiny_hf.safetensors"));
    const Umt5Config tiny = *Umt5ConfigByName("tiny");
    Umt5RandomWeightsOptions options;
    options.seed = 7;
    ASSERT_TRUE(WriteRandomUmt5Weights(tiny, options, *wan_path_).ok());
    options.naming = Umt5Naming::kHuggingFace;
    ASSERT_TRUE(WriteRandomUmt5Weights(tiny, options, *hf_path_).ok());
  }
  static void TearDownTestSuite() {
    delete backend_;
    delete wan_path_;
    delete hf_path_;
  }
  static std::unique_ptr<Umt5Encoder> LoadEncoder(const std::string& path, const std::string& config = "") {
    absl::StatusOr<std::unique_ptr<Umt5Encoder>> encoder = Umt5Encoder::Load(path, *backend_, config);
    EXPECT_TRUE(encoder.ok()) << encoder.status();
    return encoder.ok() ? *std::move(encoder) : nullptr;
  }
  static std::vector<float> EncodeToFloats(Umt5Encoder& encoder, const std::vector<int32_t>& ids, int64_t length,
                                           PaddingMode mode) {
    absl::StatusOr<Tensor> hidden = encoder.Encode(ids, length, mode);
    EXPECT_TRUE(hidden.ok()) << hidden.status();
    if (!hidden.ok()) return {};
    EXPECT_EQ(hidden->shape(), Shape({length, encoder.config().model_dim}));
    EXPECT_EQ(hidden->dtype(), DType::kF32);
    return ToFloatVector(backend_->ToHost(*hidden));
  }

  static Backend* backend_;
  static std::string* wan_path_;
  static std::string* hf_path_;
};
Backend* Umt5EncoderTest::backend_ = nullptr;
std::string* Umt5EncoderTest::wan_path_ = nullptr;
std::string* Umt5EncoderTest::hf_path_ = nullptr;

TEST_F(Umt5EncoderTest, InfersTheConfigFromTheShapes) {
  std::unique_ptr<Umt5Encoder> encoder = LoadEncoder(*hf_path_);
  ASSERT_NE(encoder, nullptr);
  EXPECT_EQ(encoder->config().name, "tiny");
  EXPECT_EQ(encoder->config().num_heads, 4);
  EXPECT_EQ(encoder->config().head_dim, 16);
  EXPECT_EQ(encoder->config().ffn_dim, 128);
  EXPECT_EQ(encoder->config().num_layers, 2);
  EXPECT_EQ(encoder->config().vocab_size, 1024);
}

// The C++ encoder against the float64 reference, on random weights, for several lengths with and
// without padding, in both padding modes and both namings.
TEST_F(Umt5EncoderTest, MatchesTheFloat64Reference) {
  struct Case {
    std::string name;
    std::vector<int32_t> ids;
    int64_t length;
  };
  std::vector<Case> cases;
  std::mt19937 random(11);
  auto random_case = [&](const std::string& name, int64_t positions, int64_t length) {
    Case c{name, std::vector<int32_t>(static_cast<size_t>(positions), TextTokenizer::kPadId), length};
    for (int64_t i = 0; i + 1 < length; ++i) c.ids[i] = 2 + static_cast<int32_t>(random() % 1022);
    c.ids[length - 1] = TextTokenizer::kEosId;
    cases.push_back(c);
  };
  random_case("eos_only", 8, 1);
  random_case("short", 32, 7);
  random_case("unpadded", 24, 24);
  random_case("long", 256, 200);  // distances beyond 128: every bucket in use
  {
    absl::StatusOr<std::unique_ptr<TextTokenizer>> tokenizer =
        TextTokenizer::Load(ZOETROPE_STAND_IN_TOKENIZER, TokenizerOptions{.max_length = 64});
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    absl::StatusOr<TokenizedPrompt> prompt = (*tokenizer)->Tokenize("a paper boat drifting down a rainy street");
    ASSERT_TRUE(prompt.ok());
    cases.push_back({"prompt", prompt->ids, prompt->length});
  }
  std::vector<std::pair<std::string, Tensor>> inputs;
  for (const Case& c : cases) {
    const auto positions = static_cast<int64_t>(c.ids.size());
    Tensor ids = Tensor::Host({positions}, DType::kI32), mask = Tensor::Host({positions}, DType::kI32);
    for (int64_t i = 0; i < positions; ++i) {
      ids.data<int32_t>()[i] = c.ids[i];
      mask.data<int32_t>()[i] = i < c.length ? 1 : 0;
    }
    inputs.emplace_back(c.name + ".ids", ids);
    inputs.emplace_back(c.name + ".mask", mask);
  }
  const std::string cases_path = ScratchPath("umt5_cases.safetensors");
  const std::string reference_path = ScratchPath("umt5_reference.safetensors");
  ASSERT_TRUE(WriteSafetensors(cases_path, inputs).ok());
  ASSERT_TRUE(RunCommand(absl::StrCat(ZOETROPE_REFERENCE_PYTHON, " ", ZOETROPE_SOURCE_DIR,
                               "/tests/reference/umt5_reference.py --weights ", *wan_path_, " --cases ", cases_path,
                               " --out ", reference_path),
                  ScratchPath("umt5_reference.log")));
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> reference = SafetensorsFile::Open(reference_path);
  ASSERT_TRUE(reference.ok()) << reference.status();

  // The bucket function against the reference's own, over ±600.
  absl::StatusOr<Tensor> buckets = (*reference)->Get("buckets");
  ASSERT_TRUE(buckets.ok());
  ASSERT_EQ(buckets->numel(), 1201);
  for (int64_t rel = -600; rel <= 600; ++rel) {
    ASSERT_EQ(RelativePositionBucket(rel, 32, 128), buckets->data<int64_t>()[rel + 600]) << "rel = " << rel;
  }

  std::unique_ptr<Umt5Encoder> wan = LoadEncoder(*wan_path_, "tiny");
  std::unique_ptr<Umt5Encoder> hugging_face = LoadEncoder(*hf_path_);
  ASSERT_TRUE(wan && hugging_face);
  for (const Case& c : cases) {
    absl::StatusOr<Tensor> expected_tensor = (*reference)->Get(c.name + ".hidden");
    ASSERT_TRUE(expected_tensor.ok()) << expected_tensor.status();
    ASSERT_EQ(expected_tensor->shape(), Shape({c.length, 64}));
    const std::vector<float> expected = ToFloatVector(*expected_tensor);
    const std::vector<float> real_only = EncodeToFloats(*wan, c.ids, c.length, PaddingMode::kRealTokensOnly);
    const std::vector<float> padded = EncodeToFloats(*wan, c.ids, c.length, PaddingMode::kPadded);
    const std::vector<float> from_hf = EncodeToFloats(*hugging_face, c.ids, c.length, PaddingMode::kRealTokensOnly);
    const double error_real = RelativeL2(expected, real_only), error_padded = RelativeL2(expected, padded);
    const double modes_apart = RelativeL2(padded, real_only);
    std::printf("case %-9s L=%3lld P=%3zu  rel_l2 real-tokens %.3g  padded %.3g  (modes apart %.3g)\n",
                c.name.c_str(), static_cast<long long>(c.length), c.ids.size(), error_real, error_padded, modes_apart);
    EXPECT_LE(error_real, 1e-4) << c.name;
    EXPECT_LE(error_padded, 1e-4) << c.name;
    EXPECT_LE(modes_apart, 1e-6) << c.name;
    EXPECT_EQ(from_hf, real_only) << c.name << ": the two namings must load identical weights";
  }
}

TEST_F(Umt5EncoderTest, AlternativeHfEmbeddingNameLoads) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(*hf_path_);
  ASSERT_TRUE(file.ok());
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const std::string& key : (*file)->Keys()) {
    tensors.emplace_back(key == "shared.weight" ? "encoder.embed_tokens.weight" : key, *(*file)->Get(key));
  }
  const std::string path = ScratchPath("umt5_tiny_embed_tokens.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, tensors).ok());
  std::unique_ptr<Umt5Encoder> renamed = LoadEncoder(path), original = LoadEncoder(*wan_path_);
  ASSERT_TRUE(renamed && original);
  const std::vector<int32_t> ids = {17, 400, 93, 1, 0, 0};
  EXPECT_EQ(EncodeToFloats(*renamed, ids, 4, PaddingMode::kRealTokensOnly),
            EncodeToFloats(*original, ids, 4, PaddingMode::kRealTokensOnly));
}

TEST_F(Umt5EncoderTest, LoadErrorsNameFileKeyAndShapes) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(*wan_path_);
  ASSERT_TRUE(file.ok());
  auto rewrite = [&](const std::string& name, const std::function<bool(std::string&, Tensor&)>& edit) {
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (std::string key : (*file)->Keys()) {
      Tensor tensor = *(*file)->Get(key);
      if (edit(key, tensor)) tensors.emplace_back(key, tensor);
    }
    const std::string path = ScratchPath(name);
    EXPECT_TRUE(WriteSafetensors(path, tensors).ok());
    return path;
  };
  const std::string wrong_shape = rewrite("wrong_shape.safetensors", [](std::string& key, Tensor& tensor) {
    if (key == "blocks.1.attn.k.weight") tensor = Tensor::Host({64, 32}, DType::kF32);
    return true;
  });
  absl::StatusOr<std::unique_ptr<Umt5Encoder>> encoder = Umt5Encoder::Load(wrong_shape, *backend_, "tiny");
  ASSERT_FALSE(encoder.ok());
  EXPECT_EQ(encoder.status().code(), absl::StatusCode::kInvalidArgument);
  for (const std::string& part : {wrong_shape, std::string("blocks.1.attn.k.weight"), std::string("[64, 32]"),
                                  std::string("[64, 64]")}) {
    EXPECT_TRUE(absl::StrContains(encoder.status().message(), part)) << encoder.status();
  }
  const std::string missing = rewrite("missing.safetensors", [](std::string& key, Tensor&) {
    return key != "blocks.0.ffn.fc2.weight";
  });
  encoder = Umt5Encoder::Load(missing, *backend_, "tiny");
  ASSERT_FALSE(encoder.ok());
  EXPECT_EQ(encoder.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(encoder.status().message(), "blocks.0.ffn.fc2.weight")) << encoder.status();
  // The tiny file against the umt5-xxl preset: the first mismatch is the embedding.
  encoder = Umt5Encoder::Load(*wan_path_, *backend_, "umt5-xxl");
  ASSERT_FALSE(encoder.ok());
  EXPECT_TRUE(absl::StrContains(encoder.status().message(), "[1024, 64], expected [256384, 4096]"))
      << encoder.status();
  const std::string neither = rewrite("neither.safetensors", [](std::string& key, Tensor&) {
    return key != "token_embedding.weight";
  });
  encoder = Umt5Encoder::Load(neither, *backend_);
  ASSERT_FALSE(encoder.ok());
  EXPECT_TRUE(absl::StrContains(encoder.status().message(), "shared.weight")) << encoder.status();
}

TEST_F(Umt5EncoderTest, RejectsIdsOutsideTheVocabulary) {
  std::unique_ptr<Umt5Encoder> encoder = LoadEncoder(*wan_path_);
  ASSERT_NE(encoder, nullptr);
  absl::StatusOr<Tensor> hidden = encoder->Encode({5, 250000, 1}, 3);
  ASSERT_FALSE(hidden.ok());
  EXPECT_EQ(hidden.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(hidden.status().message(), "250000 at position 1")) << hidden.status();
  EXPECT_FALSE(encoder->Encode({5, 1}, 0).ok());
  EXPECT_FALSE(encoder->Encode({5, 1}, 3).ok());
}

TEST_F(Umt5EncoderTest, RandomWeightsAreDeterministic) {
  const Umt5Config tiny = *Umt5ConfigByName("tiny");
  Umt5RandomWeightsOptions options;
  options.seed = 7;
  const std::string again = ScratchPath("umt5_tiny_again.safetensors");
  ASSERT_TRUE(WriteRandomUmt5Weights(tiny, options, again).ok());
  options.seed = 8;
  const std::string other = ScratchPath("umt5_tiny_seed8.safetensors");
  ASSERT_TRUE(WriteRandomUmt5Weights(tiny, options, other).ok());
  auto values = [](const std::string& path) {
    return ToFloatVector(*(*SafetensorsFile::Open(path))->Get("blocks.1.attn.v.weight"));
  };
  EXPECT_EQ(values(again), values(*wan_path_));
  EXPECT_NE(values(other), values(*wan_path_));
  options.seed = 7;
  options.dtype = DType::kBF16;
  const std::string bf16 = ScratchPath("umt5_tiny_bf16.safetensors");
  ASSERT_TRUE(WriteRandomUmt5Weights(tiny, options, bf16).ok());
  std::unique_ptr<Umt5Encoder> encoder = LoadEncoder(bf16);
  ASSERT_NE(encoder, nullptr);
  std::unique_ptr<Umt5Encoder> f32 = LoadEncoder(*wan_path_);
  const std::vector<int32_t> ids = {17, 400, 93, 1};
  // BF16 storage rounds the weights (relative 2⁻⁹), so the outputs differ a little, not a lot.
  const double difference = RelativeL2(EncodeToFloats(*encoder, ids, 4, PaddingMode::kRealTokensOnly),
                                       EncodeToFloats(*f32, ids, 4, PaddingMode::kRealTokensOnly));
  EXPECT_GT(difference, 0.0);
  EXPECT_LT(difference, 0.05);
}

// ---- prompt cache ---------------------------------------------------------------------------------------------

TEST(PromptCache, LeastRecentlyUsedEviction) {
  PromptCache cache(2);
  const Tensor a = Tensor::Host({1}, DType::kF32), b = Tensor::Host({1}, DType::kF32), c = Tensor::Host({1}, DType::kF32);
  cache.Insert("a", a);
  cache.Insert("b", b);
  EXPECT_TRUE(cache.Find("a").has_value());  // a is now the most recently used
  cache.Insert("c", c);                      // evicts b
  EXPECT_FALSE(cache.Find("b").has_value());
  EXPECT_EQ(cache.Find("a")->raw_data(), a.raw_data());
  EXPECT_EQ(cache.Find("c")->raw_data(), c.raw_data());
  EXPECT_EQ(cache.size(), 2u);
  EXPECT_EQ(cache.hits(), 3);
  EXPECT_EQ(cache.misses(), 1);
  EXPECT_EQ(cache.evictions(), 1);

  PromptCache disabled(0);
  disabled.Insert("a", a);
  EXPECT_FALSE(disabled.Find("a").has_value());
  EXPECT_EQ(disabled.size(), 0u);
}

TEST_F(Umt5EncoderTest, PromptEncoderEncodesEachCleanedPromptOnce) {
  absl::StatusOr<std::unique_ptr<TextTokenizer>> tokenizer = TextTokenizer::Load(ZOETROPE_STAND_IN_TOKENIZER);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  std::unique_ptr<Umt5Encoder> encoder = LoadEncoder(*wan_path_);
  ASSERT_NE(encoder, nullptr);
  PromptEncoder prompts(**tokenizer, *encoder, /*cache_capacity=*/4);

  absl::StatusOr<Tensor> first = prompts.Encode("a cat playing piano");
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<Tensor> second = prompts.Encode("  a cat   playing\npiano ");  // same cleaned text
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->raw_data(), first->raw_data());  // the very same tensor
  EXPECT_EQ(prompts.cache().misses(), 1);
  EXPECT_EQ(prompts.cache().hits(), 1);
  // What the cache returns is what the encoder computes.
  const TokenizedPrompt tokens = *(*tokenizer)->Tokenize("a cat playing piano");
  EXPECT_EQ(ToFloatVector(*first), ToFloatVector(*encoder->Encode(tokens)));
  EXPECT_EQ(first->shape(), Shape({tokens.length, 64}));

  absl::StatusOr<Tensor> negative = prompts.EncodeNegative("");
  ASSERT_TRUE(negative.ok());
  EXPECT_EQ(prompts.EncodeNegative("")->raw_data(), negative->raw_data());
  EXPECT_EQ(prompts.Encode(kWanDefaultNegativePrompt)->raw_data(), negative->raw_data());
  EXPECT_EQ(prompts.cache().misses(), 2);
  EXPECT_EQ(prompts.cache().hits(), 3);
  EXPECT_NE(prompts.EncodeNegative("blurry")->raw_data(), negative->raw_data());

  absl::StatusOr<Tensor> invalid = prompts.Encode("bad \xff");
  EXPECT_EQ(invalid.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace zoetrope
