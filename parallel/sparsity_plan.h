// Sparsity plans: which attention mode every self-attention call of the DiT runs (shared
// spec/sparse-attention.md §7), per DiT block, per denoising step and optionally per head.
//
// A plan is YAML text:
//
//   name: radial-wan          # optional: a label for logs
//   reference_steps: 50       # optional, see "Steps" below
//   rules:                    # required (may be []): the first rule matching a site wins;
//                             # a site (block, step, head) that no rule matches runs dense
//     - blocks: 0             # an int, [first, last] (inclusive), or omitted = every block
//       mode: dense
//     - steps: [0, 11]        # the same forms; omitted = every step
//       mode: dense
//     - heads: [0, 5]         # the same forms; omitted = every head. Not allowed with sliding-tile,
//       mode: radial          # which permutes the tokens of all heads at once (see Validate)
//       decay: 0.2
//     - mode: attention-tile
//       reference_frames: 3
//     - mode: sliding-tile
//       tile: [6, 8, 8]       # tokens per tile along (frames, height, width)
//       window: [3, 3, 3]     # tiles per window along (frames, height, width)
//
// Modes and their parameters (parallel/attention_mode.h; an omitted parameter takes the default shown):
//   dense                                               every key block
//   radial          decay: number > 0 (0.2)             spec §1
//   attention-tile  reference_frames: int ≥ 0 (3)        spec §2 (≤ the grid's frames, checked per grid)
//   sliding-tile    tile: [t, h, w] ≥ 1 ((6, 8, 8)),     spec §3
//                   window: [t, h, w] ≥ 1 ((3, 3, 3))
//
// Steps: without reference_steps, step numbers are absolute denoising step indices (0-based) and must
// lie below the request's step count (Validate). With reference_steps R, they are written for an R-step
// schedule (and must lie below R): step s of an N-step request matches [a, b] when a ≤ s·R/N ≤ b, in
// exact arithmetic. So the Wan radial default "the first 12 of 50 steps dense" is steps [0, 11] with
// reference_steps 50, and at 10 steps it makes steps 0, 1, 2 dense (s·5 ≤ 11).
//
// Strictness: unknown keys, duplicate keys, values of the wrong type (a quoted "3" is a string, not an
// int), unknown modes, a parameter of another mode, empty or inverted ranges ([5, 2]) and negative
// indices are errors. Every error names the source (the file, or "preset NAME"), the 1-based line and
// the field, e.g. `plan.yaml:7: rule 2: decay: must be a finite number > 0, got -1`.
//
// Presets (SparsityPlanPreset): `dense` (no rules), and the Wan defaults of the spec with the dense
// fallbacks of §7 (reference_steps 50, steps [0, 11] dense, block 0 dense) in front of `radial`
// (decay 0.2), `attention-tile` (reference_frames 3) or `sliding-tile` (tile (6, 8, 8), window (3, 3, 3)).
// A preset is the YAML text that ToYaml() prints for it.
//
// Size: at most kMaxPlanRules rules (ranges cover many sites with one rule), so that checking a plan stays
// cheap for any ranges and any model, also where the scheduler checks untrusted request text.
//
// Nothing here throws: yaml-cpp's exceptions are caught and turned into Status.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "parallel/attention_mode.h"

namespace zoetrope {

inline constexpr int kMaxPlanRules = 64;

// The spelling of a mode in plans, JSON and logs: "dense", "radial", "attention-tile", "sliding-tile".
const char* SparsityPlanModeName(SparseLayoutMode mode);

// A mode and the parameters of that mode (the parameters of the other modes keep their defaults and are
// ignored). Equality compares the mode and its own parameters only.
struct AttentionMode {
  SparseLayoutMode mode = SparseLayoutMode::kDense;
  RadialParameters radial;
  AttentionTileParameters attention_tile;
  SlidingTileParameters sliding_tile;

