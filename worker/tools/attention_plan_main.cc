// zoetrope-attention-plan: shows what a sparsity plan (parallel/sparsity_plan.h) makes the attention
// kernel compute on a latent grid, without a model or a GPU.
//
//   zoetrope-attention-plan --grid F,H,W --plan PRESET|FILE --steps N [--step S --block B]
//       [--heads H] [--layers L] [--dump FILE]   (one command line)
//
// --grid is in tokens after patch embedding (Wan 480p, 81 frames: 21,30,52). With --step and --block it
// prints one site as JSON: {grid, plan, steps, step, block, query_block, key_block, token_order, density,
// heads: [per head group: first_head, last_head, mode, parameters, density, query_blocks, key_blocks,
// entries (per head)]}. Without them it prints the block density of every site, mean over heads, as a
// JSON table `density[step][block]`. --dump (with --step and --block) writes the site's CSR exactly as
// the kernel gets it (BuildSiteLayout) to a safetensors file: I32 row_offsets [groups, query_blocks + 1]
// and column_indices [groups, max entries], groups = 1 for a site where every head runs the same thing,
// else one per head, the unused tail of a shorter group's column_indices row filled with -1. A dense
// site is dumped as its full layout (the kernel itself gets none).
//
// Exit codes: 0; 2 for a bad flag or plan (the message names the flag); 1 when building or writing failed.
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "parallel/sparse_layout.h"
#include "parallel/sparsity_plan.h"
#include "worker/engine/safetensors.h"
#include "worker/tools/weights_tool.h"

ABSL_FLAG(std::string, grid, "", "latent token grid F,H,W after patch embedding (e.g. 21,30,52)");
ABSL_FLAG(std::string, plan, "",
          "sparsity plan: a preset (dense, radial, attention-tile, sliding-tile) or a YAML file");
ABSL_FLAG(int, steps, 0, "denoising steps of the request (>= 1)");
ABSL_FLAG(std::optional<int>, step, std::nullopt, "one denoising step (0-based, with --block)");
ABSL_FLAG(std::optional<int>, block, std::nullopt, "one DiT block (0-based, with --step)");
ABSL_FLAG(int, heads, 12, "attention heads of the model (Wan 1.3B: 12, 14B: 40)");
ABSL_FLAG(int, layers, 30, "DiT blocks of the model (Wan 1.3B: 30, 14B: 40)");
ABSL_FLAG(std::string, dump, "", "write the site's CSR layout to this .safetensors file (needs --step and --block)");

namespace zoetrope {
namespace {

constexpr char kTool[] = "zoetrope-attention-plan";

struct Options {
  TokenGrid grid;
  SparsityPlan plan;
  int steps = 0;
  std::optional<int> step;
  std::optional<int> block;
  int heads = 0;
  int layers = 0;
  std::string dump;
};

absl::StatusOr<TokenGrid> ParseGrid(const std::string& text) {
  const std::vector<std::string> parts = absl::StrSplit(text, ',');
  int64_t values[3] = {0, 0, 0};
  bool valid = parts.size() == 3;
  for (size_t axis = 0; valid && axis < 3; ++axis) {
    valid = absl::SimpleAtoi(parts[axis], &values[axis]) && values[axis] >= 1;
  }
  if (!valid) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--grid: expected F,H,W, three integers ≥ 1 (latent frames, height and width in tokens after patch "
        "embedding), got '",
        text, "'"));
  }
  return TokenGrid{values[0], values[1], values[2]};
}

