// Sparsity plans (format and contracts in sparsity_plan.h).
#include "parallel/sparsity_plan.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace zoetrope {
namespace {

// Plans are a few lines; a bigger file is almost certainly the wrong file (a checkpoint, a video).
constexpr std::streamsize kMaxPlanFileBytes = 1 << 20;

constexpr SparseLayoutMode kAllModes[] = {SparseLayoutMode::kDense, SparseLayoutMode::kRadial,
                                          SparseLayoutMode::kAttentionTile, SparseLayoutMode::kSlidingTile};

// Preset texts are written in the canonical form of SparsityPlan::ToYaml, so that echoing a preset plan
// prints exactly the text its errors' line numbers refer to (a test holds the two together).
struct PresetText {
  const char* name;
  const char* text;
};
constexpr PresetText kPresets[] = {
    {"dense", "name: dense\nrules: []\n"},
    {"radial",
     "name: radial\n"
     "reference_steps: 50\n"
     "rules:\n"
     "  - steps: [0, 11]\n"
     "    mode: dense\n"
     "  - blocks: 0\n"
     "    mode: dense\n"
     "  - mode: radial\n"
     "    decay: 0.2\n"},
    {"attention-tile",
     "name: attention-tile\n"
     "reference_steps: 50\n"
     "rules:\n"
     "  - steps: [0, 11]\n"
     "    mode: dense\n"
     "  - blocks: 0\n"
     "    mode: dense\n"
     "  - mode: attention-tile\n"
     "    reference_frames: 3\n"},
    {"sliding-tile",
     "name: sliding-tile\n"
     "reference_steps: 50\n"
     "rules:\n"
     "  - steps: [0, 11]\n"
     "    mode: dense\n"
     "  - blocks: 0\n"
     "    mode: dense\n"
     "  - mode: sliding-tile\n"
     "    tile: [6, 8, 8]\n"
     "    window: [3, 3, 3]\n"},
};

std::string PresetList() {
  std::vector<std::string> names;
  for (const PresetText& preset : kPresets) names.emplace_back(preset.name);
  return absl::StrJoin(names, ", ");
}

std::string ModeList() {
  std::vector<std::string> names;
  for (SparseLayoutMode mode : kAllModes) names.emplace_back(SparsityPlanModeName(mode));
  return absl::StrJoin(names, ", ");
}

// Shortest text that reads back as the same double, so ToYaml round-trips parameters exactly.
std::string FormatDouble(double value) {
  char buffer[64];
  const std::to_chars_result result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  return std::string(buffer, result.ptr);
}

std::string FormatExtent(const Extent3& extent) {
  return absl::StrCat("[", extent.frames, ", ", extent.height, ", ", extent.width, "]");
}

std::string FormatRange(const IndexRange& range) {
  return range.first == range.last ? absl::StrCat(range.first) : absl::StrCat("[", range.first, ", ", range.last, "]");
}

bool SameExtent(const Extent3& a, const Extent3& b) {
  return a.frames == b.frames && a.height == b.height && a.width == b.width;
}

// "source:line: " with the line left out when unknown (rules built in code, null marks).
std::string Location(absl::string_view source, int line) {
  return line > 0 ? absl::StrCat(source, ":", line, ": ") : absl::StrCat(source, ": ");
}

std::string RuleLabel(size_t index) { return absl::StrCat("rule ", index + 1); }

const char* NodeTypeName(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
      return "null";
    case YAML::NodeType::Scalar:
      return "scalar";
    case YAML::NodeType::Sequence:
      return "list";
    case YAML::NodeType::Map:
      return "map";
    case YAML::NodeType::Undefined:
      break;
  }
  return "nothing";
}

std::string Describe(const YAML::Node& node) {
  // Quoted scalars are text even when they read like numbers: say so, or "got '3'" would puzzle.
  if (node.IsScalar() && node.Tag() == "!") return absl::StrCat("the quoted text '", node.Scalar(), "'");
  if (node.IsScalar()) return absl::StrCat("'", node.Scalar(), "'");
  return std::string("a ") + NodeTypeName(node);
}

// Turns YAML nodes into a plan. Every error carries the source, the line of the offending key or list
// element and the field; the first error ends parsing.
class PlanParser {
 public:
  explicit PlanParser(absl::string_view source) : source_(source) {}

