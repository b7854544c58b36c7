#include "allocator_policy.h"

#include <cstdlib>  // defines __GLIBC__ on glibc

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace nudge {

void keep_large_allocations_for_reuse() {
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, 512 << 20);  // also turns off the dynamic threshold
  mallopt(M_TRIM_THRESHOLD, 1 << 30);    // do not return the heap's top to the system after every chunk
  mallopt(M_ARENA_MAX, 1);               // one heap: a block freed by the writer is reused by the preparer
#endif
}

}  // namespace nudge
