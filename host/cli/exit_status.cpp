#include "exit_status.h"

#include <new>

#include "errors.h"
#include "interrupt.h"

namespace nudge::cli {

ExitStatus exit_status_of(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const ExitWith& x) {
    return {x.code, x.what()};
  } catch (const Interrupted& x) {
    if (x.kept.empty())
      return {128 + x.signal, std::string(x.what()) + "; nothing of this run was kept (the output folder holds the "
                                                      "previous complete results, if any)"};
    return {128 + x.signal, std::string(x.what()) + "; " + x.kept};
  } catch (const InputError& x) {
    return {2, x.what()};
  } catch (const IoError& x) {  // its message starts "I/O error:"
    return {1, x.what()};
  } catch (const OutOfMemory& x) {
    return {1, x.what()};
  } catch (const std::bad_alloc&) {
    return {1, "out of memory (an allocation failed; try a smaller --chunk or --count)"};
  } catch (const std::exception& x) {
    return {1, std::string("internal error: ") + x.what()};
  } catch (...) {
    return {1, "internal error: an unknown exception"};
  }
}

}  // namespace nudge::cli
