// SyncBatchNorm over MPI: per call, one MPI_Allgather of a fixed-size header (what the rank
// was asked, and whether its arguments passed), then one of the per-channel blocks of
// bnorm/distributed.hpp, merged in rank order by every rank. All-gather rather than
// all-reduce: MPI's reductions may add in any order (MPI-4.1 §6.9.1), the gathered blocks are
// merged in one, so every rank, every repetition and every rank count's merge of the same
// blocks gives the same bits; and the blocks are O(C) doubles a rank (docs/design.md has the
// cost model).
#include "bnorm/mpi.hpp"

#include <cstdio>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace bnorm::mpi {
namespace {

/// What a rank was asked, as 64-bit words that every rank compares with every other's.
enum header_word : int {
  version_word,  // of this header's layout
  status_word,   // 0: the rank's arguments passed; else the status code that refused them
  step_word,     // which step's blocks the rank sends (exchange_step)
  channels_word,
  dtype_word,
  layout_word,
  activation_word,
  convention_word,
  update_running_word,
  cumulative_word,
  epsilon_word,  // the bits of the doubles
  momentum_word,
  clamp_min_word,
  clamp_max_word,
  header_words
};
constexpr std::int64_t header_version = 2;

/// The two steps' blocks are alike in size (1 + 2C doubles): a rank in the forward and another
/// in the backward would merge each other's blocks as their own.
enum class exchange_step : std::int64_t { forward_statistics = 1, backward_gradient_sums = 2 };

std::int64_t bits_of(double value) {
  std::int64_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

struct header {
  std::int64_t words[header_words];
};

/// The header of a rank that refused the call before it had a plan for it: its status alone.
header refusal_header(const status& refused) {
  header h{};
  h.words[version_word] = header_version;
  h.words[status_word] = static_cast<std::int64_t>(refused.code());
  return h;
}

header header_of(const plan& p, exchange_step step, const status& local) {
  const problem& prob = p.get_problem();
  const plan_options& o = p.options();
  header h{};
  h.words[version_word] = header_version;
  h.words[status_word] = local ? 0 : static_cast<std::int64_t>(local.code());
  h.words[step_word] = static_cast<std::int64_t>(step);
  h.words[channels_word] = prob.shape[1];
  h.words[dtype_word] = static_cast<std::int64_t>(prob.dtype);
  h.words[layout_word] = static_cast<std::int64_t>(prob.layout);
  h.words[activation_word] = static_cast<std::int64_t>(o.activation);
  h.words[convention_word] = static_cast<std::int64_t>(o.convention);
  h.words[update_running_word] = o.update_running_stats;
  h.words[cumulative_word] = o.cumulative_average;
  h.words[epsilon_word] = bits_of(prob.epsilon);
  // Values a step does not use are not compared: momentum without a running update by it, the
  // clamp bounds of another activation.
  const bool momentum_used = o.update_running_stats && !o.cumulative_average;
  const bool clamps = o.activation == activation::clamp;
  h.words[momentum_word] =
      momentum_used ? bits_of(o.momentum.value_or(default_momentum(o.convention))) : 0;
  h.words[clamp_min_word] = clamps ? bits_of(o.clamp_min) : 0;
  h.words[clamp_max_word] = clamps ? bits_of(o.clamp_max) : 0;
  return h;
}

/// A header word's value as its message names it: the enums' names, the flags' and the
/// doubles' values, the other counts as numbers.
void value_text(int word, std::int64_t value, char* text, std::size_t size) {
  const auto named = [&](const char* name) { std::snprintf(text, size, "%s", name); };
  switch (word) {
    case dtype_word: return named(to_string(static_cast<dtype>(value)));
    case layout_word: return named(to_string(static_cast<layout>(value)));
    case activation_word: return named(to_string(static_cast<activation>(value)));
    case convention_word: return named(to_string(static_cast<momentum_convention>(value)));
    case update_running_word:
    case cumulative_word: return named(value ? "true" : "false");
    case epsilon_word:
    case momentum_word:
    case clamp_min_word:
    case clamp_max_word: {
      double number = 0.0;
      std::memcpy(&number, &value, sizeof number);
      std::snprintf(text, size, "%.17g", number);
      return;
    }
    default: std::snprintf(text, size, "%lld", static_cast<long long>(value));
  }
}

const char* word_name(int word) {
  switch (word) {
    case version_word: return "the bnorm_mpi header version";
    case step_word: return "the step (1: forward_training, 2: backward_training)";
    case channels_word: return "the channels (C)";
    case dtype_word: return "the dtype";
    case layout_word: return "the layout";
    case activation_word: return "the activation";
    case convention_word: return "the momentum convention";
    case update_running_word: return "update_running_stats";
    case cumulative_word: return "cumulative_average";
    case epsilon_word: return "epsilon";
    case momentum_word: return "momentum";
    case clamp_min_word: return "clamp_min";
    case clamp_max_word: return "clamp_max";
    default: return "the header";
  }
}

status mpi_failure(const char* call, int code) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  MPI_Error_string(code, text, &length);
  return status::failure(status_code::internal_error, "bnorm::mpi: %s failed: %.200s", call, text);
}

/// A communicator this rank can exchange over: MPI running, an intracommunicator. Checked
/// before any collective call, on this rank alone (a rank cannot tell the others that its
/// communicator is not one).
status usable(MPI_Comm comm, int* ranks, int* rank) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) {
    return status::failure(status_code::invalid_argument,
                           "bnorm::mpi: expected MPI to be running (between MPI_Init and "
                           "MPI_Finalize), got it %s",
                           initialized ? "finalized" : "not initialized");
  }
  if (comm == MPI_COMM_NULL) {
    return status(status_code::invalid_argument,
                  "comm: expected a communicator, got MPI_COMM_NULL");
  }
  int inter = 0;
  if (int code = MPI_Comm_test_inter(comm, &inter); code != MPI_SUCCESS) {
    return mpi_failure("MPI_Comm_test_inter", code);
  }
  if (inter) {
    return status(status_code::invalid_argument,
                  "comm: expected an intracommunicator (its ranks' batches are one batch), got "
                  "an intercommunicator");
  }
  if (int code = MPI_Comm_size(comm, ranks); code != MPI_SUCCESS) {
    return mpi_failure("MPI_Comm_size", code);
  }
  if (int code = MPI_Comm_rank(comm, rank); code != MPI_SUCCESS) {
    return mpi_failure("MPI_Comm_rank", code);
  }
  return {};
}

