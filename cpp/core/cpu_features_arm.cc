// AArch64 level detection from the kernel's hardware capability bits (getauxval), which
// reflect both the CPU and what the OS enables; elsewhere there is no ARM level.
#include "core/cpu_features.h"

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif

namespace llmos {

Isa detect_arm() {
#if defined(__aarch64__) && defined(__linux__)
  const unsigned long hw = getauxval(AT_HWCAP), hw2 = getauxval(AT_HWCAP2);
  if (!(hw & HWCAP_ASIMD)) return Isa::Scalar;
  if (!(hw & HWCAP_ASIMDDP)) return Isa::Neon;
  if (!(hw2 & HWCAP2_I8MM)) return Isa::NeonDotprod;
  return Isa::NeonI8mm;
#else
  return Isa::Scalar;
#endif
}

}  // namespace llmos
