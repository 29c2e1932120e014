"""CPU facts recorded beside benchmark and evaluation figures."""

from __future__ import annotations

from service.cpu import cpu_flags, cpu_model, describe_cpu

X86 = """processor\t: 0
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512_vnni
"""
ARM = """processor\t: 0
Features\t: fp asimd asimddp i8mm
"""


def test_flags_that_pick_the_kernels_in_a_fixed_order() -> None:
    assert cpu_flags(X86) == ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"]
    assert cpu_flags(ARM) == ["asimddp", "i8mm"]
    assert cpu_flags("") == []


def test_model_name_and_this_machine() -> None:
    assert cpu_model(X86) == "AMD EPYC 7B13"
    facts = describe_cpu()
    assert set(facts) == {"cpu", "machine", "cpu_flags"} and facts["cpu"]
