// JSON text for nudge's outputs (summary.json, logs, --json). Paths and file names come from the user and need not be
// UTF-8, which JSON requires: such bytes are written as U+FFFD instead of making the dump throw after the work is done.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace nudge {

inline std::string json_text(const nlohmann::json& j, int indent = -1) {
  return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace nudge
