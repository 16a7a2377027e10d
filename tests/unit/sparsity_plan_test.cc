// Sparsity plans (parallel/sparsity_plan.h): presets, the YAML format and its error messages, validation
// against a model and a request, step scaling, per-head resolution and the per-site kernel layout.
#include "parallel/sparse_layout.h"
#include "parallel/sparsity_plan.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <limits>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace zoetrope {
namespace {

// Whether `text` contains `part`, saying what it holds when not.
::testing::AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << text << "' does not contain '" << part << "'";
}

SparsityPlan ParseOrDie(const std::string& text) {
  absl::StatusOr<SparsityPlan> plan = ParseSparsityPlan(text, "test.yaml");
  EXPECT_TRUE(plan.ok()) << plan.status();
  return plan.ok() ? *plan : SparsityPlan{};
}

SparsityPlan PresetOrDie(const std::string& name) {
  absl::StatusOr<SparsityPlan> plan = SparsityPlanPreset(name);
  EXPECT_TRUE(plan.ok()) << plan.status();
  return plan.ok() ? *plan : SparsityPlan{};
}

// The steps of an N-step request at which `plan` runs dense at `block` (all heads).
std::vector<int> DenseSteps(const SparsityPlan& plan, int block, int steps) {
  std::vector<int> dense;
  for (int step = 0; step < steps; ++step) {
    if (plan.Resolve(block, step, steps, 12).dense()) dense.push_back(step);
  }
  return dense;
}

std::vector<int> Range(int first, int last) {
  std::vector<int> values;
  for (int value = first; value <= last; ++value) values.push_back(value);
  return values;
}

// ---- presets --------------------------------------------------------------------------------------

TEST(SparsityPlanPresets, EveryPresetParsesValidatesAndRoundTrips) {
  const std::vector<std::string> names = SparsityPlanPresetNames();
  EXPECT_EQ(names, (std::vector<std::string>{"dense", "radial", "attention-tile", "sliding-tile"}));
  for (const std::string& name : names) {
    SCOPED_TRACE(name);
    const SparsityPlan plan = PresetOrDie(name);
    EXPECT_EQ(plan.name, name);
    EXPECT_EQ(plan.source, "preset " + name);
    // Wan 1.3B and 14B at a few step counts.
    for (int steps : {1, 4, 10, 50, 100}) {
      EXPECT_TRUE(plan.Validate(30, 12, steps).ok()) << plan.Validate(30, 12, steps);
      EXPECT_TRUE(plan.Validate(40, 40, steps).ok()) << plan.Validate(40, 40, steps);
    }
    // Canonical text parses back to the same text; a preset's line numbers are those of this text.
    const SparsityPlan again = ParseOrDie(plan.ToYaml());
    EXPECT_EQ(again.ToYaml(), plan.ToYaml());
    EXPECT_FALSE(plan.has_head_rules());
  }
}

TEST(SparsityPlanPresets, DenseHasNoRules) {
  const SparsityPlan plan = PresetOrDie("dense");
  EXPECT_TRUE(plan.rules.empty());
  EXPECT_FALSE(plan.reference_steps.has_value());
  EXPECT_EQ(plan.ToYaml(), "name: dense\nrules: []\n");
  const SiteAttention site = plan.Resolve(7, 30, 50, 12);
  ASSERT_TRUE(site.uniform());
  EXPECT_TRUE(site.dense());
  EXPECT_EQ(site.groups[0].head_count, 12);
}