  bool dense() const { return mode == SparseLayoutMode::kDense; }
  // Whether q, k, v must be permuted into the tile-major order of BuildSlidingTileOrder for this mode.
  bool tile_major() const { return mode == SparseLayoutMode::kSlidingTile; }
  // "radial decay=0.2", "sliding-tile tile=(6, 8, 8) window=(3, 3, 3)", "dense": for logs.
  std::string ToString() const;
  friend bool operator==(const AttentionMode& a, const AttentionMode& b);
};

// An inclusive index range [first, last], 0 ≤ first ≤ last.
struct IndexRange {
  int first = 0;
  int last = 0;
  bool Contains(int index) const { return first <= index && index <= last; }
};

struct SparsityRule {
  std::optional<IndexRange> blocks;  // DiT blocks; nullopt = every block
  std::optional<IndexRange> heads;   // attention heads; nullopt = every head
  std::optional<IndexRange> steps;   // denoising steps (scaled by the plan's reference_steps, if any)
  AttentionMode attention;
  int line = 0;  // 1-based line of the rule in its source, 0 when built in code
};

// What one group of consecutive heads runs at a site.
struct HeadGroup {
  int first_head = 0;
  int head_count = 0;
  AttentionMode attention;
};

// The resolution of a plan at one site (block, step): head groups in head order that cover the heads
// [0, num_heads) passed to Resolve exactly once; adjacent groups always differ in mode or parameters, so
// a site where every head runs the same thing is one group. Inline storage for one group: resolving the
// common all-heads case allocates nothing.
struct SiteAttention {
  absl::InlinedVector<HeadGroup, 1> groups;

  // One mode for every head: build one layout (groups = 1) from uniform_mode().
  bool uniform() const { return groups.size() == 1; }
  // Precondition: uniform().
  const AttentionMode& uniform_mode() const { return groups.front().attention; }
  // Every head dense: skip layouts, run the dense kernel (layout nullptr).
  bool dense() const;
  // Some head runs sliding tile (then all do, in a validated plan): permute into tile-major order.
  bool tile_major() const;
  // Precondition: 0 ≤ head < the head count passed to Resolve.
  const AttentionMode& ModeOfHead(int head) const;
};

class SparsityPlan {
 public:
  std::string name;                    // optional label ("" when the plan has none)
  std::optional<int> reference_steps;  // see "Steps" at the top
  std::vector<SparsityRule> rules;
  std::string source;  // the file or "preset NAME": where errors point

  // Checks the plan against a model and a request: block ranges below num_layers, head ranges below
  // num_heads, absolute step ranges below steps, and that sliding tile never shares a site with another
  // mode (it re-orders the tokens of every head). Errors name the source, line, rule and field.
  absl::Status Validate(int num_layers, int num_heads, int steps) const;

  // What every head runs at DiT block `block` of denoising step `step` (0-based) of a `steps`-step
  // request. Meant for plans that passed Validate with the same num_heads and steps; heads of ranges
  // beyond num_heads are ignored. O(rules) when the first matching rule covers every head (the common
  // case), O(rules · num_heads) otherwise. num_heads ≥ 1.
  SiteAttention Resolve(int block, int step, int steps, int num_heads) const;

  // Whether a rule restricts heads, i.e. whether any site may resolve to more than one head group.
  bool has_head_rules() const;

  // Canonical YAML of the plan (keys in the order of the format above, ranges of one index as an int,
  // every mode parameter spelled out). Parses back to the same plan; for a preset it is the preset text.
  std::string ToYaml() const;
};

// Parses plan YAML; `source` (a file name, "preset NAME", "--plan") prefixes every error.
absl::StatusOr<SparsityPlan> ParseSparsityPlan(absl::string_view text, absl::string_view source);
// Reads and parses a plan file; errors name the path.
absl::StatusOr<SparsityPlan> LoadSparsityPlan(const std::string& path);

// The presets described at the top, by name; NotFound (listing the names) for any other name.
absl::StatusOr<SparsityPlan> SparsityPlanPreset(absl::string_view name);
std::vector<std::string> SparsityPlanPresetNames();
// A preset name, else YAML text parsed with `source` (for plans sent in a request).
absl::StatusOr<SparsityPlan> SparsityPlanFromPresetOrText(absl::string_view name_or_yaml, absl::string_view source);
// A preset name, else the path of a YAML file (for command lines).
absl::StatusOr<SparsityPlan> SparsityPlanFromPresetOrFile(const std::string& name_or_path);

// A plan in the form requests carry it (SubmitJobRequest.attention): a preset name as it is, or the text
// of the plan file `name_or_path` names, checked to parse. `source` is what later errors call it (the
// path for a file, the name for a preset). For command-line flags that take a preset or a file.
struct SparsityPlanText {
  std::string text;
  std::string source;
};
absl::StatusOr<SparsityPlanText> ReadSparsityPlanText(const std::string& name_or_path);

}  // namespace zoetrope