  absl::StatusOr<SparsityPlan> Parse(absl::string_view text) {
    std::vector<YAML::Node> documents;
    try {
      documents = YAML::LoadAll(std::string(text));
    } catch (const YAML::ParserException& error) {
      return absl::InvalidArgumentError(
          absl::StrCat(source_, ":", error.mark.line + 1, ":", error.mark.column + 1, ": invalid YAML: ", error.msg));
    } catch (const std::exception& error) {
      return absl::InvalidArgumentError(absl::StrCat(source_, ": invalid YAML: ", error.what()));
    }
    if (documents.empty() || documents.front().IsNull()) {
      return absl::InvalidArgumentError(absl::StrCat(source_, ": empty plan: expected a map with `rules`"));
    }
    if (documents.size() > 1) {
      return Error(documents[1].Mark(), "", "a plan is one YAML document, this is a second one");
    }
    // The node walk may still throw (yaml-cpp converts lazily); nothing may escape.
    try {
      return ParsePlan(documents.front());
    } catch (const std::exception& error) {
      return absl::InvalidArgumentError(absl::StrCat(source_, ": invalid plan: ", error.what()));
    }
  }

 private:
  absl::Status Error(const YAML::Mark& mark, absl::string_view field, absl::string_view message) const {
    const int line = mark.is_null() ? 0 : mark.line + 1;
    return absl::InvalidArgumentError(absl::StrCat(Location(source_, line), field, field.empty() ? "" : ": ", message));
  }

  // One key of a map with its value and the key's position (a null value has no useful mark of its own).
  struct Entry {
    std::string key;
    YAML::Mark mark;
    YAML::Node value;
  };

  // The entries of a map, rejecting non-scalar and duplicate keys (yaml-cpp keeps duplicates silently).
  absl::StatusOr<std::vector<Entry>> Entries(const YAML::Node& map, absl::string_view context) const {
    std::vector<Entry> entries;
    std::set<std::string> seen;
    for (YAML::const_iterator it = map.begin(); it != map.end(); ++it) {
      if (!it->first.IsScalar()) return Error(it->first.Mark(), context, "keys must be plain words");
      Entry entry{it->first.Scalar(), it->first.Mark(), it->second};
      if (!seen.insert(entry.key).second) {
        return Error(entry.mark, absl::StrCat(context, context.empty() ? "" : ": ", entry.key), "duplicate key");
      }
      entries.push_back(std::move(entry));
    }
    return entries;
  }

  // A plain (unquoted) scalar integer in [minimum, int max].
  absl::StatusOr<int> Integer(const YAML::Node& node, const YAML::Mark& mark, absl::string_view field,
                              int minimum) const {
    int64_t value = 0;
    if (!node.IsScalar() || node.Tag() != "?" || !absl::SimpleAtoi(node.Scalar(), &value)) {
      return Error(mark, field, absl::StrCat("must be an int, got ", Describe(node)));
    }
    if (value < minimum || value > std::numeric_limits<int>::max()) {
      return Error(mark, field, absl::StrCat("must be an int ≥ ", minimum, ", got ", value));
    }
    return static_cast<int>(value);
  }

  // A plain scalar number that is finite and > 0.
  absl::StatusOr<double> PositiveNumber(const YAML::Node& node, const YAML::Mark& mark, absl::string_view field) const {
    double value = 0;
    if (!node.IsScalar() || node.Tag() != "?" || !absl::SimpleAtod(node.Scalar(), &value)) {
      return Error(mark, field, absl::StrCat("must be a number, got ", Describe(node)));
    }
    if (!std::isfinite(value) || !(value > 0.0)) {
      return Error(mark, field, absl::StrCat("must be a finite number > 0, got ", node.Scalar()));
    }
    return value;
  }

  absl::StatusOr<std::string> Text(const YAML::Node& node, const YAML::Mark& mark, absl::string_view field) const {
    if (!node.IsScalar()) return Error(mark, field, absl::StrCat("must be text, got ", Describe(node)));
    return node.Scalar();
  }