/// A status's message as a fixed block every rank can gather.
struct message_block {
  char text[status::max_message_length + 1];
};

/// Every buffer of one collective step, this rank's block included, allocated before its first
/// collective call: a rank that cannot have them says so in agree_on_buffers instead of leaving
/// the others waiting in a gather it never joins.
struct step_buffers {
  std::vector<header> headers;
  std::vector<message_block> messages;
  std::vector<double> block, blocks, combined;

  /// `block_size` doubles for this rank's block and the combined one, `ranks` of each of the
  /// rest; false when memory runs out.
  bool allocate(int ranks, std::size_t block_size) noexcept {
    try {
      const auto count = static_cast<std::size_t>(ranks);
      headers.resize(count);
      messages.resize(count);
      block.resize(block_size);
      combined.resize(block_size);
      blocks.resize(count * block_size);
      return true;
    } catch (const std::bad_alloc&) {
      return false;
    } catch (const std::length_error&) {
      return false;
    }
  }
};

/// Whether every rank has its step's buffers: one reduction of no buffer of its own, so that a
/// rank short of memory still takes part. Every rank returns the same verdict.
status agree_on_buffers(bool allocated, int ranks, int rank, MPI_Comm comm) {
  const int mine = allocated ? ranks : rank;
  int first = ranks;
  if (int code = MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm); code != MPI_SUCCESS) {
    return mpi_failure("MPI_Allreduce of the buffers' verdict", code);
  }
  if (first == ranks) return {};
  return status::failure(status_code::out_of_memory,
                         "bnorm::mpi: rank %d could not allocate the exchange's buffers; nothing "
                         "was written on any rank",
                         first);
}

