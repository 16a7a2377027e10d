// The client commands of `zoetrope`: they talk to a scheduler (--server, default 127.0.0.1:50051).
//
//   zoetrope submit --prompt "..." [--model tiny --width 128 --height 128 --frames 17 --steps 10 ...] [--watch]
//   zoetrope watch JOB_ID        progress bar on a terminal, plain lines otherwise; exit 0 iff SUCCEEDED
//   zoetrope get JOB_ID [--json]
//   zoetrope list [--state queued,running] [--model M] [--page_size N] [--all] [--json]
//   zoetrope cancel JOB_ID
//   zoetrope fetch JOB_ID [--output FILE]   resumes from FILE.partial after a broken download
//
// The generation flags (--model, --prompt, --width, --height, --frames, --steps, --guidance, --shift,
// --sampler, --seed, --output) are those of `zoetrope generate`, with the same defaults; for submit,
// --model names a model (a path gives its last component, so `--model models/tiny` submits to "tiny").
// The flags these commands add are declared in cli/service_flags.h for other commands to share.
#pragma once

namespace zoetrope {

int RunSubmitCommand(int argc, char** argv);
int RunWatchCommand(int argc, char** argv);
int RunGetCommand(int argc, char** argv);
int RunListCommand(int argc, char** argv);
int RunCancelCommand(int argc, char** argv);
int RunFetchCommand(int argc, char** argv);

}  // namespace zoetrope
