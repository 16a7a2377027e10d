// Our sentencepiece reader (worker/engine/sentencepiece_model.h) against Debian's sentencepiece tools:
// every line of the shipped prompt corpus, of hand-written hard cases and of generated mixed-script lines
// must encode to exactly the ids `spm_encode --output_format=id` gives, and those ids must decode to
// exactly what `spm_decode --input_format=id` gives, for four models: the stand-in tokenizer (nmt_nfkc),
// and three trained here with spm_train: byte fallback (nmt_nfkc), a small vocabulary with user-defined
// and control symbols (nfkc_cf, extra whitespace kept), and identity normalization with the whitespace
// marker as a suffix. Malformed model files (truncated, bytes flipped, crafted bad fields) must give
// errors naming the file, never a crash.
//
// Paths come from tests/CMakeLists.txt: ZOETROPE_SOURCE_DIR and ZOETROPE_STAND_IN_TOKENIZER.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "worker/engine/sentencepiece_model.h"

namespace zoetrope::internal {
namespace {

namespace fs = std::filesystem;

fs::path ScratchDirectory() { return fs::path(testing::TempDir()) / absl::StrCat("sentencepiece_test_", getpid()); }

std::string ScratchPath(const std::string& name) {
  fs::create_directories(ScratchDirectory());
  return (ScratchDirectory() / name).string();
}

class ScratchCleanup : public testing::Environment {
 public:
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(ScratchDirectory(), ignored);
  }
};
[[maybe_unused]] testing::Environment* const scratch_cleanup = testing::AddGlobalTestEnvironment(new ScratchCleanup);

std::string ReadFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(file), {});
}

void WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream file(path, std::ios::binary);
  file << bytes;
}

// Runs a shell command with its output in `log`; on failure the log goes into the test output.
bool RunCommand(const std::string& command, const std::string& log) {
  const int status = std::system(absl::StrCat(command, " >", log, " 2>&1").c_str());
  if (status != 0) {
    ADD_FAILURE() << "command failed (" << status << "): " << command << "\n" << ReadFile(log);
    return false;
  }
  return true;
}

// The lines of a file as std::getline reads them (what spm_encode processes one by one).
std::vector<std::string> ReadLines(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::vector<std::string> lines;
  for (std::string line; std::getline(file, line);) lines.push_back(line);
  return lines;
}