/// The collective part of a call: every rank's header, checked alike on every rank; where some
/// rank refused, every rank's message (so that each names the first rank that refused and
/// why); else, if all agree, every rank's block (buffers.block, `block_size` doubles) gathered
/// into buffers.blocks. `local` is this rank's own verdict, returned as it is when it refused.
status exchange(const header& mine, const status& local, std::size_t block_size,
                step_buffers& buffers, MPI_Comm comm) {
  const int ranks = static_cast<int>(buffers.headers.size());
  std::vector<header>& all = buffers.headers;
  if (int code = MPI_Allgather(mine.words, header_words, MPI_INT64_T, all.data(), header_words,
                               MPI_INT64_T, comm);
      code != MPI_SUCCESS) {
    return mpi_failure("MPI_Allgather of the headers", code);
  }
  int refusing = -1;
  for (int r = 0; r < ranks && refusing < 0; ++r) {
    if (all[static_cast<std::size_t>(r)].words[status_word] != 0) refusing = r;
  }
  if (refusing >= 0) {  // every rank knows it: every rank gathers the messages
    message_block own{};
    std::snprintf(own.text, sizeof own.text, "%s", local.message());
    std::vector<message_block>& messages = buffers.messages;
    if (int code = MPI_Allgather(own.text, sizeof own.text, MPI_CHAR, messages.data(),
                                 sizeof own.text, MPI_CHAR, comm);
        code != MPI_SUCCESS) {
      return mpi_failure("MPI_Allgather of the refusals", code);
    }
    if (!local) return local;
    // The refusing rank's own code (its arguments, or its memory), in its header.
    const auto code =
        static_cast<status_code>(all[static_cast<std::size_t>(refusing)].words[status_word]);
    return status::failure(code,
                           "bnorm::mpi: rank %d refused its arguments (%.160s); nothing was "
                           "written on any rank",
                           refusing, messages[static_cast<std::size_t>(refusing)].text);
  }
  for (int r = 0; r < ranks; ++r) {
    const header& theirs = all[static_cast<std::size_t>(r)];
    for (int w = 0; w < header_words; ++w) {
      if (w == status_word || theirs.words[w] == mine.words[w]) continue;
      char here[32], there[32];
      value_text(w, mine.words[w], here, sizeof here);
      value_text(w, theirs.words[w], there, sizeof there);
      return status::failure(status_code::invalid_argument,
                             "bnorm::mpi: expected every rank to agree on %s, got %s here, %s on "
                             "rank %d; nothing was written on any rank",
                             word_name(w), here, there, r);
    }
  }
  // MPI counts are ints: every rank agrees on C here, so every rank refuses alike.
  if (block_size > static_cast<std::size_t>(std::numeric_limits<int>::max())) {
    return status::failure(
        status_code::invalid_argument,
        "bnorm::mpi: expected blocks of at most 2^31 - 1 doubles (C below 2^30), "
        "got %zu",
        block_size);
  }
  if (int code =
          MPI_Allgather(buffers.block.data(), static_cast<int>(block_size), MPI_DOUBLE,
                        buffers.blocks.data(), static_cast<int>(block_size), MPI_DOUBLE, comm);
      code != MPI_SUCCESS) {
    return mpi_failure("MPI_Allgather of the blocks", code);
  }
  return {};
}

/// A rank's part in a collective step up to its exchange: the communicator checked, the step's
/// buffers allocated and agreed on by every rank, then `local(buffers)` (this rank's verdict,
/// its block written) exchanged.
template <class Local>
status prepared_exchange(std::size_t block_size, MPI_Comm comm, step_buffers& buffers, int* rank,
                         const Local& local) {
  int ranks = 0;
  if (status s = usable(comm, &ranks, rank); !s) return s;
  // Blocks beyond MPI's int counts get no buffers: exchange refuses them once the headers agree.
  const bool countable = block_size <= static_cast<std::size_t>(std::numeric_limits<int>::max());
  if (status s =
          agree_on_buffers(buffers.allocate(ranks, countable ? block_size : 0), ranks, *rank, comm);
      !s) {
    return s;
  }
  const auto [mine, verdict] = local();
  return exchange(mine, verdict, block_size, buffers, comm);
}

