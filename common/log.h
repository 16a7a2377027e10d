// One-line log messages on stderr with a UTC timestamp and the component, written with a single call so
// lines of concurrent threads never interleave.
#pragma once

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace zoetrope {

void LogLine(absl::string_view component, absl::string_view message);

template <typename... Parts>
void Log(absl::string_view component, const Parts&... parts) {
  LogLine(component, absl::StrCat(parts...));
}

}  // namespace zoetrope
