// Which instruction set the kernels use, decided once per process from CPUID and the
// LLMOS_CPU_ISA environment variable, which can only lower it. The levels follow real CPUs, each
// one the previous plus features, and each kernel file is compiled for exactly one level (its
// suffix, CMakeLists.txt), so it never runs on a CPU lacking a feature its flags enable:
//   scalar       plain x86-64
//   avx2         AVX2 + FMA + F16C (Haswell, Zen 1-3)
//   avx512       + AVX-512 F/BW/VL/DQ (Skylake-SP)
//   avx512_vnni  + AVX-512 VNNI (Cascade Lake, Ice Lake)
//   avx512_bf16  + AVX-512 BF16 (Cooper Lake, Zen 4)
//   amx          + AMX-TILE/INT8/BF16 that the OS lets this process use (Sapphire Rapids): tile
//                kernels for multi-token (prefill) products of quantized weights.
#pragma once

#include <string>

namespace llmos {

// x86 levels count up from Scalar, AArch64 levels from Neon; LLMOS_CPU_ISA may only name a
// level of this CPU's architecture (or scalar).
// neon = armv8-a Advanced SIMD; neon_dotprod adds SDOT (armv8.2-a); neon_i8mm adds SMMLA.
enum class Isa {
  Scalar = 0, Avx2 = 1, Avx512 = 2, Avx512Vnni = 3, Avx512Bf16 = 4, Amx = 5,
  Neon = 10, NeonDotprod = 11, NeonI8mm = 12
};

Isa cpu_best_isa();            // the widest ISA this CPU and OS support
Isa cpu_active_isa();          // the ISA in use: best, or lower when LLMOS_CPU_ISA asks
const char* isa_name(Isa isa);
bool isa_is_arm(Isa isa);      // Neon and up
Isa detect_arm();              // cpu_features_arm.cc (Scalar off AArch64)
bool isa_from_name(const std::string& name, Isa* out);

}  // namespace llmos
