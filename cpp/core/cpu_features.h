// Which instruction set the kernels use, decided once per process from CPUID and the
// LLMOS_CPU_ISA environment variable (scalar | avx2 | avx512 | amx), which can only lower it.
// amx = avx512 plus Intel AMX tiles (AMX-TILE and AMX-INT8) that the OS lets this process use;
// it adds tile kernels for multi-token (prefill) products of quantized weights.
#pragma once

#include <string>

namespace llmos {

// x86 levels count up from Scalar, AArch64 levels from Neon; LLMOS_CPU_ISA may only name a
// level of this CPU's architecture (or scalar).
// neon = armv8-a Advanced SIMD; neon_dotprod adds SDOT (armv8.2-a); neon_i8mm adds SMMLA.
enum class Isa { Scalar = 0, Avx2 = 1, Avx512 = 2, Amx = 3, Neon = 10, NeonDotprod = 11, NeonI8mm = 12 };

Isa cpu_best_isa();            // the widest ISA this CPU and OS support
Isa cpu_active_isa();          // the ISA in use: best, or lower when LLMOS_CPU_ISA asks
const char* isa_name(Isa isa);
bool isa_is_arm(Isa isa);      // Neon and up
Isa detect_arm();              // cpu_features_arm.cc (Scalar off AArch64)
bool isa_from_name(const std::string& name, Isa* out);

}  // namespace llmos
