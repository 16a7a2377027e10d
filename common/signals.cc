#include "common/signals.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <thread>

#include "common/log.h"

namespace zoetrope {
namespace {

sigset_t TerminationSet() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  return set;
}

}  // namespace

void BlockTerminationSignals() {
  sigset_t set = TerminationSet();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

void WatchTerminationSignals(std::function<void(int)> on_first) {
  std::thread([on_first = std::move(on_first)] {
    sigset_t set = TerminationSet();
    int signal_number = 0;
    if (sigwait(&set, &signal_number) != 0) return;
    Log("signals", "received ", strsignal(signal_number), ": draining (send it again to stop at once)");
    on_first(signal_number);
    if (sigwait(&set, &signal_number) != 0) return;
    Log("signals", "received ", strsignal(signal_number), " again: stopping now");
    std::_Exit(128 + signal_number);
  }).detach();
}

}  // namespace zoetrope
