// zoetrope: the command-line entry point. `zoetrope <command> [--flags]`.
#include <cstdio>
#include <cstring>
#include <string>

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
