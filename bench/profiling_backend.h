// A Backend decorator for benchmarks: times every operator call (synchronising before and after it, so
// the time is the device time of that call plus a few microseconds) and sums the times per operator
// and shape. For finding where a forward pass spends its time; never for production.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/backend.h"

namespace zoetrope {

class ProfilingBackend final : public Backend {
 public:
  explicit ProfilingBackend(Backend& inner) : inner_(inner) {}

  // Prints the entries that took the most time, and the total.
  void Report(FILE* out, int top = 25) const {
    std::vector<std::pair<std::string, Entry>> sorted(entries_.begin(), entries_.end());
    std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
    double total = 0.0;
    for (const auto& [label, entry] : sorted) total += entry.seconds;
    std::fprintf(out, "%-58s %7s %10s %6s\n", "operator [shape]", "calls", "ms", "%");
    for (int i = 0; i < std::min<int>(top, static_cast<int>(sorted.size())); ++i) {
      std::fprintf(out, "%-58s %7lld %10.2f %6.1f\n", sorted[i].first.c_str(), sorted[i].second.calls,
                   sorted[i].second.seconds * 1e3, 100.0 * sorted[i].second.seconds / total);
    }
    std::fprintf(out, "%-58s %7s %10.2f\n", "total (synchronised per call)", "", total * 1e3);
  }
  void Reset() { entries_.clear(); }
  // Disabled, calls go straight through (no synchronisation), so one wrapped model serves both timing
  // and profiling.
  void set_enabled(bool enabled) { enabled_ = enabled; }

  Device device() const override { return inner_.device(); }
  std::string name() const override { return inner_.name(); }
  DType compute_dtype() const override { return inner_.compute_dtype(); }

  Tensor Empty(const Shape& shape, DType dtype) override { return inner_.Empty(shape, dtype); }
  Tensor Upload(const Tensor& host, DType dtype) override { return Time("Upload", host, [&] { return inner_.Upload(host, dtype); }); }
  Tensor ToHost(const Tensor& tensor) override { return inner_.ToHost(tensor); }
  Tensor Cast(const Tensor& tensor, DType dtype) override {
    return Time(absl::StrCat("Cast->", DTypeName(dtype)), tensor, [&] { return inner_.Cast(tensor, dtype); });
  }
  void CopyInto(const Tensor& destination, const Tensor& source) override {
    Time("CopyInto", source, [&] { inner_.CopyInto(destination, source); return Tensor(); });
  }
  void Synchronize() override { inner_.Synchronize(); }

