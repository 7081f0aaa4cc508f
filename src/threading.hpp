// The only oneTBB user. Runs the units of a pass on the calling thread, in the caller's arena,
// or in an arena capped by plan_options::max_threads: one arena per cap, shared by every plan
// of that cap, so that a layer and the next, planned alike, run their tasks on the same threads
// and a core reads again what it wrote (in an arena each, the threads took a pass's halves at
// random from call to call: docs/design.md, "One arena per cap (stop 52)"). Which thread runs a
// unit never changes what the unit computes.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>

namespace bnorm::detail {

/// How a parallel pass hands its units to the threads.
enum class unit_placement {
  /// oneTBB's automatic partitioner: a thread that is done takes part of what is left.
  balanced,
  /// The same units to the same thread at every call (oneTBB's static partitioner): each core
  /// then finds in its cache what it read and wrote the call before.
  same_threads,
};

class thread_limit {
 public:
  /// max_threads: 0 = the caller's arena; 1 = the calling thread only; N = the arena of N
  /// (clamped to the cores), shared with every thread_limit of N alive.
  explicit thread_limit(int max_threads = 0);
  ~thread_limit();
  thread_limit(thread_limit&&) noexcept;
  thread_limit& operator=(thread_limit&&) noexcept;

  bool single_threaded() const noexcept { return single_; }
  /// Whether a parallel pass can run on more than one thread: a cap of 2 or more on a machine
  /// of as many cores, or the caller's arena allowing more than one.
  bool more_than_one_thread() const noexcept;

  /// Whether the two run their parallel passes on the same threads: plans of the same cap share
  /// one arena.
  bool same_threads(const thread_limit& other) const noexcept {
    return arena_ != nullptr && arena_ == other.arena_;
  }

  /// Whether for_each(count, grain, serial, ...) calls its body once, on the calling thread:
  /// then it throws nothing that the body does not.
  bool runs_inline(std::size_t count, std::size_t grain, bool serial) const noexcept {
    return serial || single_ || count <= grain;
  }

  /// Calls body(begin, end) over [0, count) in blocks of at least `grain` units, in parallel
  /// unless `serial`, placed on the threads as `placement` says. May throw what oneTBB throws
  /// (e.g. std::bad_alloc).
  template <class Body>
  void for_each(std::size_t count, std::size_t grain, bool serial, const Body& body,
                unit_placement placement = unit_placement::balanced) const {
    if (runs_inline(count, grain, serial)) {
      body(std::size_t{0}, count);
      return;
    }
    run_parallel(count, grain, std::cref(body), placement);
  }

 private:
  using block_fn = std::function<void(std::size_t, std::size_t)>;
  void run_parallel(std::size_t count, std::size_t grain, const block_fn& body,
                    unit_placement placement) const;

  struct capped_arena;  // a tbb::task_arena; kept out of this header
  /// The arena of a cap, shared by every thread_limit of that cap alive (see thread_limit).
  static std::shared_ptr<capped_arena> arena_of(int threads);
  bool single_ = false;
  std::shared_ptr<capped_arena> arena_;  // set only for a cap of 2 or more
};

}  // namespace bnorm::detail
