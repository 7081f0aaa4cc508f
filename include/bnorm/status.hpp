// bnorm: error reporting shared by the engine API (status values) and the module API (exceptions).
#pragma once

#include <cstddef>
#include <exception>

#include "bnorm/export.h"

namespace bnorm {

/// What kind of failure a call reports. `invalid_argument` is a caller error (bad shape, bad
/// option, missing buffer); `unsupported` is a valid request this build or CPU cannot serve.
enum class status_code {
  ok = 0,
  invalid_argument,
  unsupported,
  out_of_memory,
  internal_error,
};

/// Returns a stable lower-case name for `code`, e.g. "invalid_argument".
BNORM_API const char* to_string(status_code code) noexcept;

/// The result of every engine-level call: a code and, on failure, one sentence that names the
/// parameter, what was expected and what came. Holds no heap memory, so returning it never
/// allocates and never throws.
class BNORM_API status {
 public:
  static constexpr std::size_t max_message_length = 255;

  status() noexcept { message_[0] = '\0'; }  // ok
  status(status_code code, const char* message) noexcept;
  // Copies take the message up to its terminator: returning an ok status through the layers
  // of a call copies one byte, not the whole buffer.
  status(const status& other) noexcept : code_(other.code_) { copy_message(other); }
  status& operator=(const status& other) noexcept {
    code_ = other.code_;
    copy_message(other);
    return *this;
  }

  /// Builds a failure whose message is formatted printf-style (truncated to fit).
  static status failure(status_code code, const char* format, ...) noexcept
#if defined(__GNUC__)
      __attribute__((format(printf, 2, 3)))
#endif
      ;

  bool ok() const noexcept {
    return code_ == status_code::ok;
  }
  explicit operator bool() const noexcept {
    return ok();
  }
  status_code code() const noexcept {
    return code_;
  }
  /// Empty when ok().
  const char* message() const noexcept {
    return message_;
  }

 private:
  void copy_message(const status& other) noexcept {
    std::size_t i = 0;
    while ((message_[i] = other.message_[i]) != '\0' && i < max_message_length) ++i;
    message_[max_message_length] = '\0';
  }

  status_code code_ = status_code::ok;
  // Only the terminated prefix is meaningful: the rest is left uninitialized so that creating
  // an ok status on every call costs nothing.
  char message_[max_message_length + 1];
};

/// The one exception type of the module API: it carries the status of the failed call.
class BNORM_API error : public std::exception {
 public:
  explicit error(const status& s) noexcept : status_(s) {}
  const char* what() const noexcept override { return status_.message(); }
  status_code code() const noexcept { return status_.code(); }
  const bnorm::status& get_status() const noexcept { return status_; }

 private:
  bnorm::status status_;
};

#if defined(__cpp_exceptions)
/// Throws `error` when `s` is a failure; the bridge from the engine API to the module API. Not
/// declared where exceptions are off (-fno-exceptions): the engine API never throws.
inline void throw_if_failed(const status& s) {
  if (!s.ok()) throw error(s);
}
#endif

}  // namespace bnorm
