// `zoetrope serve --embedded`: the scheduler and one local worker in one process, the quick start of
// the service. The worker reaches the scheduler through an in-process channel (no port), clients through
// --listen. SIGTERM/Ctrl-C drains both (a second one stops at once).
//
//   zoetrope serve --embedded --model models/tiny [--listen 127.0.0.1:50051] [--data_dir zoetrope-data]
#pragma once

namespace zoetrope {

int RunServeCommand(int argc, char** argv);

}  // namespace zoetrope
