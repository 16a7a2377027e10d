// zoetrope: the command-line entry point. `zoetrope <command> [--flags]`.
#include <cstdio>
#include <cstring>
#include <string>

#include "worker/cli/generate_command.h"

namespace {

void PrintUsage() {
  std::fprintf(stderr,
               "usage: zoetrope <command> [--flags]\n"
               "commands:\n"
               "  generate   run one generation locally (zoetrope generate --helpfull lists its flags)\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "help") == 0) {
    PrintUsage();
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  // The command's own flags follow it; drop the command word so absl sees only flags.
  argv[1] = argv[0];
  if (command == "generate") return zoetrope::RunGenerateCommand(argc - 1, argv + 1);
  std::fprintf(stderr, "zoetrope: unknown command \"%s\"\n", command.c_str());
  PrintUsage();
  return 2;
}
