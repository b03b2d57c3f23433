#include <cstdint>
#include "core/cpu_features.h"

#include <cstdlib>

#include "core/errors.h"

#if defined(__x86_64__)
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace llmos {

namespace {

constexpr Isa kIsaLevels[] = {Isa::Scalar,     Isa::Avx2, Isa::Avx512,      Isa::Avx512Vnni, Isa::Avx512Bf16,
                              Isa::Amx,        Isa::Neon, Isa::NeonDotprod, Isa::NeonI8mm};

std::string isa_names() {
  std::string s;
  for (Isa i : kIsaLevels) s += std::string(s.empty() ? "" : ", ") + isa_name(i);
  return s;
}

#if defined(__x86_64__)
uint64_t xgetbv0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}

// Linux hands out the 8 KB AMX tile state only on request (arch_prctl), once per process;
// without it the first tile instruction raises SIGILL.
bool request_amx_permission() {
#if defined(__linux__)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}
#endif

Isa detect() {
#if defined(__x86_64__)
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return Isa::Scalar;
  const bool osxsave = c & (1u << 27), fma = c & (1u << 12), f16c = c & (1u << 29);
  if (!osxsave) return Isa::Scalar;
  const uint64_t xcr0 = xgetbv0();
  const bool ymm_os = (xcr0 & 0x6) == 0x6;             // SSE + AVX state
  const bool zmm_os = (xcr0 & 0xe6) == 0xe6;           // + opmask, ZMM_Hi256, Hi16_ZMM
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return Isa::Scalar;
  const bool avx2 = b & (1u << 5);
  const bool avx512f = b & (1u << 16), avx512dq = b & (1u << 17), avx512bw = b & (1u << 30),
             avx512vl = b & (1u << 31), avx512vnni = c & (1u << 11);
  unsigned a1 = 0, b1 = 0, c1 = 0, d1 = 0;
  __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1);
  const bool avx512bf16 = a1 & (1u << 5);
  const bool amx_bf16 = d & (1u << 22), amx_tile = d & (1u << 24), amx_int8 = d & (1u << 25);
  const bool tile_os = (xcr0 & 0x60000) == 0x60000;    // XTILECFG + XTILEDATA
  if (!(ymm_os && avx2 && fma && f16c)) return Isa::Scalar;
  if (!(zmm_os && avx512f && avx512dq && avx512bw && avx512vl)) return Isa::Avx2;
  if (!avx512vnni) return Isa::Avx512;
  if (!avx512bf16) return Isa::Avx512Vnni;
  // Asked last: the permission is granted for the whole process, so ask only when it is used.
  if (amx_tile && amx_int8 && amx_bf16 && tile_os && request_amx_permission()) return Isa::Amx;
  return Isa::Avx512Bf16;
#else
  return detect_arm();
#endif
}

Isa pick() {
  Isa best = detect();
  const char* env = std::getenv("LLMOS_CPU_ISA");
  if (!env || !*env) return best;
  Isa asked;
  if (!isa_from_name(env, &asked))
    throw Error(Error::Kind::InvalidInput, "", "LLMOS_CPU_ISA",
                std::string("expected one of " + isa_names() + "; got '") + env + "'");
  if (asked != Isa::Scalar && isa_is_arm(asked) != isa_is_arm(best))
    throw Error(Error::Kind::InvalidInput, "", "LLMOS_CPU_ISA",
                std::string("'") + env + "' is not an ISA of this CPU's architecture (best: " + isa_name(best) + ")");
  return asked < best ? asked : best;
}

}  // namespace

Isa cpu_best_isa() {
  static const Isa isa = detect();
  return isa;
}

Isa cpu_active_isa() {
  static const Isa isa = pick();
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    case Isa::Avx512Vnni: return "avx512_vnni";
    case Isa::Avx512Bf16: return "avx512_bf16";
    case Isa::Amx: return "amx";
    case Isa::Neon: return "neon";
    case Isa::NeonDotprod: return "neon_dotprod";
    case Isa::NeonI8mm: return "neon_i8mm";
  }
  return "?";
}

bool isa_is_arm(Isa isa) { return isa >= Isa::Neon; }

bool isa_from_name(const std::string& name, Isa* out) {
  for (Isa i : kIsaLevels)
    if (name == isa_name(i)) { *out = i; return true; }
  return false;
}

}  // namespace llmos