TEST(SparsityPlanPresets, WanDefaultsInFrontOfEachSparseMode) {
  struct Expected {
    std::string name;
    SparseLayoutMode mode;
  };
  for (const Expected& expected :
       {Expected{"radial", SparseLayoutMode::kRadial}, Expected{"attention-tile", SparseLayoutMode::kAttentionTile},
        Expected{"sliding-tile", SparseLayoutMode::kSlidingTile}}) {
    SCOPED_TRACE(expected.name);
    const SparsityPlan plan = PresetOrDie(expected.name);
    EXPECT_EQ(plan.reference_steps, 50);
    ASSERT_EQ(plan.rules.size(), 3u);
    EXPECT_TRUE(plan.rules[0].attention.dense());
    ASSERT_TRUE(plan.rules[0].steps.has_value());
    EXPECT_EQ(plan.rules[0].steps->first, 0);
    EXPECT_EQ(plan.rules[0].steps->last, 11);
    EXPECT_FALSE(plan.rules[0].blocks.has_value());
    EXPECT_TRUE(plan.rules[1].attention.dense());
    ASSERT_TRUE(plan.rules[1].blocks.has_value());
    EXPECT_EQ(plan.rules[1].blocks->first, 0);
    EXPECT_EQ(plan.rules[1].blocks->last, 0);
    EXPECT_EQ(plan.rules[2].attention.mode, expected.mode);
    EXPECT_FALSE(plan.rules[2].blocks || plan.rules[2].steps || plan.rules[2].heads);
  }
  EXPECT_EQ(PresetOrDie("radial").rules[2].attention.radial.decay, 0.2);
  EXPECT_EQ(PresetOrDie("attention-tile").rules[2].attention.attention_tile.reference_frames, 3);
  const SlidingTileParameters sliding = PresetOrDie("sliding-tile").rules[2].attention.sliding_tile;
  EXPECT_EQ(sliding.tile.frames, 6);
  EXPECT_EQ(sliding.tile.height, 8);
  EXPECT_EQ(sliding.tile.width, 8);
  EXPECT_EQ(sliding.window.frames, 3);
  EXPECT_EQ(sliding.window.height, 3);
  EXPECT_EQ(sliding.window.width, 3);
  EXPECT_EQ(PresetOrDie("radial").ToYaml(),
            "name: radial\nreference_steps: 50\nrules:\n  - steps: [0, 11]\n    mode: dense\n  - blocks: 0\n"
            "    mode: dense\n  - mode: radial\n    decay: 0.2\n");
}

TEST(SparsityPlanPresets, PresetOrTextAndPresetOrFile) {
  absl::StatusOr<SparsityPlan> preset = SparsityPlanFromPresetOrText("radial", "request");
  ASSERT_TRUE(preset.ok()) << preset.status();
  EXPECT_EQ(preset->name, "radial");
  absl::StatusOr<SparsityPlan> text =
      SparsityPlanFromPresetOrText("rules:\n  - mode: radial\n    decay: 0.5\n", "request");
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(text->source, "request");
  EXPECT_EQ(text->rules.at(0).attention.radial.decay, 0.5);
  // A misspelt preset is reported as one, with the list of presets.
  absl::StatusOr<SparsityPlan> misspelt = SparsityPlanFromPresetOrText("radal", "request");
  ASSERT_FALSE(misspelt.ok());
  EXPECT_TRUE(Contains(std::string(misspelt.status().message()), "'radal' is neither a preset"));
  EXPECT_TRUE(Contains(std::string(misspelt.status().message()), "sliding-tile"));
  EXPECT_FALSE(SparsityPlanPreset("nope").ok());

  absl::StatusOr<SparsityPlan> from_name = SparsityPlanFromPresetOrFile("attention-tile");
  ASSERT_TRUE(from_name.ok()) << from_name.status();
  EXPECT_EQ(from_name->name, "attention-tile");
  absl::StatusOr<SparsityPlan> missing = SparsityPlanFromPresetOrFile("/nonexistent/plan.yaml");
  ASSERT_FALSE(missing.ok());
  EXPECT_TRUE(Contains(std::string(missing.status().message()), "/nonexistent/plan.yaml"));
  EXPECT_TRUE(Contains(std::string(missing.status().message()), "neither a preset"));
}

// ---- the format ----------------------------------------------------------------------------------