  // An int (a range of one) or [first, last] with 0 ≤ first ≤ last.
  absl::StatusOr<IndexRange> Range(const YAML::Node& node, const YAML::Mark& mark, absl::string_view field) const {
    if (node.IsScalar()) {
      absl::StatusOr<int> index = Integer(node, mark, field, 0);
      if (!index.ok()) return index.status();
      return IndexRange{*index, *index};
    }
    if (!node.IsSequence() || node.size() != 2) {
      return Error(mark, field,
                   absl::StrCat("must be an int or [first, last], got ", Describe(node),
                                node.IsSequence() ? absl::StrCat(" of ", node.size(), " items") : ""));
    }
    absl::StatusOr<int> first = Integer(node[0], node[0].Mark(), field, 0);
    if (!first.ok()) return first.status();
    absl::StatusOr<int> last = Integer(node[1], node[1].Mark(), field, 0);
    if (!last.ok()) return last.status();
    if (*last < *first) {
      return Error(mark, field, absl::StrCat("[", *first, ", ", *last, "] is empty: last must be ≥ first"));
    }
    return IndexRange{*first, *last};
  }

  // [frames, height, width], each ≥ 1.
  absl::StatusOr<Extent3> Extent(const YAML::Node& node, const YAML::Mark& mark, absl::string_view field) const {
    if (!node.IsSequence() || node.size() != 3) {
      return Error(mark, field,
                   absl::StrCat("must be [frames, height, width], got ", Describe(node),
                                node.IsSequence() ? absl::StrCat(" of ", node.size(), " items") : ""));
    }
    int values[3];
    for (size_t axis = 0; axis < 3; ++axis) {
      absl::StatusOr<int> value = Integer(node[axis], node[axis].Mark(), field, 1);
      if (!value.ok()) return value.status();
      values[axis] = *value;
    }
    return Extent3{values[0], values[1], values[2]};
  }

  absl::StatusOr<SparsityPlan> ParsePlan(const YAML::Node& root) {
    if (!root.IsMap()) {
      return Error(root.Mark(), "",
                   absl::StrCat("a plan is a map of name, reference_steps and rules, got ", Describe(root)));
    }
    absl::StatusOr<std::vector<Entry>> entries = Entries(root, "");
    if (!entries.ok()) return entries.status();
    SparsityPlan plan;
    plan.source = source_;
    const Entry* rules = nullptr;
    // reference_steps bounds the step ranges of the rules: read it first, wherever it stands.
    for (const Entry& entry : *entries) {
      if (entry.key == "name") {
        absl::StatusOr<std::string> name = Text(entry.value, entry.mark, "name");
        if (!name.ok()) return name.status();
        plan.name = *name;
      } else if (entry.key == "reference_steps") {
        absl::StatusOr<int> steps = Integer(entry.value, entry.mark, "reference_steps", 1);
        if (!steps.ok()) return steps.status();
        plan.reference_steps = *steps;
      } else if (entry.key == "rules") {
        rules = &entry;
      } else {
        return Error(entry.mark, entry.key, "unknown key (a plan has name, reference_steps and rules)");
      }
    }
    if (rules == nullptr) {
      return Error(root.Mark(), "rules", "missing (a list of rules; [] for a dense plan)");
    }
    if (!rules->value.IsSequence()) {
      return Error(rules->mark, "rules", absl::StrCat("must be a list of rules, got ", Describe(rules->value)));
    }
    if (rules->value.size() > static_cast<size_t>(kMaxPlanRules)) {
      return Error(rules->mark, "rules",
                   absl::StrCat("at most ", kMaxPlanRules, " rules (got ", rules->value.size(),
                                "); ranges of blocks, heads and steps cover many sites with one rule"));
    }
    for (size_t index = 0; index < rules->value.size(); ++index) {
      const YAML::Node rule_node = rules->value[index];
      const YAML::Mark mark = rule_node.Mark().is_null() ? rules->mark : rule_node.Mark();
      absl::StatusOr<SparsityRule> rule = ParseRule(rule_node, mark, index, plan.reference_steps);
      if (!rule.ok()) return rule.status();
      plan.rules.push_back(*std::move(rule));
    }
    return plan;
  }