// Reads and checks every flag; every error names its flag.
absl::StatusOr<Options> ReadOptions() {
  Options options;
  absl::StatusOr<TokenGrid> grid = ParseGrid(absl::GetFlag(FLAGS_grid));
  if (!grid.ok()) return grid.status();
  options.grid = *grid;
  options.steps = absl::GetFlag(FLAGS_steps);
  if (options.steps < 1) return absl::InvalidArgumentError(absl::StrCat("--steps must be ≥ 1, got ", options.steps));
  options.heads = absl::GetFlag(FLAGS_heads);
  if (options.heads < 1) return absl::InvalidArgumentError(absl::StrCat("--heads must be ≥ 1, got ", options.heads));
  options.layers = absl::GetFlag(FLAGS_layers);
  if (options.layers < 1) return absl::InvalidArgumentError(absl::StrCat("--layers must be ≥ 1, got ", options.layers));
  options.step = absl::GetFlag(FLAGS_step);
  options.block = absl::GetFlag(FLAGS_block);
  if (options.step.has_value() != options.block.has_value()) {
    return absl::InvalidArgumentError("--step and --block go together: give both for one site, neither for the table");
  }
  if (options.step && (*options.step < 0 || *options.step >= options.steps)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--step must be in [0, ", options.steps, ") (--steps ", options.steps, "), got ", *options.step));
  }
  if (options.block && (*options.block < 0 || *options.block >= options.layers)) {
    return absl::InvalidArgumentError(absl::StrCat("--block must be in [0, ", options.layers, ") (--layers ",
                                                   options.layers, "), got ", *options.block));
  }
  options.dump = absl::GetFlag(FLAGS_dump);
  if (!options.dump.empty() && !options.step) {
    return absl::InvalidArgumentError("--dump needs --step and --block: it writes the layout of one site");
  }
  const std::string plan_flag = absl::GetFlag(FLAGS_plan);
  if (plan_flag.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--plan is required: a preset (",
                                                   absl::StrJoin(SparsityPlanPresetNames(), ", "), ") or a YAML file"));
  }
  absl::StatusOr<SparsityPlan> plan = SparsityPlanFromPresetOrFile(plan_flag);
  if (!plan.ok()) return absl::InvalidArgumentError(absl::StrCat("--plan: ", plan.status().message()));
  if (absl::Status valid = plan->Validate(options.layers, options.heads, options.steps); !valid.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("--plan (with --layers ", options.layers, " --heads ", options.heads,
                                                   " --steps ", options.steps, "): ", valid.message()));
  }
  options.plan = *std::move(plan);
  return options;
}

// JSON string literal (plan names and paths come from users).
std::string Quote(const std::string& text) {
  std::string quoted = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      quoted += '\\';
      quoted += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      quoted += absl::StrFormat("\\u%04x", static_cast<unsigned char>(c));
    } else {
      quoted += c;
    }
  }
  return quoted + "\"";
}

// Densities with 4 decimals: what the kernel's speed depends on, without float noise in diffs.
std::string Density(double density) { return absl::StrFormat("%.4f", density); }

std::string GridJson(const TokenGrid& grid) {
  return absl::StrCat("{\"frames\": ", grid.frames, ", \"height\": ", grid.height, ", \"width\": ", grid.width,
                      ", \"tokens\": ", grid.tokens(), "}");
}

std::string PlanLabel(const SparsityPlan& plan) { return plan.name.empty() ? plan.source : plan.name; }

// The shortest text that reads back as the same double (0.2, not 0.20000000000000001).
std::string ShortestDouble(double value) {
  char buffer[64];
  const std::to_chars_result result = std::to_chars(buffer, buffer + sizeof(buffer), value);
  return std::string(buffer, result.ptr);
}

std::string ParametersJson(const AttentionMode& attention) {
  const auto extent = [](const Extent3& e) { return absl::StrCat("[", e.frames, ", ", e.height, ", ", e.width, "]"); };
  switch (attention.mode) {
    case SparseLayoutMode::kDense:
      break;
    case SparseLayoutMode::kRadial:
      return absl::StrCat("{\"decay\": ", ShortestDouble(attention.radial.decay), "}");
    case SparseLayoutMode::kAttentionTile:
      return absl::StrCat("{\"reference_frames\": ", attention.attention_tile.reference_frames, "}");
    case SparseLayoutMode::kSlidingTile:
      return absl::StrCat("{\"tile\": ", extent(attention.sliding_tile.tile),
                          ", \"window\": ", extent(attention.sliding_tile.window), "}");
  }
  return "{}";
}