TEST(SparsityPlanParse, EveryField) {
  const std::string text =
      "name: radial-wan\n"          // 1
      "reference_steps: 50\n"       // 2
      "rules:\n"                    // 3
      "  - blocks: 0\n"             // 4
      "    mode: dense\n"           // 5
      "  - steps: [0, 11]\n"        // 6
      "    mode: dense\n"           // 7
      "  - blocks: [1, 9]\n"        // 8
      "    heads: [0, 5]\n"         // 9
      "    steps: 49\n"             // 10
      "    mode: radial\n"          // 11
      "    decay: 0.25\n"           // 12
      "  - heads: 7\n"              // 13
      "    mode: attention-tile\n"  // 14
      "    reference_frames: 2\n"   // 15
      "  - mode: sliding-tile\n"    // 16
      "    tile: [5, 9, 8]\n"       // 17
      "    window: [1, 3, 5]\n"     // 18
      "  - mode: radial\n";         // 19: parameters omitted take the defaults
  const SparsityPlan plan = ParseOrDie(text);
  EXPECT_EQ(plan.name, "radial-wan");
  EXPECT_EQ(plan.source, "test.yaml");
  EXPECT_EQ(plan.reference_steps, 50);
  ASSERT_EQ(plan.rules.size(), 6u);
  const std::vector<int> lines = {plan.rules[0].line, plan.rules[1].line, plan.rules[2].line,
                                  plan.rules[3].line, plan.rules[4].line, plan.rules[5].line};
  EXPECT_EQ(lines, (std::vector<int>{4, 6, 8, 13, 16, 19}));

  const SparsityRule& radial = plan.rules[2];
  ASSERT_TRUE(radial.blocks && radial.heads && radial.steps);
  EXPECT_EQ(radial.blocks->first, 1);
  EXPECT_EQ(radial.blocks->last, 9);
  EXPECT_EQ(radial.heads->first, 0);
  EXPECT_EQ(radial.heads->last, 5);
  EXPECT_EQ(radial.steps->first, 49);
  EXPECT_EQ(radial.steps->last, 49);
  EXPECT_EQ(radial.attention.mode, SparseLayoutMode::kRadial);
  EXPECT_EQ(radial.attention.radial.decay, 0.25);

  const SparsityRule& tile = plan.rules[3];
  ASSERT_TRUE(tile.heads.has_value());
  EXPECT_EQ(tile.heads->first, 7);
  EXPECT_EQ(tile.heads->last, 7);
  EXPECT_FALSE(tile.blocks.has_value());
  EXPECT_EQ(tile.attention.mode, SparseLayoutMode::kAttentionTile);
  EXPECT_EQ(tile.attention.attention_tile.reference_frames, 2);

  const SlidingTileParameters& sliding = plan.rules[4].attention.sliding_tile;
  EXPECT_EQ(plan.rules[4].attention.mode, SparseLayoutMode::kSlidingTile);
  EXPECT_EQ(sliding.tile.frames, 5);
  EXPECT_EQ(sliding.tile.height, 9);
  EXPECT_EQ(sliding.tile.width, 8);
  EXPECT_EQ(sliding.window.frames, 1);
  EXPECT_EQ(sliding.window.height, 3);
  EXPECT_EQ(sliding.window.width, 5);
  EXPECT_EQ(plan.rules[5].attention.radial.decay, 0.2);
  EXPECT_TRUE(plan.has_head_rules());

  // Canonical form: spelled out, parses back to itself.
  const std::string canonical = plan.ToYaml();
  EXPECT_TRUE(Contains(canonical,
                       "  - blocks: [1, 9]\n    heads: [0, 5]\n    steps: 49\n    mode: radial\n"
                       "    decay: 0.25\n"));
  EXPECT_TRUE(Contains(canonical, "  - mode: radial\n    decay: 0.2\n"));
  EXPECT_EQ(ParseOrDie(canonical).ToYaml(), canonical);

  // Names that need quoting survive the round trip.
  SparsityPlan quoted = plan;
  quoted.name = "plan: \"odd\" # name";
  EXPECT_EQ(ParseOrDie(quoted.ToYaml()).name, quoted.name);
}

TEST(SparsityPlanParse, KeysInAnyOrder) {
  // reference_steps after the rules still bounds their steps; mode after its parameters still checks them.
  const SparsityPlan plan =
      ParseOrDie("rules:\n  - decay: 0.3\n    steps: [0, 5]\n    mode: radial\nreference_steps: 10\n");
  EXPECT_EQ(plan.reference_steps, 10);
  EXPECT_EQ(plan.rules.at(0).attention.radial.decay, 0.3);
  EXPECT_FALSE(ParseSparsityPlan("rules:\n  - steps: [0, 10]\n    mode: dense\nreference_steps: 10\n", "x").ok());
}

struct Malformed {
  std::string what;
  std::string text;
  int line;
  std::string field;    // the field as the message names it
  std::string message;  // the rule it breaks
};

// gtest prints a parameter with this (the default dumps the struct's bytes into every test's name).
void PrintTo(const Malformed& malformed, std::ostream* out) { *out << malformed.what; }

class SparsityPlanErrors : public ::testing::TestWithParam<Malformed> {};

