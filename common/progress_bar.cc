#include "common/progress_bar.h"

#include <unistd.h>

#include <cstdio>

#include "absl/strings/str_format.h"

namespace zoetrope {
namespace {

std::string FormatSeconds(double seconds) {
  if (seconds < 60) return absl::StrFormat("%.1fs", seconds);
  const int64_t whole = static_cast<int64_t>(seconds);
  if (whole < 3600) return absl::StrFormat("%dm%02ds", whole / 60, whole % 60);
  return absl::StrFormat("%dh%02dm", whole / 3600, (whole % 3600) / 60);
}

}  // namespace

ProgressBar::ProgressBar(std::string label, int64_t total, std::string unit)
    : label_(std::move(label)),
      total_(total),
      unit_(std::move(unit)),
      terminal_(isatty(fileno(stderr)) != 0),
      start_(std::chrono::steady_clock::now()),
      last_plain_line_(start_ - std::chrono::seconds(10)) {}

ProgressBar::~ProgressBar() {
  if (!finished_ && terminal_ && done_ > 0) std::fputc('\n', stderr);
}

void ProgressBar::Update(int64_t done, const std::string& detail) {
  done_ = done;
  Draw(false, detail);
}

void ProgressBar::Finish(const std::string& detail) {
  done_ = total_;
  Draw(true, detail);
  finished_ = true;
}

void ProgressBar::Draw(bool final_line, const std::string& detail) {
  const auto now = std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double fraction = total_ > 0 ? static_cast<double>(done_) / static_cast<double>(total_) : 1.0;
  const double eta = done_ > 0 ? elapsed / static_cast<double>(done_) * static_cast<double>(total_ - done_) : 0.0;
  const std::string counts = absl::StrFormat("%d/%d %s", done_, total_, unit_);
  const std::string timing =
      final_line ? absl::StrFormat("in %s", FormatSeconds(elapsed))
                 : absl::StrFormat("%s elapsed, ETA %s", FormatSeconds(elapsed), FormatSeconds(eta));
  const std::string suffix = detail.empty() ? "" : "  " + detail;
  if (terminal_) {
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(fraction * kWidth);
    std::string bar(filled, '#');
    bar.append(kWidth - filled, '.');
    std::fprintf(stderr, "\r\033[K%s [%s] %3.0f%% %s  %s%s", label_.c_str(), bar.c_str(), fraction * 100.0,
                 counts.c_str(), timing.c_str(), suffix.c_str());
    if (final_line) std::fputc('\n', stderr);
  } else if (final_line || now - last_plain_line_ >= std::chrono::seconds(1)) {
    std::fprintf(stderr, "%s %3.0f%% %s  %s%s\n", label_.c_str(), fraction * 100.0, counts.c_str(), timing.c_str(),
                 suffix.c_str());
    last_plain_line_ = now;
  }
  std::fflush(stderr);
}

}  // namespace zoetrope