  absl::StatusOr<SparsityRule> ParseRule(const YAML::Node& node, const YAML::Mark& mark, size_t index,
                                         std::optional<int> reference_steps) const {
    const std::string label = RuleLabel(index);
    if (!node.IsMap()) {
      return Error(mark, label, absl::StrCat("must be a map with mode and its parameters, got ", Describe(node)));
    }
    absl::StatusOr<std::vector<Entry>> entries = Entries(node, label);
    if (!entries.ok()) return entries.status();
    SparsityRule rule;
    rule.line = mark.line + 1;
    const auto field = [&](absl::string_view key) { return absl::StrCat(label, ": ", key); };

    // The mode decides which parameters are allowed: find it before the parameters.
    const Entry* mode_entry = nullptr;
    for (const Entry& entry : *entries) {
      if (entry.key == "mode") mode_entry = &entry;
    }
    if (mode_entry == nullptr) return Error(mark, field("mode"), absl::StrCat("missing (one of ", ModeList(), ")"));
    absl::StatusOr<std::string> mode_name = Text(mode_entry->value, mode_entry->mark, field("mode"));
    if (!mode_name.ok()) return mode_name.status();
    bool known = false;
    for (SparseLayoutMode mode : kAllModes) {
      if (*mode_name == SparsityPlanModeName(mode)) {
        rule.attention.mode = mode;
        known = true;
      }
    }
    if (!known) {
      return Error(mode_entry->mark, field("mode"),
                   absl::StrCat("unknown mode '", *mode_name, "' (one of ", ModeList(), ")"));
    }

    // The mode each parameter belongs to.
    const auto parameter_mode = [](absl::string_view key) -> std::optional<SparseLayoutMode> {
      if (key == "decay") return SparseLayoutMode::kRadial;
      if (key == "reference_frames") return SparseLayoutMode::kAttentionTile;
      if (key == "tile" || key == "window") return SparseLayoutMode::kSlidingTile;
      return std::nullopt;
    };
    for (const Entry& entry : *entries) {
      const std::string name = field(entry.key);
      if (entry.key == "mode") continue;
      if (entry.key == "blocks" || entry.key == "heads" || entry.key == "steps") {
        absl::StatusOr<IndexRange> range = Range(entry.value, entry.mark, name);
        if (!range.ok()) return range.status();
        if (entry.key == "blocks") {
          rule.blocks = *range;
        } else if (entry.key == "heads") {
          if (rule.attention.tile_major()) {
            return Error(entry.mark, name,
                         "not allowed with mode sliding-tile: it re-orders the tokens of every head at once");
          }
          rule.heads = *range;
        } else {
          if (reference_steps && range->last >= *reference_steps) {
            return Error(entry.mark, name,
                         absl::StrCat(FormatRange(*range), " is beyond reference_steps ", *reference_steps,
                                      " (steps 0..", *reference_steps - 1, ")"));
          }
          rule.steps = *range;
        }
        continue;
      }
      const std::optional<SparseLayoutMode> owner = parameter_mode(entry.key);
      if (!owner) {
        return Error(entry.mark, name,
                     "unknown key (a rule has blocks, heads, steps, mode and the parameters of its mode: decay, "
                     "reference_frames, tile, window)");
      }
      if (*owner != rule.attention.mode) {
        return Error(entry.mark, name,
                     absl::StrCat("is a parameter of mode ", SparsityPlanModeName(*owner), ", not of mode ",
                                  SparsityPlanModeName(rule.attention.mode)));
      }
      if (entry.key == "decay") {
        absl::StatusOr<double> decay = PositiveNumber(entry.value, entry.mark, name);
        if (!decay.ok()) return decay.status();
        rule.attention.radial.decay = *decay;
      } else if (entry.key == "reference_frames") {
        absl::StatusOr<int> frames = Integer(entry.value, entry.mark, name, 0);
        if (!frames.ok()) return frames.status();
        rule.attention.attention_tile.reference_frames = *frames;
      } else {
        absl::StatusOr<Extent3> extent = Extent(entry.value, entry.mark, name);
        if (!extent.ok()) return extent.status();
        (entry.key == "tile" ? rule.attention.sliding_tile.tile : rule.attention.sliding_tile.window) = *extent;
      }
    }
    return rule;
  }

  std::string source_;
};

}  // namespace