TEST_P(SparsityPlanErrors, NameFileLineAndField) {
  const Malformed& malformed = GetParam();
  // Through a real file, so that the name in the message is the path the user gave.
  const std::string path = absl::StrCat(::testing::TempDir(), "plan_", getpid(), "_", malformed.what, ".yaml");
  {
    std::ofstream file(path, std::ios::binary);
    file << malformed.text;
  }
  absl::StatusOr<SparsityPlan> plan = LoadSparsityPlan(path);
  std::remove(path.c_str());
  ASSERT_FALSE(plan.ok()) << malformed.text;
  const std::string message(plan.status().message());
  EXPECT_TRUE(Contains(message, absl::StrCat(path, ":", malformed.line, ":"))) << message;
  EXPECT_TRUE(Contains(message, malformed.field)) << message;
  EXPECT_TRUE(Contains(message, malformed.message)) << message;
  // And through text, with the source as given.
  absl::StatusOr<SparsityPlan> from_text = ParseSparsityPlan(malformed.text, "inline plan");
  ASSERT_FALSE(from_text.ok());
  EXPECT_TRUE(Contains(std::string(from_text.status().message()), absl::StrCat("inline plan:", malformed.line, ":")));
}

INSTANTIATE_TEST_SUITE_P(
    Malformed, SparsityPlanErrors,
    ::testing::Values(
        Malformed{"unknown_top_key", "name: x\nrulez: []\n", 2, "rulez", "unknown key"},
        Malformed{"missing_rules", "name: x\nreference_steps: 50\n", 1, "rules", "missing"},
        Malformed{"rules_not_list", "rules:\n  mode: dense\n", 1, "rules", "must be a list"},
        Malformed{"unknown_rule_key", "rules:\n  - mode: radial\n    decai: 0.2\n", 3, "rule 1: decai", "unknown key"},
        Malformed{"quoted_int", "rules:\n  - mode: dense\n  - blocks: \"3\"\n    mode: dense\n", 3, "rule 2: blocks",
                  "must be an int"},
        Malformed{"float_block", "rules:\n  - blocks: 1.5\n    mode: dense\n", 2, "rule 1: blocks", "must be an int"},
        Malformed{"negative_block", "rules:\n  - blocks: -1\n    mode: dense\n", 2, "rule 1: blocks",
                  "must be an int ≥ 0"},
        Malformed{"word_decay", "rules:\n  - mode: radial\n    decay: fast\n", 3, "rule 1: decay", "must be a number"},
        Malformed{"negative_decay", "rules:\n  - mode: radial\n    decay: -0.5\n", 3, "rule 1: decay",
                  "finite number > 0"},
        Malformed{"unknown_mode", "rules:\n  - mode: dense\n  - mode: radiall\n", 3, "rule 2: mode",
                  "unknown mode 'radiall'"},
        Malformed{"missing_mode", "rules:\n  - blocks: 3\n", 2, "rule 1: mode", "missing"},
        Malformed{"other_mode_parameter", "rules:\n  - mode: radial\n    tile: [6, 8, 8]\n", 3, "rule 1: tile",
                  "is a parameter of mode sliding-tile, not of mode radial"},
        Malformed{"dense_with_decay", "rules:\n  - mode: dense\n    decay: 0.2\n", 3, "rule 1: decay",
                  "is a parameter of mode radial, not of mode dense"},
        Malformed{"inverted_range", "rules:\n  - steps: [5, 2]\n    mode: dense\n", 2, "rule 1: steps", "is empty"},
        Malformed{"empty_range", "rules:\n  - heads: []\n    mode: radial\n", 2, "rule 1: heads",
                  "must be an int or [first, last]"},
        Malformed{"three_item_range", "rules:\n  - blocks: [1, 2, 3]\n    mode: dense\n", 2, "rule 1: blocks",
                  "of 3 items"},
        Malformed{"short_window", "rules:\n  - mode: sliding-tile\n    window: [3, 3]\n", 3, "rule 1: window",
                  "must be [frames, height, width]"},
        Malformed{"zero_tile", "rules:\n  - mode: sliding-tile\n    tile: [6, 0, 8]\n", 3, "rule 1: tile",
                  "must be an int ≥ 1"},
        Malformed{"sliding_tile_heads", "rules:\n  - mode: dense\n  - mode: sliding-tile\n    heads: [0, 5]\n", 4,
                  "rule 2: heads", "not allowed with mode sliding-tile"},
        Malformed{"duplicate_key", "rules:\n  - mode: radial\n    decay: 0.2\n    decay: 0.3\n", 4, "rule 1: decay",
                  "duplicate key"},
        Malformed{"zero_reference_steps", "reference_steps: 0\nrules: []\n", 1, "reference_steps",
                  "must be an int ≥ 1"},
        Malformed{"steps_beyond_reference", "reference_steps: 50\nrules:\n  - steps: [40, 50]\n    mode: dense\n", 3,
                  "rule 1: steps", "beyond reference_steps 50"},
        Malformed{"rule_not_map", "rules:\n  - dense\n", 2, "rule 1", "must be a map"},
        Malformed{"null_reference_frames", "rules:\n  - mode: attention-tile\n    reference_frames:\n", 3,
                  "rule 1: reference_frames", "must be an int"},
        Malformed{"yaml_syntax", "rules:\n  - mode: radial\n    tile: [6, 8\n", 4, "invalid YAML", ""},
        Malformed{"not_a_map", "- mode: dense\n", 1, "a plan is a map", ""}),
    [](const ::testing::TestParamInfo<Malformed>& info) { return info.param.what; });

