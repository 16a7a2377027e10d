// Flags of the `zoetrope` client commands that other commands may share (absl flags are global per
// binary: a flag is defined once, in cli/service_commands.cc, and declared here). `generate`
// should reuse --negative_prompt and --fps from here rather than define its own.
#pragma once

#include <string>

#include "absl/flags/declare.h"
#include "absl/time/time.h"

ABSL_DECLARE_FLAG(std::string, server);
ABSL_DECLARE_FLAG(std::string, token);
ABSL_DECLARE_FLAG(std::string, tls_ca);
ABSL_DECLARE_FLAG(std::string, negative_prompt);
ABSL_DECLARE_FLAG(int32_t, fps);
ABSL_DECLARE_FLAG(std::string, priority);
ABSL_DECLARE_FLAG(absl::Duration, deadline);
ABSL_DECLARE_FLAG(std::string, client_request_id);
ABSL_DECLARE_FLAG(std::string, output_format);