const char* SparsityPlanModeName(SparseLayoutMode mode) {
  switch (mode) {
    case SparseLayoutMode::kDense:
      return "dense";
    case SparseLayoutMode::kRadial:
      return "radial";
    case SparseLayoutMode::kAttentionTile:
      return "attention-tile";
    case SparseLayoutMode::kSlidingTile:
      return "sliding-tile";
  }
  return "unknown";
}

std::string AttentionMode::ToString() const {
  switch (mode) {
    case SparseLayoutMode::kDense:
      break;
    case SparseLayoutMode::kRadial:
      return absl::StrCat("radial decay=", FormatDouble(radial.decay));
    case SparseLayoutMode::kAttentionTile:
      return absl::StrCat("attention-tile reference_frames=", attention_tile.reference_frames);
    case SparseLayoutMode::kSlidingTile:
      return absl::StrCat("sliding-tile tile=", FormatExtent(sliding_tile.tile),
                          " window=", FormatExtent(sliding_tile.window));
  }
  return SparsityPlanModeName(mode);
}

bool operator==(const AttentionMode& a, const AttentionMode& b) {
  if (a.mode != b.mode) return false;
  switch (a.mode) {
    case SparseLayoutMode::kDense:
      return true;
    case SparseLayoutMode::kRadial:
      return a.radial.decay == b.radial.decay;
    case SparseLayoutMode::kAttentionTile:
      return a.attention_tile.reference_frames == b.attention_tile.reference_frames;
    case SparseLayoutMode::kSlidingTile:
      return SameExtent(a.sliding_tile.tile, b.sliding_tile.tile) &&
             SameExtent(a.sliding_tile.window, b.sliding_tile.window);
  }
  return false;
}

bool SiteAttention::dense() const {
  return std::all_of(groups.begin(), groups.end(), [](const HeadGroup& group) { return group.attention.dense(); });
}

bool SiteAttention::tile_major() const {
  return std::any_of(groups.begin(), groups.end(), [](const HeadGroup& group) { return group.attention.tile_major(); });
}

const AttentionMode& SiteAttention::ModeOfHead(int head) const {
  for (const HeadGroup& group : groups) {
    if (head >= group.first_head && head < group.first_head + group.head_count) return group.attention;
  }
  return groups.back().attention;  // out of contract; the last group rather than a crash
}

namespace {

// Whether `rule` applies to DiT block `block` at step `step` of `steps` (heads aside).
bool RuleMatchesSite(const SparsityRule& rule, std::optional<int> reference_steps, int block, int step, int steps) {
  if (rule.blocks && !rule.blocks->Contains(block)) return false;
  if (!rule.steps) return true;
  if (!reference_steps) return rule.steps->Contains(step);
  // a ≤ s·R/N ≤ b, multiplied out by N > 0 so that it stays exact.
  const int64_t scaled = int64_t{step} * *reference_steps;
  const int64_t count = std::max(steps, 1);
  return int64_t{rule.steps->first} * count <= scaled && scaled <= int64_t{rule.steps->last} * count;
}

// The index of the rule each head takes at a site, -1 where none matches (dense).
std::vector<int> RuleOfEachHead(const SparsityPlan& plan, int block, int step, int steps, int num_heads) {
  std::vector<int> rule_of_head(num_heads, -1);
  int unresolved = num_heads;
  for (size_t index = 0; index < plan.rules.size() && unresolved > 0; ++index) {
    const SparsityRule& rule = plan.rules[index];
    if (!RuleMatchesSite(rule, plan.reference_steps, block, step, steps)) continue;
    const int first = rule.heads ? rule.heads->first : 0;
    const int last = rule.heads ? std::min(rule.heads->last, num_heads - 1) : num_heads - 1;
    for (int head = first; head <= last; ++head) {
      if (rule_of_head[head] < 0) {
        rule_of_head[head] = static_cast<int>(index);
        --unresolved;
      }
    }
  }
  return rule_of_head;
}

}  // namespace

bool SparsityPlan::has_head_rules() const {
  return std::any_of(rules.begin(), rules.end(), [](const SparsityRule& rule) { return rule.heads.has_value(); });
}