TEST(SparsityPlanErrorsMisc, EmptyTextAndUnreadableFile) {
  absl::StatusOr<SparsityPlan> empty = ParseSparsityPlan("", "empty.yaml");
  ASSERT_FALSE(empty.ok());
  EXPECT_TRUE(Contains(std::string(empty.status().message()), "empty.yaml: empty plan"));
  absl::StatusOr<SparsityPlan> two = ParseSparsityPlan("rules: []\n---\nrules: []\n", "two.yaml");
  ASSERT_FALSE(two.ok());
  EXPECT_TRUE(Contains(std::string(two.status().message()), "two.yaml:"));
  absl::StatusOr<SparsityPlan> missing = LoadSparsityPlan("/nonexistent/plan.yaml");
  ASSERT_FALSE(missing.ok());
  EXPECT_TRUE(Contains(std::string(missing.status().message()), "/nonexistent/plan.yaml"));
}

// ---- validation --------------------------------------------------------------------------------------

TEST(SparsityPlanValidate, RangesAgainstTheModelAndTheRequest) {
  const SparsityPlan plan = ParseOrDie(
      "rules:\n"
      "  - blocks: [0, 29]\n"  // 2
      "    steps: [0, 9]\n"
      "    mode: dense\n"
      "  - heads: [0, 11]\n"  // 5
      "    mode: radial\n");
  EXPECT_TRUE(plan.Validate(30, 12, 10).ok()) << plan.Validate(30, 12, 10);

  const absl::Status blocks = plan.Validate(20, 12, 10);
  ASSERT_FALSE(blocks.ok());
  EXPECT_TRUE(Contains(std::string(blocks.message()), "test.yaml:2: rule 1: blocks: [0, 29] is beyond the model's 20"));
  const absl::Status heads = plan.Validate(30, 8, 10);
  ASSERT_FALSE(heads.ok());
  EXPECT_TRUE(Contains(std::string(heads.message()), "test.yaml:5: rule 2: heads: [0, 11] is beyond the model's 8"));
  // Absolute steps: the request must have them.
  const absl::Status steps = plan.Validate(30, 12, 5);
  ASSERT_FALSE(steps.ok());
  EXPECT_TRUE(Contains(std::string(steps.message()), "test.yaml:2: rule 1: steps: [0, 9] is beyond the request's 5"));
  EXPECT_TRUE(Contains(std::string(steps.message()), "reference_steps"));
  // Scaled steps fit any request.
  SparsityPlan scaled = plan;
  scaled.reference_steps = 10;
  EXPECT_TRUE(scaled.Validate(30, 12, 5).ok());
  EXPECT_TRUE(scaled.Validate(30, 12, 1).ok());
  // Impossible models and requests.
  EXPECT_FALSE(plan.Validate(0, 12, 10).ok());
  EXPECT_FALSE(plan.Validate(30, 0, 10).ok());
  EXPECT_FALSE(plan.Validate(30, 12, 0).ok());
}