  Tensor Linear(const Tensor& x, const Tensor& weight, const Tensor* bias, Activation activation) override {
    const std::string label = absl::StrCat("Linear ", DTypeName(weight.dtype()), " ", x.numel() / x.dim(-1), "x",
                                           weight.dim(1), "->", weight.dim(0),
                                           activation == Activation::kGeluTanh ? " gelu"
                                           : activation == Activation::kSilu   ? " silu"
                                                                               : "");
    return Time(label, Tensor(), [&] { return inner_.Linear(x, weight, bias, activation); });
  }
  Tensor Activate(const Tensor& x, Activation activation) override {
    return Time("Activate", x, [&] { return inner_.Activate(x, activation); });
  }
  Tensor Combine(const std::vector<Term>& terms) override {
    return Time("Combine", *terms[0].tensor, [&] { return inner_.Combine(terms); });
  }
  void AddGated(const Tensor& x, const Tensor& y, const Tensor* gate) override {
    Time(gate != nullptr ? "AddGated" : "Add", y, [&] { inner_.AddGated(x, y, gate); return Tensor(); });
  }
  Tensor LayerNorm(const Tensor& x, const NormParams& params, DType out_dtype) override {
    return Time(absl::StrCat("LayerNorm->", DTypeName(out_dtype)), x, [&] { return inner_.LayerNorm(x, params, out_dtype); });
  }
  Tensor RmsNorm(const Tensor& x, const Tensor& weight, float epsilon) override {
    return Time("RmsNorm", x, [&] { return inner_.RmsNorm(x, weight, epsilon); });
  }
  void ApplyRope(const Tensor& x, const Tensor& cos, const Tensor& sin) override {
    Time("ApplyRope", x, [&] { inner_.ApplyRope(x, cos, sin); return Tensor(); });
  }
  Tensor Attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale, const BlockSparseLayout* layout) override {
    const std::string label = absl::StrCat("Attention ", q.dim(0), "x", k.dim(0), " h", q.dim(1), " d", q.dim(2));
    return Time(label, Tensor(), [&] { return inner_.Attention(q, k, v, scale, layout); });
  }
  Tensor Conv3d(const Tensor& x, const Tensor& weight, const Tensor* bias, int pad_front, int pad_back, int pad_height,
                int pad_width) override {
    return Time("Conv3d", x, [&] { return inner_.Conv3d(x, weight, bias, pad_front, pad_back, pad_height, pad_width); });
  }
  Tensor ChannelRmsNorm(const Tensor& x, const Tensor& gamma, Activation activation) override {
    return Time("ChannelRmsNorm", x, [&] { return inner_.ChannelRmsNorm(x, gamma, activation); });
  }
  Tensor UpsampleNearest2x(const Tensor& x) override {
    return Time("UpsampleNearest2x", x, [&] { return inner_.UpsampleNearest2x(x); });
  }
  Tensor SwapAxes(const Tensor& x, int64_t batch, int64_t rows, int64_t columns, int64_t inner) override {
    return Time("SwapAxes", x, [&] { return inner_.SwapAxes(x, batch, rows, columns, inner); });
  }
  Tensor Clamp(const Tensor& x, float minimum, float maximum) override {
    return Time("Clamp", x, [&] { return inner_.Clamp(x, minimum, maximum); });
  }
  Tensor GatherRows(const Tensor& table, const Tensor& ids, DType out_dtype) override {
    return Time("GatherRows", table, [&] { return inner_.GatherRows(table, ids, out_dtype); });
  }
  Tensor AttentionWithBias(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& bias, float scale) override {
    return Time("AttentionWithBias", q, [&] { return inner_.AttentionWithBias(q, k, v, bias, scale); });
  }
  Tensor Multiply(const Tensor& a, const Tensor& b) override {
    return Time("Multiply", a, [&] { return inner_.Multiply(a, b); });
  }
  Tensor Patchify(const Tensor& latent, int patch_t, int patch_h, int patch_w) override {
    return Time("Patchify", latent, [&] { return inner_.Patchify(latent, patch_t, patch_h, patch_w); });
  }
  Tensor Unpatchify(const Tensor& tokens, int channels, int grid_f, int grid_h, int grid_w, int patch_t, int patch_h,
                    int patch_w) override {
    return Time("Unpatchify", tokens, [&] {
      return inner_.Unpatchify(tokens, channels, grid_f, grid_h, grid_w, patch_t, patch_h, patch_w);
    });
  }

 private:
  struct Entry {
    long long calls = 0;
    double seconds = 0.0;
  };

  // Labels element-wise operators by their input's dtype and shape.
  template <typename Call>
  Tensor Time(const std::string& name, const Tensor& shape_of, Call&& call) {
    if (!enabled_) return call();
    const std::string label =
        shape_of.defined() ? absl::StrCat(name, " ", DTypeName(shape_of.dtype()), ShapeToString(shape_of.shape())) : name;
    inner_.Synchronize();
    const auto start = std::chrono::steady_clock::now();
    Tensor result = call();
    inner_.Synchronize();
    Entry& entry = entries_[label];
    ++entry.calls;
    entry.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return result;
  }

  Backend& inner_;
  bool enabled_ = true;
  std::map<std::string, Entry> entries_;
};

}  // namespace zoetrope