/// Runs body() and turns an allocation failure into a status: the call never throws.
template <class Body>
status no_throw(const Body& body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return status(status_code::out_of_memory, "bnorm::mpi: out of memory for the exchange");
  } catch (...) {
    return status(status_code::internal_error, "bnorm::mpi: unexpected exception");
  }
}

/// A rank's block: 1 + 2C doubles, the same on every rank that agrees on C. An uninitialized
/// plan has no channels: its rank refuses (and says so) before any block moves.
std::size_t block_size_of(const plan& p) {
  const std::int64_t channels = p.valid() ? p.get_problem().shape[1] : 0;
  return statistics_exchange_size(static_cast<std::size_t>(channels > 0 ? channels : 0));
}

/// One collective step: this rank's block from local(block, size), every rank's gathered
/// (after the headers agree), combined by combine(C, blocks, ranks, out, size) in rank order,
/// then finish(this rank's own block, the combined one, size).
template <class Local, class Combine, class Finish>
status collective_step(const plan& p, exchange_step step, MPI_Comm comm, const Local& local,
                       const Combine& combine, const Finish& finish) noexcept {
  return no_throw([&]() -> status {
    const std::size_t size = block_size_of(p);
    step_buffers buffers;
    int rank = 0;
    if (status s = prepared_exchange(size, comm, buffers, &rank,
                                     [&] {
                                       // No block buffer: refused once the headers agree.
                                       const status verdict =
                                           buffers.block.size() == size
                                               ? local(buffers.block.data(), size)
                                               : status();
                                       return std::pair(header_of(p, step, verdict), verdict);
                                     });
        !s) {
      return s;
    }
    const std::size_t channels = (size - 1) / 2;
    if (status s = combine(channels, buffers.blocks.data(), buffers.blocks.size() / size,
                           buffers.combined.data(), size);
        !s) {
      return s;
    }
    return finish(buffers.blocks.data() + static_cast<std::size_t>(rank) * size,
                  buffers.combined.data(), size);
  });
}

class communicator_exchange final : public training_exchange {
 public:
  explicit communicator_exchange(MPI_Comm comm) : comm_(comm) {}
  status forward_training(const plan& p, const training_args& args) const override {
    return mpi::forward_training(p, args, comm_);
  }
  status backward_training(const plan& p, const backward_args& args) const override {
    return mpi::backward_training(p, args, comm_);
  }
  void refuse(const status& reason) const override { mpi::refuse(reason, comm_); }

 private:
  MPI_Comm comm_;
};

}  // namespace

status forward_training(const plan& p, const training_args& args, MPI_Comm comm) noexcept {
  return collective_step(
      p, exchange_step::forward_statistics, comm,
      [&](double* block, std::size_t size) { return p.local_statistics(args, block, size); },
      merge_statistics,
      // Every rank has the same merged block: a refusal here (one value in all) is every rank's.
      [&](const double*, const double* merged, std::size_t size) {
        return p.forward_training_merged(args, merged, size);
      });
}

status backward_training(const plan& p, const backward_args& args, MPI_Comm comm) noexcept {
  return collective_step(
      p, exchange_step::backward_gradient_sums, comm,
      [&](double* block, std::size_t size) { return p.local_gradient_sums(args, block, size); },
      sum_gradient_exchanges,
      [&](const double* own, const double* summed, std::size_t size) {
        return p.backward_training_merged(args, own, summed, size);
      });
}

status refuse(const status& reason, MPI_Comm comm) noexcept {
  return no_throw([&]() -> status {
    const status refused = reason ? status(status_code::invalid_argument,
                                           "bnorm::mpi::refuse: refused with no reason given")
                                  : reason;
    step_buffers buffers;
    int rank = 0;
    return prepared_exchange(0, comm, buffers, &rank,
                             [&] { return std::pair(refusal_header(refused), refused); });
  });
}

std::shared_ptr<const training_exchange> make_training_exchange(MPI_Comm comm) {
  return std::make_shared<communicator_exchange>(comm);
}

}  // namespace bnorm::mpi