TEST(SparsityPlanValidate, SlidingTileMustTakeAllHeadsOfItsSites) {
  // Rule 2 gives heads 0–5 radial at block 3; rule 3 would then give heads 6–11 sliding tile there.
  const SparsityPlan mixed = ParseOrDie(
      "rules:\n"
      "  - blocks: 0\n"
      "    mode: dense\n"
      "  - blocks: 3\n"  // 4
      "    heads: [0, 5]\n"
      "    mode: radial\n"
      "  - mode: sliding-tile\n");  // 7
  const absl::Status status = mixed.Validate(30, 12, 50);
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(Contains(std::string(status.message()), "test.yaml:7: rule 3: mode: sliding-tile shares block 3"));
  EXPECT_TRUE(Contains(std::string(status.message()), "rule 2"));
  // A mixed site has no layout either.
  const SiteAttention site = mixed.Resolve(3, 0, 50, 12);
  EXPECT_FALSE(site.uniform());
  EXPECT_TRUE(site.tile_major());
  EXPECT_FALSE(BuildSiteLayout(site, TokenGrid{2, 8, 8}, BlockShape{64, 64}).ok());
  // Head rules that never meet a sliding-tile site are fine.
  const SparsityPlan separate = ParseOrDie(
      "rules:\n"
      "  - blocks: [0, 9]\n"
      "    heads: [0, 5]\n"
      "    mode: radial\n"
      "  - blocks: [0, 9]\n"
      "    mode: dense\n"
      "  - mode: sliding-tile\n");
  EXPECT_TRUE(separate.Validate(30, 12, 50).ok()) << separate.Validate(30, 12, 50);
  // Rules built in code are checked too.
  SparsityPlan in_code;
  in_code.source = "code";
  SparsityRule rule;
  rule.heads = IndexRange{0, 1};
  rule.attention.mode = SparseLayoutMode::kSlidingTile;
  in_code.rules.push_back(rule);
  const absl::Status code_status = in_code.Validate(30, 12, 50);
  ASSERT_FALSE(code_status.ok());
  EXPECT_TRUE(Contains(std::string(code_status.message()), "code: rule 1: heads: not allowed with mode sliding-tile"));
}

// The scheduler checks request plans without knowing the model: the largest int for blocks and heads, and
// huge ranges in the plan, must neither hang nor allocate per head, and must still find the conflict.
TEST(SparsityPlanValidate, CheapForUnknownModelsAndHugeRanges) {
  const SparsityPlan mixed = ParseOrDie(
      "reference_steps: 50\n"
      "rules:\n"
      "  - blocks: [1000000, 2000000000]\n"
      "    heads: [0, 1999999999]\n"
      "    steps: [20, 30]\n"
      "    mode: radial\n"
      "  - mode: sliding-tile\n");
  constexpr int kLargest = std::numeric_limits<int>::max();
  const auto start = std::chrono::steady_clock::now();
  const absl::Status status = mixed.Validate(kLargest, kLargest, 200);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 1.0);
  ASSERT_FALSE(status.ok());
  // The first conflicting site: block 1000000, the first step that scales into [20, 30] (80 of 200), a head
  // past the radial range.
  EXPECT_TRUE(Contains(std::string(status.message()), "sliding-tile shares block 1000000 step 80")) << status;
  EXPECT_TRUE(Contains(std::string(status.message()), "on head 0")) << status;
  // Without the conflict (every head radial there), the same sizes pass.
  const SparsityPlan uniform = ParseOrDie(
      "rules:\n"
      "  - blocks: [1000000, 2000000000]\n"
      "    mode: radial\n"
      "  - mode: sliding-tile\n");
  EXPECT_TRUE(uniform.Validate(kLargest, kLargest, 200).ok());
}

TEST(SparsityPlanParse, AtMostMaxRules) {
  std::string text = "rules:\n";
  for (int rule = 0; rule <= kMaxPlanRules; ++rule) absl::StrAppend(&text, "  - blocks: ", rule, "\n    mode: dense\n");
  const absl::StatusOr<SparsityPlan> plan = ParseSparsityPlan(text, "many.yaml");
  ASSERT_FALSE(plan.ok());
  EXPECT_TRUE(Contains(std::string(plan.status().message()), "many.yaml:1: rules: at most 64 rules")) << plan.status();
}

// ---- resolution ------------------------------------------------------------------------------------

TEST(SparsityPlanResolve, RadialStepsScaleToTheRequest) {
  const SparsityPlan plan = PresetOrDie("radial");
  // 50 steps: the first 12 dense, then radial.
  EXPECT_EQ(DenseSteps(plan, 5, 50), Range(0, 11));
  const SiteAttention step12 = plan.Resolve(5, 12, 50, 12);
  ASSERT_TRUE(step12.uniform());
  EXPECT_EQ(step12.uniform_mode().mode, SparseLayoutMode::kRadial);
  EXPECT_EQ(step12.uniform_mode().radial.decay, 0.2);
  EXPECT_TRUE(plan.Resolve(5, 11, 50, 12).dense());
  // 10 steps: step s is dense when s·50/10 ≤ 11, i.e. s ≤ 2.2: steps 0, 1, 2.
  EXPECT_EQ(DenseSteps(plan, 5, 10), Range(0, 2));
  // 4 steps: s·12.5 ≤ 11 → step 0 only; 30 steps: s·5/3 ≤ 11 → s ≤ 6.6; 100 steps: s/2 ≤ 11 → s ≤ 22.
  EXPECT_EQ(DenseSteps(plan, 5, 4), Range(0, 0));
  EXPECT_EQ(DenseSteps(plan, 5, 30), Range(0, 6));
  EXPECT_EQ(DenseSteps(plan, 5, 100), Range(0, 22));
  EXPECT_EQ(DenseSteps(plan, 5, 1), Range(0, 0));
}

