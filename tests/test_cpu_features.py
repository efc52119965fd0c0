"""CPU feature detection: bf16 support and the instruction sets that decide inference speed."""

from __future__ import annotations

import platform

from segmodels.devices import CPU_FLAGS, cpu_bf16_support, cpu_flags, cpu_name


def _cpuinfo(name: str | None, flags: str, *, key: str = "flags", processors: int = 2) -> str:
    entry = ["vendor_id\t: GenuineIntel", "cpu family\t: 6"]
    if name is not None:
        entry.append(f"model name\t: {name}")
    entry.append(f"{key}\t\t: {flags}")
    return "\n\n".join("\n".join([f"processor\t: {i}", *entry]) for i in range(processors)) + "\n"


SKYLAKE = _cpuinfo("Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz",
                   "fpu vme sse sse2 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl")  # fmt: skip
COOPER_LAKE = _cpuinfo("Intel(R) Xeon(R) Platinum 8353H", "sse2 avx avx2 avx512f avx512_vnni avx512_bf16")
SAPPHIRE_RAPIDS = _cpuinfo("Intel(R) Xeon(R) Platinum 8480+",
                           "avx2 avx512f avx512_vnni avx512_bf16 avx_vnni amx_bf16 amx_tile amx_int8")  # fmt: skip
HASWELL = _cpuinfo("Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz", "sse2 avx avx2 fma")
GRAVITON3 = _cpuinfo(None, "fp asimd evtstrm aes sha1 sve asimdhp bf16 i8mm", key="Features")


def test_without_bf16_instructions_the_reason_names_the_cpu_and_what_is_missing():
    ok, reason = cpu_bf16_support(SKYLAKE)
    assert ok is False
    assert reason == ("this CPU (Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz) has no AVX512-BF16 or AMX: bf16 on the "
                      "CPU would be emulated and slower")  # fmt: skip
    assert cpu_bf16_support(HASWELL)[0] is False


def test_avx512_bf16_and_amx_count_as_native():
    ok, reason = cpu_bf16_support(COOPER_LAKE)
    assert ok and "avx512_bf16" in reason and "8353H" in reason
    ok, reason = cpu_bf16_support(SAPPHIRE_RAPIDS)
    assert ok and "amx_bf16" in reason
    ok, reason = cpu_bf16_support(GRAVITON3)  # Arm's BF16 extension, listed under "Features"
    assert ok and "bf16" in reason


def test_flags_are_the_relevant_ones_in_a_fixed_order():
    assert cpu_flags(SKYLAKE) == ["avx2", "avx512f"]
    assert cpu_flags(SAPPHIRE_RAPIDS) == ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni",
                                          "avx_vnni"]  # fmt: skip
    assert cpu_flags(HASWELL) == ["avx2"]
    assert cpu_flags("") == [] and cpu_flags("processor\t: 0\n") == []
    assert set(cpu_flags(SAPPHIRE_RAPIDS)) <= set(CPU_FLAGS)


def test_cpu_name_reads_the_model_name_else_the_platform():
    assert cpu_name(COOPER_LAKE) == "Intel(R) Xeon(R) Platinum 8353H"
    fallback = platform.processor() or platform.machine() or "unknown CPU"
    assert cpu_name(GRAVITON3) == fallback  # no "model name" line
    assert cpu_name("") == fallback


def test_this_machine_gets_an_answer_with_a_reason():
    ok, reason = cpu_bf16_support()
    assert isinstance(ok, bool) and isinstance(reason, str) and reason.strip()
    assert isinstance(cpu_name(), str) and cpu_name().strip()
    flags = cpu_flags()
    assert all(flag in CPU_FLAGS for flag in flags)
    assert ok == any(flag in flags for flag in ("amx_bf16", "avx512_bf16", "bf16")) or not flags