std::string Printable(absl::string_view bytes) {
  std::string out;
  for (unsigned char c : bytes) {
    if (c < 0x20 || c == 0x7F) {
      absl::StrAppend(&out, "\\x", absl::Hex(c, absl::kZeroPad2));
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

std::string Utf8(char32_t code_point) {
  std::string out;
  if (code_point < 0x80) {
    out.push_back(static_cast<char>(code_point));
  } else if (code_point < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (code_point >> 6)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  } else if (code_point < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (code_point >> 12)));
    out.push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (code_point >> 18)));
    out.push_back(static_cast<char>(0x80 | ((code_point >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((code_point >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (code_point & 0x3F)));
  }
  return out;
}

// Inputs where normalization, whitespace handling and unknown characters matter.
std::vector<std::string> HardCases() {
  return {
      "",
      " ",
      "   ",
      "\t",
      " \t \t ",
      "a\tb",
      "  leading spaces",
      "trailing spaces   ",
      "  both ends  ",
      "multiple     spaces    inside   a    line",
      "tab\t\tseparated\tvalues\t",
      "a cat playing piano in a sunlit living room",
      "A CAT PLAYING PIANO IN A SUNLIT LIVING ROOM",
      // CJK and other scripts
      "\u4e00\u53ea\u5c0f\u732b\u5728\u9633\u5149\u4e0b\u7684\u7a97\u53f0\u4e0a\u7761\u89c9",
      "\u96e8\u306e\u6771\u4eac\u306e\u8857\u3001\u30cd\u30aa\u30f3\u304c\u5149\u308b",
      "\ud55c\uad6d\uc5b4 \ubb38\uc7a5\uc785\ub2c8\ub2e4",
      "\u041f\u0440\u0438\u0432\u0435\u0442 \u043c\u0438\u0440",
      "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645",
      "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd",
      "\u0e44\u0e17\u0e22 \u0926\u0947\u0935\u0928\u093e\u0917\u0930\u0940",
      "\u8272\u8c03\u8273\u4e3d\uff0c\u8fc7\u66dd\uff0c\u9759\u6001\uff0c\u7ec6\u8282\u6a21\u7cca\u4e0d\u6e05",
      // emoji (one in the corpus, others not), ZWJ sequences, flags, variation selectors
      "a cat \U0001F431 sleeping",
      "a pink \U0001F9A9 flamingo",
      "family \U0001F468\u200D\U0001F469\u200D\U0001F467 emoji",
      "\U0001F1EF\U0001F1F5 flag and \u2764\uFE0F heart",
      "\U0001F3A5 camera rolling",
      // full-width and half-width forms, compatibility characters
      "\uff21\uff22\uff23\uff0c\uff48\uff45\uff4c\uff4c\uff4f\u3000\uff43\uff41\uff54",
      "\uff11\uff12\uff13 \uff14\uff15\uff16\uff01\uff1f",
      "\uff76\uff80\uff76\uff85 half-width katakana \uff8a\uff9f",
      "\ufb01ne \ufb02ower \u216b roman \u2460 circled \u24b6",
      "\u338f \u337f \u00bd \u2153 x\u00b2 \u2122 \u2126 \u212b",
      // combining marks, precomposed and decomposed
      "e\u0301cole \u00e9cole",
      "A\u030a \u00c5 \u212b",
      "n\u0303 z\u0351\u0300\u0301\u0302 zalgo",
      "\u1100\u1161\u11a8 jamo",
      // spaces and invisible characters of other kinds
      "zero\u200bwidth joiner\u200dand\u200cnon",
      "soft\u00adhyphen bom\ufeffinside",
      "nbsp\u00a0here ideographic\u3000space en\u2002space",
      "line\u2028separator paragraph\u2029separator",
      "\u3000\u3000leading ideographic spaces",
      "trailing nbsp\u00a0\u00a0",
      "bell\x07char and \x01\x02 controls",
      "\x0b\x0c vertical tab and form feed",
      // characters no model knows
      "\u16a0\u16c7\u16bb runes",
      "\U00013000 hieroglyph \ua66e",
      "\u13a0 cherokee \U0001D400 math bold",
      "\U0010FFFD private use \ue000",
      // punctuation, quotes, digits, repetitions
      "\u201cquotes\u201d \u2018single\u2019 \u2014 dash \u2026 ellipsis",
      "a--b ... !!! ??? ,,, ;;",
      "\"quoted\" 'single' (parens) [brackets] {braces}",
      "1234567890 3.14159 1,000,000 2025-03-01",
      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
      "the the the the the the",
      // the model's own markers and special pieces as literal text
      "\u2581 literal lower block \u2581\u2581 inside",
      "<unk> <s> </s> <pad> <ctrl> <sep> <0x41>",
      "cat<sep>dog catcat concatenate CAT",
      // not UTF-8: each bad byte normalizes to U+FFFD
      "\xff\xfe bad bytes",
      "caf\xc3",
      "\xed\xa0\x80 surrogate",
      "\xc0\xaf overlong",
      "\xf4\x90\x80\x80 beyond U+10FFFF",
      "\x80 stray continuation",
  };
}

// Lines mixing corpus words with characters from many blocks and runs of spaces and tabs.
std::vector<std::string> GeneratedCases(const std::vector<std::string>& corpus, int count) {
  std::vector<std::string> words;
  for (const std::string& line : corpus) {
    for (absl::string_view word : absl::StrSplit(line, ' ', absl::SkipEmpty())) words.emplace_back(word);
  }
  const std::vector<std::pair<char32_t, char32_t>> blocks = {
      {0x21, 0x7E},       {0xA0, 0xFF},       {0x100, 0x17F},     {0x300, 0x36F},   {0x370, 0x3FF},
      {0x400, 0x4FF},     {0x2000, 0x206F},   {0x2100, 0x218F},   {0x2460, 0x24FF}, {0x3000, 0x30FF},
      {0x3300, 0x33FF},   {0x4E00, 0x4FFF},   {0xAC00, 0xAC80},   {0xFB00, 0xFB4F}, {0xFE30, 0xFE6F},
      {0xFF01, 0xFFEE},   {0x1F300, 0x1F64F}, {0x1D400, 0x1D4FF}, {0x2581, 0x2581}, {0xE000, 0xE010},
      {0x1, 0x1F},
  };
  std::mt19937 random(20250301);
  std::vector<std::string> lines;
  for (int n = 0; n < count; ++n) {
    std::string line;
    const int tokens = std::uniform_int_distribution<int>(1, 12)(random);
    for (int t = 0; t < tokens; ++t) {
      const int kind = std::uniform_int_distribution<int>(0, 9)(random);
      if (kind < 5) {
        line += words[std::uniform_int_distribution<size_t>(0, words.size() - 1)(random)];
      } else if (kind < 8) {
        const auto& block = blocks[std::uniform_int_distribution<size_t>(0, blocks.size() - 1)(random)];
        const int length = std::uniform_int_distribution<int>(1, 4)(random);
        for (int i = 0; i < length; ++i) {
          char32_t code_point = std::uniform_int_distribution<char32_t>(block.first, block.second)(random);
          if (code_point == '\n' || code_point == '\r') code_point = ' ';
          line += Utf8(code_point);
        }
      }
      const int spaces = std::uniform_int_distribution<int>(0, 10)(random);
      line += spaces < 7 ? " " : spaces < 9 ? "  " : spaces < 10 ? "\t" : "";
    }
    lines.push_back(line);
  }
  return lines;
}

// ---- protobuf wire format, to craft bad models -----------------------------------------------------------

std::string Varint(uint64_t value) {
  std::string out;
  do {
    out.push_back(static_cast<char>((value & 0x7F) | (value > 0x7F ? 0x80 : 0)));
    value >>= 7;
  } while (value != 0);
  return out;
}
std::string VarintField(uint32_t field, uint64_t value) { return Varint(field << 3 | 0) + Varint(value); }
std::string BytesField(uint32_t field, const std::string& bytes) {
  return Varint(field << 3 | 2) + Varint(bytes.size()) + bytes;
}
std::string Piece(const std::string& text, int type) {
  return BytesField(1, BytesField(1, text) + std::string("\x15\x00\x00\x80\xbf", 5) + VarintField(3, type));
}

// ---- the comparison --------------------------------------------------------------------------------------

struct ModelCase {
  std::string name;
  std::string path;
};

class SentencePieceTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    corpus_ = new std::vector<std::string>(ReadLines(std::string(ZOETROPE_SOURCE_DIR) + "/assets/tokenizer/prompt_corpus.txt"));
    lines_ = new std::vector<std::string>(*corpus_);
    for (std::string& line : HardCases()) lines_->push_back(std::move(line));
    for (std::string& line : GeneratedCases(*corpus_, 300)) lines_->push_back(std::move(line));
    std::string text;
    for (const std::string& line : *lines_) absl::StrAppend(&text, line, "\n");
    lines_path_ = new std::string(ScratchPath("lines.txt"));
    WriteFile(*lines_path_, text);

    models_ = new std::vector<ModelCase>{{"stand-in", ZOETROPE_STAND_IN_TOKENIZER}};
    const std::string corpus_path = std::string(ZOETROPE_SOURCE_DIR) + "/assets/tokenizer/prompt_corpus.txt";
    const std::string common = absl::StrCat("spm_train --input=", corpus_path,
                                            " --model_type=unigram --num_threads=1 --minloglevel=2"
                                            " --hard_vocab_limit=false --shuffle_input_sentence=false");
    const std::vector<std::pair<std::string, std::string>> trained = {
        {"byte-fallback", "--vocab_size=700 --byte_fallback=true --character_coverage=0.995"},
        {"small-user-defined",
         "--vocab_size=300 --character_coverage=0.98 --normalization_rule_name=nfkc_cf --remove_extra_whitespaces=false"
         " --user_defined_symbols=cat,'<sep>',\xF0\x9F\x8E\xA5 --control_symbols='<ctrl>'"
         " --pad_id=3 --unk_id=1 --bos_id=0 --eos_id=2"},
        {"suffix-identity",
         "--vocab_size=700 --character_coverage=1.0 --normalization_rule_name=identity"
         " --treat_whitespace_as_suffix=true --split_digits=true"},
    };
    for (const auto& [name, options] : trained) {
      const std::string prefix = ScratchPath(name);
      if (!RunCommand(absl::StrCat(common, " --model_prefix=", prefix, " ", options), prefix + ".train.log")) continue;
      models_->push_back({name, prefix + ".model"});
    }
  }

  static void TearDownTestSuite() {
    delete corpus_;
    delete lines_;
    delete lines_path_;
    delete models_;
  }

  static std::unique_ptr<SentencePieceModel> LoadModel(const std::string& path) {
    absl::StatusOr<std::unique_ptr<SentencePieceModel>> model = SentencePieceModel::Load(path);
    EXPECT_TRUE(model.ok()) << model.status();
    return model.ok() ? *std::move(model) : nullptr;
  }

  // spm_encode's ids and spm_decode's text of them, line by line.
  static void RunReference(const ModelCase& model, std::vector<std::vector<int>>* ids, std::vector<std::string>* decoded) {
    const std::string ids_path = ScratchPath(model.name + ".ids");
    const std::string decoded_path = ScratchPath(model.name + ".decoded");
    ASSERT_TRUE(RunCommand(absl::StrCat("spm_encode --model=", model.path, " --output_format=id --input=", *lines_path_,
                                        " --output=", ids_path),
                           ids_path + ".log"));
    ASSERT_TRUE(RunCommand(absl::StrCat("spm_decode --model=", model.path, " --input_format=id --input=", ids_path,
                                        " --output=", decoded_path),
                           decoded_path + ".log"));
    for (const std::string& line : ReadLines(ids_path)) {
      std::vector<int>& row = ids->emplace_back();
      for (absl::string_view field : absl::StrSplit(line, ' ', absl::SkipEmpty())) {
        int id = 0;
        ASSERT_TRUE(absl::SimpleAtoi(field, &id)) << line;
        row.push_back(id);
      }
    }
    *decoded = ReadLines(decoded_path);
  }

  static std::vector<std::string>* corpus_;
  static std::vector<std::string>* lines_;
  static std::string* lines_path_;
  static std::vector<ModelCase>* models_;
};
std::vector<std::string>* SentencePieceTest::corpus_ = nullptr;
std::vector<std::string>* SentencePieceTest::lines_ = nullptr;
std::string* SentencePieceTest::lines_path_ = nullptr;
std::vector<ModelCase>* SentencePieceTest::models_ = nullptr;

TEST_F(SentencePieceTest, EncodeAndDecodeMatchSpmToolsLineByLine) {
  ASSERT_EQ(models_->size(), 4u) << "a model failed to train";
  ASSERT_GT(lines_->size(), 600u);
  size_t total_matched = 0;
  for (const ModelCase& model_case : *models_) {
    SCOPED_TRACE(model_case.name);
    std::unique_ptr<SentencePieceModel> model = LoadModel(model_case.path);
    ASSERT_NE(model, nullptr);
    std::vector<std::vector<int>> reference_ids;
    std::vector<std::string> reference_text;
    RunReference(model_case, &reference_ids, &reference_text);
    ASSERT_EQ(reference_ids.size(), lines_->size());
    ASSERT_EQ(reference_text.size(), lines_->size());
    size_t matched = 0, decoded_matched = 0, with_unknown = 0, with_bytes = 0;
    for (size_t i = 0; i < lines_->size(); ++i) {
      const std::vector<int> ids = model->Encode((*lines_)[i]);
      if (ids == reference_ids[i]) {
        ++matched;
      } else if (matched + 5 > i) {  // the first few mismatches in full
        ADD_FAILURE() << "line " << i << " \"" << Printable((*lines_)[i]) << "\"\n  normalized \""
                      << Printable(model->Normalize((*lines_)[i])) << "\"\n  ours: " << absl::StrJoin(ids, " ")
                      << "\n  spm:  " << absl::StrJoin(reference_ids[i], " ");
      }
      for (int id : ids) {
        with_unknown += id == model->UnkId();
        with_bytes += absl::StartsWith(model->IdToPiece(id), "<0x");
      }
      absl::StatusOr<std::string> decoded = model->Decode(reference_ids[i]);
      ASSERT_TRUE(decoded.ok()) << decoded.status();
      if (*decoded == reference_text[i]) {
        ++decoded_matched;
      } else {
        ADD_FAILURE() << "decoding line " << i << ": ours \"" << Printable(*decoded) << "\", spm \""
                      << Printable(reference_text[i]) << "\"";
      }
    }
    std::printf("[ %s ] %zu/%zu lines encode as spm_encode, %zu/%zu decode as spm_decode (%zu unknown ids, %zu byte ids)\n",
                model_case.name.c_str(), matched, lines_->size(), decoded_matched, lines_->size(), with_unknown,
                with_bytes);
    EXPECT_EQ(matched, lines_->size());
    EXPECT_EQ(decoded_matched, lines_->size());
    total_matched += matched;
    // The lines must exercise what they are meant to: unknowns merge, or fall back to bytes.
    if (model_case.name == "byte-fallback") {
      EXPECT_GT(with_bytes, 50u);
    } else {
      EXPECT_GT(with_unknown, 20u);
    }
  }
  std::printf("[ all ] %zu lines matched spm_encode over %zu models\n", total_matched, models_->size());
}

TEST_F(SentencePieceTest, SpecialIdsFollowThePieceNames) {
  ASSERT_EQ(models_->size(), 4u);
  std::unique_ptr<SentencePieceModel> stand_in = LoadModel((*models_)[0].path);
  ASSERT_NE(stand_in, nullptr);
  EXPECT_EQ(stand_in->PieceSize(), 1000);
  EXPECT_EQ(stand_in->PadId(), 0);
  EXPECT_EQ(stand_in->EosId(), 1);
  EXPECT_EQ(stand_in->UnkId(), 2);
  EXPECT_EQ(stand_in->BosId(), -1);
  EXPECT_EQ(stand_in->IdToPiece(1), "</s>");
  EXPECT_EQ(stand_in->IdToPiece(1000), "");
  EXPECT_EQ(stand_in->PieceToId("</s>"), 1);
  EXPECT_EQ(stand_in->PieceToId("no such piece"), 2);

  std::unique_ptr<SentencePieceModel> small = LoadModel((*models_)[2].path);
  ASSERT_NE(small, nullptr);
  EXPECT_EQ(small->BosId(), 0);
  EXPECT_EQ(small->UnkId(), 1);
  EXPECT_EQ(small->EosId(), 2);
  EXPECT_EQ(small->PadId(), 3);
  // User-defined symbols are kept whole, even inside words; control symbols never come out of Encode.
  const std::vector<int> ids = small->Encode("concatenate<ctrl>");
  EXPECT_NE(std::find(ids.begin(), ids.end(), small->PieceToId("cat")), ids.end());
  EXPECT_EQ(std::find(ids.begin(), ids.end(), small->PieceToId("<ctrl>")), ids.end());
  // Control pieces decode to nothing, the unknown piece to " ⁇ ".
  EXPECT_EQ(*small->Decode({small->PieceToId("<ctrl>"), small->PieceToId("cat"), 2}), "cat");
  EXPECT_EQ(*small->Decode({small->UnkId()}), " \xe2\x81\x87 ");

  std::unique_ptr<SentencePieceModel> suffix = LoadModel((*models_)[3].path);
  ASSERT_NE(suffix, nullptr);
  EXPECT_EQ(suffix->UnkId(), 0);
  EXPECT_EQ(suffix->BosId(), 1);
  EXPECT_EQ(suffix->EosId(), 2);
  EXPECT_EQ(suffix->PadId(), -1);
  EXPECT_EQ(suffix->Normalize(" a  cat "), "a\xe2\x96\x81" "cat\xe2\x96\x81");
}

TEST_F(SentencePieceTest, DecodeRoundTrips) {
  ASSERT_EQ(models_->size(), 4u);
  std::unique_ptr<SentencePieceModel> stand_in = LoadModel((*models_)[0].path);
  std::unique_ptr<SentencePieceModel> byte_fallback = LoadModel((*models_)[1].path);
  ASSERT_NE(stand_in, nullptr);
  ASSERT_NE(byte_fallback, nullptr);
  // Text comes back in its normal form (nmt_nfkc turns the full-width comma of the Chinese lines into
  // ','), unchanged where that is the text itself; with byte fallback even characters the model lacks.
  EXPECT_EQ(stand_in->Normalize(" a\uff0c  b\u3000"), "\xe2\x96\x81" "a,\xe2\x96\x81" "b");
  size_t corpus_unchanged = 0;
  for (const std::string& line : *corpus_) {
    std::string normal_form = absl::StrReplaceAll(stand_in->Normalize(line), {{"\xe2\x96\x81", " "}});
    if (absl::StartsWith(normal_form, " ")) normal_form.erase(0, 1);
    const std::string decoded = stand_in->Decode(stand_in->Encode(line)).value_or("<error>");
    EXPECT_EQ(decoded, normal_form);
    corpus_unchanged += decoded == line;
  }
  EXPECT_GT(corpus_unchanged, corpus_->size() * 9 / 10);
  for (const std::string text : {"a cat playing piano in a sunlit living room", "\u16a0\u16c7\u16bb runes \U00013000",
                                 "\u4e00\u53ea\u5c0f\u732b a pink \U0001F9A9 flamingo"}) {
    const std::vector<int> ids = byte_fallback->Encode(text);
    EXPECT_EQ(byte_fallback->Decode(ids).value_or("<error>"), text);
  }
  // Unknown characters become one unknown id per run without byte fallback.
  const std::vector<int> unknown = stand_in->Encode("\u16a0\u16c7\u16bb");
  EXPECT_EQ(std::count(unknown.begin(), unknown.end(), stand_in->UnkId()), 1) << absl::StrJoin(unknown, " ");
  EXPECT_EQ(stand_in->Decode({stand_in->UnkId()}).value_or(""), " \xe2\x81\x87 ");
  // Ids outside the vocabulary are an error, not a crash.
  absl::StatusOr<std::string> bad = stand_in->Decode({5, 1000});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_FALSE(stand_in->Decode({-1}).ok());
}

// Decoding arbitrary id sequences: control and unknown pieces anywhere, leading '▁' pieces, byte pieces
// that do not form UTF-8 (each bad byte U+FFFD).
TEST_F(SentencePieceTest, RandomIdSequencesDecodeAsSpmDecode) {
  ASSERT_EQ(models_->size(), 4u);
  std::mt19937 random(11);
  size_t total = 0;
  for (const ModelCase& model_case : *models_) {
    SCOPED_TRACE(model_case.name);
    std::unique_ptr<SentencePieceModel> model = LoadModel(model_case.path);
    ASSERT_NE(model, nullptr);
    std::vector<int> pool;  // ids to draw from, the special and byte pieces over-represented
    for (int id = 0; id < model->PieceSize(); ++id) {
      const std::string piece = model->IdToPiece(id);
      if (piece == "<0x0A>" || piece == "<0x0D>") continue;  // would split the output line
      pool.push_back(id);
      if (id < 8 || absl::StartsWith(piece, "<0x") || absl::StartsWith(piece, "\xe2\x96\x81")) {
        pool.insert(pool.end(), 3, id);
      }
    }
    std::vector<std::vector<int>> sequences;
    std::string text;
    for (int n = 0; n < 300; ++n) {
      std::vector<int>& ids = sequences.emplace_back();
      const int length = std::uniform_int_distribution<int>(1, 12)(random);
      for (int i = 0; i < length; ++i) ids.push_back(pool[std::uniform_int_distribution<size_t>(0, pool.size() - 1)(random)]);
      absl::StrAppend(&text, absl::StrJoin(ids, " "), "\n");
    }
    const std::string ids_path = ScratchPath(model_case.name + ".random-ids");
    const std::string decoded_path = ids_path + ".decoded";
    WriteFile(ids_path, text);
    ASSERT_TRUE(RunCommand(absl::StrCat("spm_decode --model=", model_case.path, " --input_format=id --input=", ids_path,
                                        " --output=", decoded_path),
                           decoded_path + ".log"));
    const std::vector<std::string> reference = ReadLines(decoded_path);
    ASSERT_EQ(reference.size(), sequences.size());
    size_t matched = 0;
    for (size_t i = 0; i < sequences.size(); ++i) {
      const std::string decoded = model->Decode(sequences[i]).value_or("<error>");
      if (decoded == reference[i]) {
        ++matched;
      } else {
        ADD_FAILURE() << "ids " << absl::StrJoin(sequences[i], " ") << ": ours \"" << Printable(decoded) << "\", spm \""
                      << Printable(reference[i]) << "\"";
      }
    }
    EXPECT_EQ(matched, sequences.size());
    total += matched;
  }
  std::printf("[ all ] %zu random id sequences decode as spm_decode\n", total);
}

// ---- malformed files -------------------------------------------------------------------------------------

// Loading must fail with the source named, or succeed with a model that encodes and decodes in range.
void ExpectLoadsOrFailsCleanly(const std::string& bytes, const std::string& source, size_t* failures) {
  absl::StatusOr<std::unique_ptr<SentencePieceModel>> model = SentencePieceModel::FromSerialized(bytes, source);
  if (!model.ok()) {
    ++*failures;
    EXPECT_TRUE(absl::StrContains(model.status().message(), source)) << model.status();
    return;
  }
  for (const char* text : {"a cat \U0001F431 in \uff34\uff4f\uff4b\uff59\uff4f  rain", "\xff\xfe"}) {
    const std::vector<int> ids = (*model)->Encode(text);
    for (int id : ids) ASSERT_TRUE(id >= 0 && id < (*model)->PieceSize()) << source << ": id " << id;
    EXPECT_TRUE((*model)->Decode(ids).ok()) << source;
  }
}

TEST_F(SentencePieceTest, TruncatedAndCorruptedFilesFailCleanly) {
  ASSERT_EQ(models_->size(), 4u);
  for (const ModelCase& model_case : {(*models_)[0], (*models_)[1]}) {
    const std::string bytes = ReadFile(model_case.path);
    ASSERT_GT(bytes.size(), 10000u);
    size_t variants = 0, failures = 0;
    // Truncations: every length near both ends, and spread over the rest.
    std::vector<size_t> lengths;
    for (size_t length = 0; length < 300; ++length) lengths.push_back(length);
    for (size_t length = bytes.size() - 300; length < bytes.size(); ++length) lengths.push_back(length);
    for (size_t i = 0; i < 200; ++i) lengths.push_back(bytes.size() * i / 200);
    for (size_t length : lengths) {
      ExpectLoadsOrFailsCleanly(bytes.substr(0, length), absl::StrCat(model_case.name, "-truncated-", length), &failures);
      ++variants;
    }
    // Flipped bytes: single and bursts, anywhere (the pieces, the specs, the charsmap trie).
    std::mt19937 random(7);
    for (int i = 0; i < 400; ++i) {
      std::string corrupt = bytes;
      const size_t position = std::uniform_int_distribution<size_t>(0, bytes.size() - 1)(random);
      const int burst = i % 4 == 0 ? 8 : 1;
      for (int j = 0; j < burst && position + j < corrupt.size(); ++j) {
        corrupt[position + j] = static_cast<char>(corrupt[position + j] ^ std::uniform_int_distribution<int>(1, 255)(random));
      }
      ExpectLoadsOrFailsCleanly(corrupt, absl::StrCat(model_case.name, "-flipped-", position), &failures);
      ++variants;
    }
    std::printf("[ %s ] %zu corrupt variants, %zu rejected, none crashed\n", model_case.name.c_str(), variants, failures);
    EXPECT_GT(failures, variants / 4);
  }
}

TEST_F(SentencePieceTest, CraftedBadFieldsAreNamed) {
  ASSERT_EQ(models_->size(), 4u);
  const std::string stand_in = ReadFile((*models_)[0].path);
  struct Case {
    std::string name;
    std::string bytes;
    std::string expected;  // in the message
  };
  const std::vector<Case> cases = {
      {"empty", "", "no piece has type UNKNOWN"},
      {"text", "this is not a protobuf", "malformed"},
      {"bpe", stand_in + BytesField(2, VarintField(3, 2)), "model_type is BPE"},
      {"word", stand_in + BytesField(2, VarintField(3, 3)), "only UNIGRAM"},
      {"piece-type", stand_in + Piece("zzz", 9), "unknown piece type 9"},
      {"duplicate", stand_in + Piece("</s>", 3), "already defined"},
      {"second-unknown", stand_in + Piece("<unk2>", 2), "second unknown piece"},
      {"empty-piece", stand_in + Piece("", 1), "is empty"},
      {"byte-without-fallback", stand_in + Piece("<0x41>", 6), "byte_fallback is false"},
      {"short-charsmap", stand_in + BytesField(3, BytesField(2, "abc")), "too short"},
      {"charsmap-trie-size", stand_in + BytesField(3, BytesField(2, std::string("\xff\xff\x00\x00xxxxxxxx", 12))),
       "exceeds"},
      {"score-wire-type", stand_in + BytesField(1, BytesField(1, "q") + VarintField(2, 1)), "(score) has wire type"},
      {"length-past-end", stand_in + std::string("\x0a\xff\xff\x03", 4), "runs past the end"},
      {"long-varint", stand_in + std::string(11, '\xff'), "varint"},
      {"group", stand_in + std::string("\x0b", 1), "wire type start-group"},
      {"no-normal-pieces", Piece("<unk>", 2) + Piece("</s>", 3), "no normal pieces"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = ScratchPath(c.name + ".model");
    WriteFile(path, c.bytes);
    absl::StatusOr<std::unique_ptr<SentencePieceModel>> model = SentencePieceModel::Load(path);
    ASSERT_FALSE(model.ok());
    EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument) << model.status();
    EXPECT_TRUE(absl::StrContains(model.status().message(), path)) << model.status();
    EXPECT_TRUE(absl::StrContains(model.status().message(), c.expected)) << model.status();
  }
  // Appending fields merges them as protobuf does: an appended piece is one more piece.
  absl::StatusOr<std::unique_ptr<SentencePieceModel>> extended =
      SentencePieceModel::FromSerialized(stand_in + Piece("\xe2\x96\x81zoetrope", 1), "extended");
  ASSERT_TRUE(extended.ok()) << extended.status();
  EXPECT_EQ((*extended)->PieceSize(), 1001);
  EXPECT_EQ((*extended)->Encode("zoetrope"), std::vector<int>{1000});

  absl::StatusOr<std::unique_ptr<SentencePieceModel>> missing = SentencePieceModel::Load(ScratchPath("missing.model"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(absl::StrContains(missing.status().message(), "missing.model"));
}

}  // namespace
}  // namespace zoetrope::internal