TEST(SparsityPlanResolve, AbsoluteStepsDoNotScale) {
  const SparsityPlan plan = ParseOrDie("rules:\n  - steps: [0, 11]\n    mode: dense\n  - mode: radial\n");
  EXPECT_EQ(DenseSteps(plan, 5, 50), Range(0, 11));
  EXPECT_EQ(DenseSteps(plan, 5, 20), Range(0, 11));
}

TEST(SparsityPlanResolve, BlockZeroDenseAtEveryStep) {
  for (const std::string name : {"radial", "attention-tile", "sliding-tile"}) {
    SCOPED_TRACE(name);
    const SparsityPlan plan = PresetOrDie(name);
    for (int steps : {4, 10, 50}) {
      EXPECT_EQ(DenseSteps(plan, 0, steps), Range(0, steps - 1));
    }
    EXPECT_FALSE(plan.Resolve(1, 49, 50, 12).dense());
    EXPECT_FALSE(plan.Resolve(29, 12, 50, 12).dense());
  }
  EXPECT_TRUE(PresetOrDie("sliding-tile").Resolve(1, 49, 50, 12).tile_major());
  EXPECT_FALSE(PresetOrDie("radial").Resolve(1, 49, 50, 12).tile_major());
}

TEST(SparsityPlanResolve, PerHeadModes) {
  const SparsityPlan plan = ParseOrDie(
      "rules:\n"
      "  - blocks: 0\n"
      "    mode: dense\n"
      "  - heads: [0, 3]\n"
      "    mode: radial\n"
      "    decay: 0.5\n"
      "  - heads: [2, 7]\n"  // heads 2, 3 are taken by the rule above: the first match wins per head
      "    mode: attention-tile\n"
      "    reference_frames: 1\n"
      "  - heads: [10, 20]\n"  // beyond the model's heads: ignored there
      "    mode: radial\n"
      "    decay: 0.5\n");
  ASSERT_TRUE(plan.Validate(30, 40, 50).ok());
  // Block 0: the first matching rule covers every head.
  EXPECT_TRUE(plan.Resolve(0, 0, 50, 12).uniform());
  EXPECT_TRUE(plan.Resolve(0, 0, 50, 12).dense());

  const SiteAttention site = plan.Resolve(4, 20, 50, 12);
  ASSERT_EQ(site.groups.size(), 4u);
  EXPECT_FALSE(site.uniform());
  EXPECT_FALSE(site.dense());
  EXPECT_FALSE(site.tile_major());
  EXPECT_EQ(site.groups[0].first_head, 0);
  EXPECT_EQ(site.groups[0].head_count, 4);
  EXPECT_EQ(site.groups[0].attention.mode, SparseLayoutMode::kRadial);
  EXPECT_EQ(site.groups[0].attention.radial.decay, 0.5);
  EXPECT_EQ(site.groups[1].first_head, 4);
  EXPECT_EQ(site.groups[1].head_count, 4);
  EXPECT_EQ(site.groups[1].attention.mode, SparseLayoutMode::kAttentionTile);
  EXPECT_EQ(site.groups[1].attention.attention_tile.reference_frames, 1);
  EXPECT_EQ(site.groups[2].first_head, 8);  // no rule: dense
  EXPECT_EQ(site.groups[2].head_count, 2);
  EXPECT_TRUE(site.groups[2].attention.dense());
  EXPECT_EQ(site.groups[3].first_head, 10);
  EXPECT_EQ(site.groups[3].head_count, 2);
  EXPECT_EQ(site.groups[3].attention.mode, SparseLayoutMode::kRadial);
  EXPECT_EQ(site.ModeOfHead(3).mode, SparseLayoutMode::kRadial);
  EXPECT_EQ(site.ModeOfHead(7).mode, SparseLayoutMode::kAttentionTile);
  EXPECT_TRUE(site.ModeOfHead(9).dense());
  EXPECT_EQ(site.ModeOfHead(11).mode, SparseLayoutMode::kRadial);

  // Adjacent heads with the same mode and parameters, from different rules, form one group.
  const SparsityPlan same =
      ParseOrDie("rules:\n  - heads: [0, 5]\n    mode: radial\n  - heads: [6, 11]\n    mode: radial\n    decay: 0.2\n");
  const SiteAttention merged = same.Resolve(3, 3, 50, 12);
  ASSERT_TRUE(merged.uniform());
  EXPECT_EQ(merged.groups[0].head_count, 12);
  EXPECT_EQ(merged.uniform_mode().mode, SparseLayoutMode::kRadial);
}