SiteAttention SparsityPlan::Resolve(int block, int step, int steps, int num_heads) const {
  num_heads = std::max(num_heads, 1);
  SiteAttention site;
  // Common case: the first rule that matches the site covers every head.
  bool per_head = false;
  for (const SparsityRule& rule : rules) {
    if (!RuleMatchesSite(rule, reference_steps, block, step, steps)) continue;
    if (rule.heads) {
      per_head = true;
      break;
    }
    site.groups.push_back({0, num_heads, rule.attention});
    return site;
  }
  if (!per_head) {
    site.groups.push_back({0, num_heads, AttentionMode{}});
    return site;
  }
  const std::vector<int> rule_of_head = RuleOfEachHead(*this, block, step, steps, num_heads);
  static const AttentionMode kDenseMode;
  for (int head = 0; head < num_heads; ++head) {
    const AttentionMode& mode = rule_of_head[head] < 0 ? kDenseMode : rules[rule_of_head[head]].attention;
    if (!site.groups.empty() && site.groups.back().attention == mode) {
      ++site.groups.back().head_count;
    } else {
      site.groups.push_back({head, 1, mode});
    }
  }
  return site;
}

absl::Status SparsityPlan::Validate(int num_layers, int num_heads, int steps) const {
  if (num_layers < 1) return absl::InvalidArgumentError(absl::StrCat("num_layers must be ≥ 1, got ", num_layers));
  if (num_heads < 1) return absl::InvalidArgumentError(absl::StrCat("num_heads must be ≥ 1, got ", num_heads));
  if (steps < 1) return absl::InvalidArgumentError(absl::StrCat("steps must be ≥ 1, got ", steps));
  const auto rule_error = [&](size_t index, absl::string_view field, absl::string_view message) {
    return absl::InvalidArgumentError(
        absl::StrCat(Location(source, rules[index].line), RuleLabel(index), ": ", field, ": ", message));
  };
  for (size_t index = 0; index < rules.size(); ++index) {
    const SparsityRule& rule = rules[index];
    if (rule.blocks && rule.blocks->last >= num_layers) {
      return rule_error(index, "blocks",
                        absl::StrCat(FormatRange(*rule.blocks), " is beyond the model's ", num_layers, " blocks (0..",
                                     num_layers - 1, ")"));
    }
    if (rule.heads && rule.heads->last >= num_heads) {
      return rule_error(index, "heads",
                        absl::StrCat(FormatRange(*rule.heads), " is beyond the model's ", num_heads, " heads (0..",
                                     num_heads - 1, ")"));
    }
    if (rule.heads && rule.attention.tile_major()) {
      return rule_error(index, "heads", "not allowed with mode sliding-tile: it re-orders the tokens of every head");
    }
    if (rule.steps && !reference_steps && rule.steps->last >= steps) {
      return rule_error(index, "steps",
                        absl::StrCat(FormatRange(*rule.steps), " is beyond the request's ", steps, " steps (0..",
                                     steps - 1, "); set reference_steps to give steps of another schedule length"));
    }
    if (rule.steps && reference_steps && rule.steps->last >= *reference_steps) {
      return rule_error(index, "steps",
                        absl::StrCat(FormatRange(*rule.steps), " is beyond reference_steps ", *reference_steps));
    }
  }
  // Sliding tile permutes q, k and v of every head into tile-major order, so a site where an earlier
  // head-restricted rule gives some heads another mode cannot run. Only ordering can produce one.
  const bool any_sliding_tile =
      std::any_of(rules.begin(), rules.end(), [](const SparsityRule& rule) { return rule.attention.tile_major(); });
  if (!any_sliding_tile || !has_head_rules()) return absl::OkStatus();
  // Which rule a head takes changes only where a rule's block or head range starts or ends, so checking
  // one representative index per stretch (0 and every first and last + 1 below the limit) is exact. That
  // keeps the check cheap however large the ranges or the limits are (the scheduler, which does not know
  // the model, passes the largest int).
  auto representatives = [](const std::vector<SparsityRule>& all, bool for_blocks, int limit) {
    std::set<int64_t> indices = {0};
    for (const SparsityRule& rule : all) {
      const std::optional<IndexRange>& range = for_blocks ? rule.blocks : rule.heads;
      if (!range) continue;
      indices.insert(range->first);
      indices.insert(int64_t{range->last} + 1);
    }
    std::vector<int> kept;
    for (int64_t index : indices) {
      if (index < limit) kept.push_back(static_cast<int>(index));
    }
    return kept;
  };
  const std::vector<int> blocks = representatives(rules, true, num_layers);
  const std::vector<int> heads = representatives(rules, false, num_heads);
  // Steps likewise: a rule's match changes at its first step and after its last, scaled to the request.
  std::set<int64_t> step_set = {0};
  for (const SparsityRule& rule : rules) {
    if (!rule.steps) continue;
    if (!reference_steps) {
      step_set.insert(rule.steps->first);
      step_set.insert(int64_t{rule.steps->last} + 1);
      continue;
    }
    // Request step s matches [a, b] when a·N ≤ s·R ≤ b·N: from ⌈a·N/R⌉ up to ⌊b·N/R⌋.
    const int64_t count = std::max(steps, 1), reference = *reference_steps;
    step_set.insert((int64_t{rule.steps->first} * count + reference - 1) / reference);
    step_set.insert(int64_t{rule.steps->last} * count / reference + 1);
  }
  std::vector<int> step_list;
  for (int64_t step : step_set) {
    if (step < steps) step_list.push_back(static_cast<int>(step));
  }
  auto rule_of = [&](int block, int step, int head) {
    for (size_t index = 0; index < rules.size(); ++index) {
      const SparsityRule& rule = rules[index];
      if (rule.heads && !rule.heads->Contains(head)) continue;
      if (RuleMatchesSite(rule, reference_steps, block, step, steps)) return static_cast<int>(index);
    }
    return -1;
  };
  for (int step : step_list) {
    for (int block : blocks) {
      std::vector<int> rule_of_head;
      for (int head : heads) rule_of_head.push_back(rule_of(block, step, head));
      for (size_t position = 0; position < heads.size(); ++position) {
        const int index = rule_of_head[position];
        if (index < 0 || !rules[index].attention.tile_major()) continue;
        for (size_t other = 0; other < heads.size(); ++other) {
          if (rule_of_head[other] == index) continue;
          const std::string other_rule = rule_of_head[other] < 0 ? "no rule (dense)" : RuleLabel(rule_of_head[other]);
          return rule_error(index, "mode",
                            absl::StrCat("sliding-tile shares block ", block, " step ", step, " with ", other_rule,
                                         " on head ", heads[other],
                                         "; sliding tile re-orders the tokens of every head, so it must take all "
                                         "heads of each site it applies to"));
        }
        break;
      }
    }
  }
  return absl::OkStatus();
}

