// Which instruction set the kernels use, decided once per process from CPUID and the
// LLMOS_CPU_ISA environment variable (scalar | avx2 | avx512 | amx), which can only lower it.
// amx = avx512 plus Intel AMX tiles (AMX-TILE and AMX-INT8) that the OS lets this process use;
// it adds tile kernels for multi-token (prefill) products of quantized weights.
#pragma once

#include <string>

namespace llmos {

enum class Isa { Scalar = 0, Avx2 = 1, Avx512 = 2, Amx = 3 };

Isa cpu_best_isa();            // the widest ISA this CPU and OS support
Isa cpu_active_isa();          // the ISA in use: best, or lower when LLMOS_CPU_ISA asks
const char* isa_name(Isa isa);
bool isa_from_name(const std::string& name, Isa* out);

}  // namespace llmos
