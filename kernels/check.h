// Internal invariant checks. A failed ZCHECK is a programming error inside Zoetrope (an operator called
// with shapes its caller already validated), so it aborts with the condition and location. Anything a
// user can cause (bad files, bad requests) is reported with absl::Status instead, never with ZCHECK.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>

namespace zoetrope::internal {
[[noreturn]] inline void CheckFailed(const char* file, int line, const char* condition, const std::string& message) {
  std::fprintf(stderr, "%s:%d: internal check failed: %s %s\n", file, line, condition, message.c_str());
  std::fflush(stderr);
  std::abort();
}
}  // namespace zoetrope::internal

#define ZCHECK(condition)                                                          \
  do {                                                                             \
    if (!(condition)) ::zoetrope::internal::CheckFailed(__FILE__, __LINE__, #condition, ""); \
  } while (0)

#define ZCHECK_MSG(condition, stream_expression)                                   \
  do {                                                                             \
    if (!(condition)) {                                                            \
      std::ostringstream zcheck_stream;                                            \
      zcheck_stream << stream_expression;                                          \
      ::zoetrope::internal::CheckFailed(__FILE__, __LINE__, #condition, zcheck_stream.str()); \
    }                                                                              \
  } while (0)