// Layouts built once per distinct (mode, parameters): a plan has a handful, the table visits thousands of sites.
class LayoutMemo {
 public:
  explicit LayoutMemo(const TokenGrid& grid) : grid_(grid) {}
  absl::StatusOr<const BlockSparseLayout*> Get(const AttentionMode& attention) {
    const SparseLayoutRequest request = LayoutRequest(attention, grid_);
    const std::string key = SparseLayoutCache::Key(request);
    auto found = layouts_.find(key);
    if (found == layouts_.end()) {
      absl::StatusOr<BlockSparseLayout> layout = BuildSparseLayout(request);
      if (!layout.ok()) {
        return absl::Status(layout.status().code(),
                            absl::StrCat("--grid ", grid_.frames, ",", grid_.height, ",", grid_.width, " with mode ",
                                         attention.ToString(), ": ", layout.status().message()));
      }
      found = layouts_.emplace(key, *std::move(layout)).first;
    }
    return &found->second;
  }
  double DensityOf(const BlockSparseLayout& layout) const { return BlockDensity(layout, grid_.tokens()); }

 private:
  TokenGrid grid_;
  std::map<std::string, BlockSparseLayout> layouts_;
};

// Mean block density over the heads of a site.
absl::StatusOr<double> SiteDensity(const SiteAttention& site, int heads, LayoutMemo& memo) {
  double sum = 0;
  for (const HeadGroup& group : site.groups) {
    absl::StatusOr<const BlockSparseLayout*> layout = memo.Get(group.attention);
    if (!layout.ok()) return layout.status();
    sum += memo.DensityOf(**layout) * group.head_count;
  }
  return sum / heads;
}

absl::Status WriteDump(const Options& options, const SiteAttention& site) {
  absl::StatusOr<BlockSparseLayout> layout = BuildSiteLayout(site, options.grid);
  if (!layout.ok()) return layout.status();
  std::vector<std::string> groups;
  for (const HeadGroup& group : site.groups) {
    groups.push_back(
        absl::StrCat(group.first_head, "-", group.first_head + group.head_count - 1, " ", group.attention.ToString()));
  }
  const std::map<std::string, std::string> metadata = {
      {"plan", PlanLabel(options.plan)},
      {"grid", absl::StrCat(options.grid.frames, ",", options.grid.height, ",", options.grid.width)},
      {"steps", absl::StrCat(options.steps)},
      {"step", absl::StrCat(*options.step)},
      {"block", absl::StrCat(*options.block)},
      {"query_block", absl::StrCat(layout->query_block)},
      {"key_block", absl::StrCat(layout->key_block)},
      {"token_order", site.tile_major() ? "tile-major" : "frame-major"},
      {"groups", site.uniform() ? "1 (shared by all heads)" : "one per head"},
      {"column_padding", "-1"},
      {"heads", absl::StrJoin(groups, "; ")},
  };
  if (absl::Status created = CreateParentDirectory(options.dump); !created.ok()) return created;
  absl::Status written = WriteSafetensors(
      options.dump, {{"row_offsets", layout->row_offsets}, {"column_indices", layout->column_indices}}, metadata);
  if (!written.ok()) return absl::Status(written.code(), absl::StrCat("--dump: ", written.message()));
  return absl::OkStatus();
}

