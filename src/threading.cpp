#include "threading.hpp"

#include <algorithm>
#include <map>
#include <mutex>

#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/info.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/task_arena.h>
#include <oneapi/tbb/task_group.h>

#include "fp_environment.hpp"

namespace bnorm::detail {

struct thread_limit::capped_arena {
  explicit capped_arena(int threads) : arena(threads) { arena.initialize(); }
  tbb::task_arena arena;
};

std::shared_ptr<thread_limit::capped_arena> thread_limit::arena_of(int threads) {
  // Held weakly: the last plan of a cap frees its arena. The table is never destroyed, so that
  // a plan made while the program's statics are destroyed (in a global's destructor) still
  // finds it.
  static std::mutex* const guard = new std::mutex;
  static auto* const arenas = new std::map<int, std::weak_ptr<capped_arena>>;
  const std::lock_guard<std::mutex> lock(*guard);
  std::weak_ptr<capped_arena>& slot = (*arenas)[threads];
  std::shared_ptr<capped_arena> arena = slot.lock();
  if (!arena) {
    arena = std::make_shared<capped_arena>(threads);
    slot = arena;
  }
  return arena;
}

thread_limit::thread_limit(int max_threads) {
  const fp_environment_scope::callers_modes callers;  // oneTBB may meet this thread here
  if (max_threads == 1) {
    single_ = true;
  } else if (max_threads > 1) {
    // More threads than cores only oversubscribes (and makes oneTBB warn); results do not depend
    // on the count, so clamping changes nothing but speed.
    const int cores = std::max(1, tbb::info::default_concurrency());
    const int threads = std::min(max_threads, cores);
    if (threads == 1) {
      single_ = true;
    } else {
      arena_ = arena_of(threads);
    }
  }
}

bool thread_limit::more_than_one_thread() const noexcept {
  if (single_ || arena_ != nullptr) return !single_;
  const fp_environment_scope::callers_modes callers;
  return tbb::this_task_arena::max_concurrency() > 1;
}

thread_limit::~thread_limit() = default;
thread_limit::thread_limit(thread_limit&&) noexcept = default;
thread_limit& thread_limit::operator=(thread_limit&&) noexcept = default;

void thread_limit::run_parallel(std::size_t count, std::size_t grain, const block_fn& body,
                                unit_placement placement) const {
  // The caller's modes while oneTBB runs the loop; each block computes in bnorm's.
  const fp_environment_scope::callers_modes callers;
  auto units = [&] {
    // An isolated context: a call made from inside a caller's task whose group is cancelled
    // (another iteration threw, say) must still run every unit, not return with dst unwritten.
    // bnorm's own bodies neither throw nor cancel.
    tbb::task_group_context context(tbb::task_group_context::isolated);
    const tbb::blocked_range<std::size_t> range(0, count, grain);
    const auto block = [&](const tbb::blocked_range<std::size_t>& r) {
      // Workers keep their own floating-point environment: each block computes in bnorm's.
      const fp_environment_scope environment;
      body(r.begin(), r.end());
    };
    if (placement == unit_placement::same_threads) {
      tbb::parallel_for(range, block, tbb::static_partitioner(), context);
    } else {
      tbb::parallel_for(range, block, context);
    }
  };
  // Isolated: while it waits for the units, the calling thread takes none of the caller's own
  // tasks (an iteration of the caller's loop around this call, which could wait on a lock the
  // thread holds, or find its thread's state in the middle of this call).
  auto loop = [&] { tbb::this_task_arena::isolate(units); };
  if (arena_) {
    arena_->arena.execute(loop);
  } else {
    loop();  // in whatever arena the caller runs in, so its limit holds
  }
}

}  // namespace bnorm::detail