TEST(SparsityPlanResolve, SiteLayoutAsTheKernelReadsIt) {
  const TokenGrid grid{4, 8, 8};  // 256 tokens, 4 blocks of 64
  const BlockShape blocks{64, 64};
  const SparsityPlan plan = ParseOrDie(
      "rules:\n"
      "  - heads: [0, 1]\n"
      "    mode: attention-tile\n"
      "    reference_frames: 1\n"
      "  - heads: 2\n"
      "    mode: dense\n");
  const SiteAttention site = plan.Resolve(1, 1, 4, 3);
  ASSERT_EQ(site.groups.size(), 2u);
  absl::StatusOr<BlockSparseLayout> layout = BuildSiteLayout(site, grid, blocks);
  ASSERT_TRUE(layout.ok()) << layout.status();
  absl::StatusOr<BlockSparseLayout> tile = BuildSparseLayout(LayoutRequest(site.groups[0].attention, grid, blocks));
  absl::StatusOr<BlockSparseLayout> dense = BuildDenseLayout(grid, blocks);
  ASSERT_TRUE(tile.ok() && dense.ok());
  ASSERT_EQ(layout->row_offsets.shape(), (Shape{3, 5}));
  const int64_t max_entries = 16;  // the dense head: 4 × 4
  ASSERT_EQ(layout->column_indices.shape(), (Shape{3, max_entries}));
  const int64_t tile_entries = tile->column_indices.dim(1);
  ASSERT_LT(tile_entries, max_entries);
  const int32_t* offsets = layout->row_offsets.data<int32_t>();
  const int32_t* columns = layout->column_indices.data<int32_t>();
  for (int head = 0; head < 3; ++head) {
    const BlockSparseLayout& expected = head < 2 ? *tile : *dense;
    const int64_t entries = expected.column_indices.dim(1);
    for (int row = 0; row < 5; ++row) EXPECT_EQ(offsets[head * 5 + row], expected.row_offsets.data<int32_t>()[row]);
    for (int64_t entry = 0; entry < max_entries; ++entry) {
      const int32_t want = entry < entries ? expected.column_indices.data<int32_t>()[entry] : -1;
      EXPECT_EQ(columns[head * max_entries + entry], want) << "head " << head << " entry " << entry;
    }
  }
  // A uniform site is one group shared by every head.
  absl::StatusOr<BlockSparseLayout> uniform =
      BuildSiteLayout(PresetOrDie("radial").Resolve(3, 40, 50, 12), grid, blocks);
  ASSERT_TRUE(uniform.ok()) << uniform.status();
  EXPECT_EQ(uniform->row_offsets.dim(0), 1);
  // Parameters the grid cannot take fail at layout time (4 frames, 5 references).
  const SparsityPlan too_many = ParseOrDie("rules:\n  - mode: attention-tile\n    reference_frames: 5\n");
  EXPECT_FALSE(BuildSiteLayout(too_many.Resolve(0, 0, 1, 2), grid, blocks).ok());
}

TEST(SparsityPlanResolve, AttentionModeEqualityAndRequest) {
  AttentionMode a, b;
  a.mode = b.mode = SparseLayoutMode::kRadial;
  b.attention_tile.reference_frames = 9;  // another mode's parameter: ignored
  EXPECT_TRUE(a == b);
  b.radial.decay = 0.3;
  EXPECT_FALSE(a == b);
  EXPECT_EQ(b.ToString(), "radial decay=0.3");
  const SparseLayoutRequest request = LayoutRequest(b, TokenGrid{3, 4, 5}, BlockShape{32, 64});
  EXPECT_EQ(request.mode, SparseLayoutMode::kRadial);
  EXPECT_EQ(request.radial.decay, 0.3);
  EXPECT_EQ(request.grid.tokens(), 60);
  EXPECT_EQ(request.blocks.key_block, 64);
  EXPECT_EQ(std::string(SparsityPlanModeName(SparseLayoutMode::kAttentionTile)), "attention-tile");
}

}  // namespace
}  // namespace zoetrope
