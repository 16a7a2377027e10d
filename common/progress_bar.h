// Progress reporting for long command-line operations: a redrawn bar with rate and ETA on a terminal,
// one plain line per update (at most one a second) when stderr is a pipe or a log file.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace zoetrope {

class ProgressBar {
 public:
  // `label` prefixes every line; `total` is the number of units (steps, tensors, ...).
  ProgressBar(std::string label, int64_t total, std::string unit = "it");
  ~ProgressBar();  // finishes the line on a terminal

  // Marks `done` units complete; `detail` (e.g. "1.23 s/step") is shown after the counts.
  void Update(int64_t done, const std::string& detail = "");
  void Finish(const std::string& detail = "");

 private:
  void Draw(bool final_line, const std::string& detail);

  std::string label_;
  int64_t total_;
  std::string unit_;
  int64_t done_ = 0;
  bool terminal_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_plain_line_;
};

}  // namespace zoetrope