std::string SparsityPlan::ToYaml() const {
  std::string text;
  if (!name.empty()) {
    const bool plain = std::all_of(name.begin(), name.end(), [](char c) {
      return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
    });
    if (plain) {
      absl::StrAppend(&text, "name: ", name, "\n");
    } else {
      YAML::Emitter emitter;
      emitter << YAML::DoubleQuoted << name;
      absl::StrAppend(&text, "name: ", emitter.c_str(), "\n");
    }
  }
  if (reference_steps) absl::StrAppend(&text, "reference_steps: ", *reference_steps, "\n");
  if (rules.empty()) {
    absl::StrAppend(&text, "rules: []\n");
    return text;
  }
  absl::StrAppend(&text, "rules:\n");
  for (const SparsityRule& rule : rules) {
    // "  - " before the first key of the rule, "    " before the others.
    bool first_key = true;
    const auto key = [&](absl::string_view name, absl::string_view value) {
      absl::StrAppend(&text, first_key ? "  - " : "    ", name, ": ", value, "\n");
      first_key = false;
    };
    if (rule.blocks) key("blocks", FormatRange(*rule.blocks));
    if (rule.heads) key("heads", FormatRange(*rule.heads));
    if (rule.steps) key("steps", FormatRange(*rule.steps));
    key("mode", SparsityPlanModeName(rule.attention.mode));
    switch (rule.attention.mode) {
      case SparseLayoutMode::kDense:
        break;
      case SparseLayoutMode::kRadial:
        key("decay", FormatDouble(rule.attention.radial.decay));
        break;
      case SparseLayoutMode::kAttentionTile:
        key("reference_frames", absl::StrCat(rule.attention.attention_tile.reference_frames));
        break;
      case SparseLayoutMode::kSlidingTile:
        key("tile", FormatExtent(rule.attention.sliding_tile.tile));
        key("window", FormatExtent(rule.attention.sliding_tile.window));
        break;
    }
  }
  return text;
}

