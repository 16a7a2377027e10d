// SIGTERM and SIGINT as events instead of asynchronous handlers: the signals are blocked in every thread
// and one thread waits for them with sigwait, so the reaction (draining) runs as ordinary code.
#pragma once

#include <functional>

namespace zoetrope {

// Blocks SIGTERM and SIGINT in the calling thread. Call it at the top of main, before any thread starts,
// so every thread inherits the mask.
void BlockTerminationSignals();

// Starts a detached thread that calls `on_first` (with the signal number) at the first SIGTERM/SIGINT
// and ends the process with status 128+signal at the second (an impatient operator).
void WatchTerminationSignals(std::function<void(int)> on_first);

}  // namespace zoetrope
