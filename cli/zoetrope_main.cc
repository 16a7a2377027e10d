// zoetrope: the command-line entry point. `zoetrope <command> [--flags]`.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/match.h"

#include "cli/generate_command.h"
#include "cli/serve_command.h"
#include "cli/service_commands.h"

namespace {

void PrintUsage() {
  std::fprintf(stderr,
               "usage: zoetrope <command> [--flags]\n"
               "commands:\n"
               "  generate   run one generation locally (zoetrope generate --helpfull lists its flags)\n"
               "  submit     queue a job on a scheduler (--server HOST:PORT; --watch follows it)\n"
               "  watch      follow a job: zoetrope watch JOB_ID\n"
               "  get        show a job: zoetrope get JOB_ID [--json]\n"
               "  list       list jobs: [--state queued,running] [--all] [--json]\n"
               "  cancel     cancel a job: zoetrope cancel JOB_ID\n"
               "  fetch      download a job's result: zoetrope fetch JOB_ID [--output FILE]\n"
               "  serve      serve --embedded: scheduler and one local worker in one process\n");
}

// Which flags a command reads. absl's own --help matches flags by the main file's name, and every flag of
// this binary lives in another file ("No flags matched"), so the commands' help is printed here.
// generate and serve take every flag of their file (new flags appear without an edit here); the service
// commands share one file, so they list their flags by name.
struct CommandFlags {
  const char* command;
  const char* whole_file;  // every flag defined in this file (suffix of the path), or null
  std::vector<std::string_view> names;
};

const std::vector<CommandFlags>& CommandFlagTable() {
  static const auto* table = [] {
    const std::vector<std::string_view> connection = {"server", "token", "tls_ca", "rpc_timeout"};
    auto with_connection = [&](std::vector<std::string_view> names) {
      names.insert(names.end(), connection.begin(), connection.end());
      return names;
    };
    return new std::vector<CommandFlags>{
        {"generate", "cli/generate_command.cc", {}},
        {"serve", "cli/serve_command.cc", {}},
        {"submit", nullptr,
         with_connection({"prompt", "negative_prompt", "model", "width", "height", "frames", "fps", "steps",
                          "guidance", "shift", "sampler", "seed", "attention", "priority", "deadline",
                          "client_request_id", "output_format", "watch", "json", "reconnect_for"})},
        {"watch", nullptr, with_connection({"reconnect_for"})},
        {"get", nullptr, with_connection({"json"})},
        {"list", nullptr, with_connection({"state", "page_size", "page_token", "all", "json"})},
        {"cancel", nullptr, with_connection({})},
        {"fetch", nullptr, with_connection({"output", "reconnect_for"})},
    };
  }();
  return *table;
}

bool WantsHelp(int argc, char** argv) {
  for (int i = 2; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--") return false;  // what follows is not a flag
    if (arg == "--help" || arg == "-help" || arg == "-h" || arg == "--helpshort") return true;
  }
  return false;
}

// Prints the command's flags, sorted, with defaults; 2 when the command is unknown.
int PrintCommandHelp(const std::string& command) {
  const auto& table = CommandFlagTable();
  const auto entry = std::find_if(table.begin(), table.end(),
                                  [&](const CommandFlags& row) { return command == row.command; });
  if (entry == table.end()) return 2;
  std::vector<const absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    const bool in_file = entry->whole_file != nullptr && absl::EndsWith(flag->Filename(), entry->whole_file);
    // Debian's abseil has its own string_view type: compare through std::string_view.
    const bool named = std::find(entry->names.begin(), entry->names.end(),
                                 std::string_view(name.data(), name.size())) != entry->names.end();
    if (in_file || named) flags.push_back(flag);
  }
  std::sort(flags.begin(), flags.end(), [](const absl::CommandLineFlag* a, const absl::CommandLineFlag* b) {
    return a->Name() < b->Name();
  });
  std::printf("usage: zoetrope %s [--flags]%s\nflags:\n", command.c_str(),
              command == "submit" || command == "generate" || command == "serve" || command == "list"
                  ? ""
                  : " JOB_ID");
  for (const absl::CommandLineFlag* flag : flags) {
    std::printf("  --%s  (default: \"%s\")\n      %s\n", std::string(flag->Name()).c_str(),
                flag->DefaultValue().c_str(), flag->Help().c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "help") == 0) {
    PrintUsage();
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  if (WantsHelp(argc, argv)) {
    if (PrintCommandHelp(command) == 0) return 0;
  }
  // The command's own flags follow it; drop the command word so absl sees only flags.
  argv[1] = argv[0];
  if (command == "generate") return zoetrope::RunGenerateCommand(argc - 1, argv + 1);
  if (command == "submit") return zoetrope::RunSubmitCommand(argc - 1, argv + 1);
  if (command == "watch") return zoetrope::RunWatchCommand(argc - 1, argv + 1);
  if (command == "get") return zoetrope::RunGetCommand(argc - 1, argv + 1);
  if (command == "list") return zoetrope::RunListCommand(argc - 1, argv + 1);
  if (command == "cancel") return zoetrope::RunCancelCommand(argc - 1, argv + 1);
  if (command == "fetch") return zoetrope::RunFetchCommand(argc - 1, argv + 1);
  if (command == "serve") return zoetrope::RunServeCommand(argc - 1, argv + 1);
  std::fprintf(stderr, "zoetrope: unknown command \"%s\"\n", command.c_str());
  PrintUsage();
  return 2;
}
