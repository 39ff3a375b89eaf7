// Runs fn(begin, end) over [0, n) in ranges of `chunk`, taken from an atomic counter by the calling thread and by
// helpers scheduled on XLA's intra-op thread pool; returns once every range is done. A helper that starts late
// finds no range left and touches nothing but the shared counters.
#ifndef LLM4SBR_JAX_CSRC_PARALLEL_FOR_H_
#define LLM4SBR_JAX_CSRC_PARALLEL_FOR_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace llm4sbr {

inline void ParallelFor(xla::ffi::ThreadPool& pool, int64_t n, int64_t chunk,
                        std::function<void(int64_t, int64_t)> fn) {
  struct State {
    std::function<void(int64_t, int64_t)> fn;
    int64_t n, chunk, num_chunks;
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;

    void Drain() {
      for (int64_t c = next.fetch_add(1); c < num_chunks; c = next.fetch_add(1)) {
        fn(c * chunk, std::min(n, (c + 1) * chunk));
        if (done.fetch_add(1) + 1 == num_chunks) {
          std::lock_guard<std::mutex> lock(mu);
          cv.notify_all();
        }
      }
    }
  };
  auto state = std::make_shared<State>();
  state->fn = std::move(fn);
  state->n = n;
  state->chunk = chunk;
  state->num_chunks = (n + chunk - 1) / chunk;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), state->num_chunks) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([state] { state->Drain(); });
  state->Drain();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == state->num_chunks; });
}

}  // namespace llm4sbr

#endif  // LLM4SBR_JAX_CSRC_PARALLEL_FOR_H_