absl::StatusOr<SparsityPlan> ParseSparsityPlan(absl::string_view text, absl::string_view source) {
  return PlanParser(source).Parse(text);
}

namespace {

absl::StatusOr<std::string> ReadPlanFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    const int error = errno;
    const std::string reason = error != 0 ? std::strerror(error) : "cannot open";
    if (error == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": cannot read the plan: ", reason));
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot read the plan: ", reason));
  }
  std::string text(kMaxPlanFileBytes + 1, '\0');
  file.read(text.data(), static_cast<std::streamsize>(text.size()));
  if (file.bad()) return absl::InvalidArgumentError(absl::StrCat(path, ": cannot read the plan"));
  text.resize(static_cast<size_t>(file.gcount()));
  if (static_cast<std::streamsize>(text.size()) > kMaxPlanFileBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": a plan file is at most ", kMaxPlanFileBytes, " bytes; is this the right file?"));
  }
  return text;
}

}  // namespace

absl::StatusOr<SparsityPlan> LoadSparsityPlan(const std::string& path) {
  absl::StatusOr<std::string> text = ReadPlanFile(path);
  if (!text.ok()) return text.status();
  return ParseSparsityPlan(*text, path);
}

absl::StatusOr<SparsityPlanText> ReadSparsityPlanText(const std::string& name_or_path) {
  if (SparsityPlanPreset(name_or_path).ok()) return SparsityPlanText{name_or_path, name_or_path};
  absl::StatusOr<SparsityPlan> plan = SparsityPlanFromPresetOrFile(name_or_path);
  if (!plan.ok()) return plan.status();
  absl::StatusOr<std::string> text = ReadPlanFile(name_or_path);
  if (!text.ok()) return text.status();
  return SparsityPlanText{*std::move(text), name_or_path};
}

absl::StatusOr<SparsityPlan> SparsityPlanPreset(absl::string_view name) {
  for (const PresetText& preset : kPresets) {
    if (name == preset.name) return ParseSparsityPlan(preset.text, absl::StrCat("preset ", preset.name));
  }
  return absl::NotFoundError(absl::StrCat("unknown sparsity plan preset '", name, "' (presets: ", PresetList(), ")"));
}

std::vector<std::string> SparsityPlanPresetNames() {
  std::vector<std::string> names;
  for (const PresetText& preset : kPresets) names.emplace_back(preset.name);
  return names;
}

absl::StatusOr<SparsityPlan> SparsityPlanFromPresetOrText(absl::string_view name_or_yaml, absl::string_view source) {
  absl::StatusOr<SparsityPlan> preset = SparsityPlanPreset(name_or_yaml);
  if (preset.ok() || !absl::IsNotFound(preset.status())) return preset;
  // A single word that is not a preset is a misspelt preset far more often than a YAML plan.
  const absl::string_view stripped = absl::StripAsciiWhitespace(name_or_yaml);
  if (!stripped.empty() && stripped.find_first_of(":[]{}\n#") == absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": '", stripped, "' is neither a preset (", PresetList(), ") nor a YAML plan"));
  }
  return ParseSparsityPlan(name_or_yaml, source);
}

absl::StatusOr<SparsityPlan> SparsityPlanFromPresetOrFile(const std::string& name_or_path) {
  absl::StatusOr<SparsityPlan> preset = SparsityPlanPreset(name_or_path);
  if (preset.ok() || !absl::IsNotFound(preset.status())) return preset;
  absl::StatusOr<SparsityPlan> loaded = LoadSparsityPlan(name_or_path);
  if (absl::IsNotFound(loaded.status())) {
    return absl::NotFoundError(absl::StrCat("'", name_or_path, "' is neither a preset (", PresetList(),
                                            ") nor a plan file: ", loaded.status().message()));
  }
  return loaded;
}

}  // namespace zoetrope
