// status: a fixed-size message so that reporting a failure never allocates.
#include "bnorm/status.hpp"

#include <cstdarg>
#include <cstdio>
#include <cstring>

namespace bnorm {

const char* to_string(status_code code) noexcept {
  switch (code) {
    case status_code::ok: return "ok";
    case status_code::invalid_argument: return "invalid_argument";
    case status_code::unsupported: return "unsupported";
    case status_code::out_of_memory: return "out_of_memory";
    case status_code::internal_error: return "internal_error";
  }
  return "unknown";
}

status::status(status_code code, const char* message) noexcept : code_(code) {
  message_[0] = '\0';
  if (message != nullptr) {
    std::strncpy(message_, message, max_message_length);
    message_[max_message_length] = '\0';
  }
}

status status::failure(status_code code, const char* format, ...) noexcept {
  status result(code, nullptr);
  std::va_list args;
  va_start(args, format);
  std::vsnprintf(result.message_, sizeof(result.message_), format, args);
  va_end(args);
  return result;
}

}  // namespace bnorm