absl::Status PrintSite(const Options& options) {
  const SiteAttention site = options.plan.Resolve(*options.block, *options.step, options.steps, options.heads);
  LayoutMemo memo(options.grid);
  std::vector<std::string> groups;
  for (const HeadGroup& group : site.groups) {
    absl::StatusOr<const BlockSparseLayout*> layout = memo.Get(group.attention);
    if (!layout.ok()) return layout.status();
    const BlockSparseLayout& built = **layout;
    groups.push_back(absl::StrCat(
        "    {\"first_head\": ", group.first_head, ", \"last_head\": ", group.first_head + group.head_count - 1,
        ", \"mode\": ", Quote(SparsityPlanModeName(group.attention.mode)),
        ", \"parameters\": ", ParametersJson(group.attention), ", \"density\": ", Density(memo.DensityOf(built)),
        ", \"query_blocks\": ", built.row_offsets.dim(1) - 1,
        ", \"key_blocks\": ", (options.grid.tokens() + built.key_block - 1) / built.key_block,
        ", \"entries\": ", built.column_indices.dim(1), "}"));
  }
  absl::StatusOr<double> density = SiteDensity(site, options.heads, memo);
  if (!density.ok()) return density.status();
  const BlockShape blocks;
  std::printf("{\n  \"grid\": %s,\n  \"plan\": %s,\n  \"steps\": %d,\n  \"step\": %d,\n  \"block\": %d,\n",
              GridJson(options.grid).c_str(), Quote(PlanLabel(options.plan)).c_str(), options.steps, *options.step,
              *options.block);
  std::printf("  \"query_block\": %d,\n  \"key_block\": %d,\n  \"token_order\": \"%s\",\n  \"density\": %s,\n",
              blocks.query_block, blocks.key_block, site.tile_major() ? "tile-major" : "frame-major",
              Density(*density).c_str());
  std::printf("  \"heads\": [\n%s\n  ]\n}\n", absl::StrJoin(groups, ",\n").c_str());
  if (!options.dump.empty()) return WriteDump(options, site);
  return absl::OkStatus();
}

absl::Status PrintTable(const Options& options) {
  LayoutMemo memo(options.grid);
  std::vector<std::string> rows;
  double total = 0;
  for (int step = 0; step < options.steps; ++step) {
    std::vector<std::string> row;
    for (int block = 0; block < options.layers; ++block) {
      absl::StatusOr<double> density =
          SiteDensity(options.plan.Resolve(block, step, options.steps, options.heads), options.heads, memo);
      if (!density.ok()) return density.status();
      total += *density;
      row.push_back(Density(*density));
    }
    rows.push_back(absl::StrCat("    [", absl::StrJoin(row, ", "), "]"));
  }
  const BlockShape blocks;
  std::printf("{\n  \"grid\": %s,\n  \"plan\": %s,\n  \"steps\": %d,\n  \"layers\": %d,\n  \"heads\": %d,\n",
              GridJson(options.grid).c_str(), Quote(PlanLabel(options.plan)).c_str(), options.steps, options.layers,
              options.heads);
  std::printf("  \"query_block\": %d,\n  \"key_block\": %d,\n  \"mean_density\": %s,\n", blocks.query_block,
              blocks.key_block, Density(total / (static_cast<double>(options.steps) * options.layers)).c_str());
  std::printf("  \"density\": [\n%s\n  ]\n}\n", absl::StrJoin(rows, ",\n").c_str());
  return absl::OkStatus();
}

}  // namespace
}  // namespace zoetrope

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "What a sparsity plan makes the attention kernel compute: --grid F,H,W --plan PRESET|FILE --steps N "
      "[--step S --block B] [--heads H] [--layers L] [--dump FILE]");
  const std::vector<char*> positional = absl::ParseCommandLine(argc, argv);
  if (positional.size() > 1) {
    return zoetrope::ReportToolError(
        zoetrope::kTool, absl::InvalidArgumentError(absl::StrCat("unexpected argument '", positional[1], "'")), 2);
  }
  absl::StatusOr<zoetrope::Options> options = zoetrope::ReadOptions();
  if (!options.ok()) return zoetrope::ReportToolError(zoetrope::kTool, options.status(), 2);
  const absl::Status status = options->step ? zoetrope::PrintSite(*options) : zoetrope::PrintTable(*options);
  if (!status.ok()) return zoetrope::ReportToolError(zoetrope::kTool, status, 1);
  return 0;
}
