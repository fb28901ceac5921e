"""Which instruction sets this CPU offers, found without importing TensorFlow.

TensorFlow's x86-64 wheels are built for AVX; on a CPU without it (Atom C3000 "Denverton",
Celeron J3455/J4125/N5105: the CPUs of many NAS units) ``import tensorflow`` dies with SIGILL,
which no ``try`` can catch. So the decision is made before the import, from two sources:

- the CPUID bits numpy's runtime dispatcher read when it was imported (``__cpu_features__``);
  these come from the processor itself, so they are right even under an emulator or a
  hypervisor that masks features;
- the ``flags`` line of ``/proc/cpuinfo``, the kernel's view, which also says whether the OS
  saves AVX state. Under user-mode emulation it describes the host, not the emulated CPU.

AVX counts as present only when every available source reports it.
"""

from __future__ import annotations

import importlib
import platform
from dataclasses import dataclass
from pathlib import Path

_X86 = {"x86_64", "amd64", "i386", "i686"}


@dataclass(frozen=True, slots=True)
class CpuInfo:
    """What the CPU checks found; ``reasons`` says why TensorFlow may not run."""

    machine: str
    avx: bool
    reasons: tuple[str, ...]

    @property
    def tensorflow_ok(self) -> bool:
        return not self.reasons


def _cpuinfo_flags(path: Path) -> set[str] | None:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None  # hidden (systemd ProcSubset=pid) or not Linux
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return None


def _cpuid_features() -> dict[str, bool] | None:
    # numpy 2 keeps the dispatcher's table in numpy._core, numpy 1 in numpy.core.
    for name in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            umath = importlib.import_module(name)
        except ImportError:
            continue
        features = getattr(umath, "__cpu_features__", None)
        if isinstance(features, dict):
            return {str(k): bool(v) for k, v in features.items()}
    return None


def detect_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """Report whether this CPU can run TensorFlow's wheels (AVX on x86-64)."""
    machine = platform.machine().lower()
    if machine not in _X86:
        # aarch64 wheels need only the baseline NEON every 64-bit ARM CPU has.
        return CpuInfo(machine, avx=False, reasons=())
    reasons: list[str] = []
    cpuid = _cpuid_features()
    flags = _cpuinfo_flags(cpuinfo)
    if cpuid is not None and not cpuid.get("AVX", False):
        reasons.append("the processor reports no AVX (CPUID)")
    if flags is not None and "avx" not in flags:
        reasons.append(f"{cpuinfo} lists no avx flag")
    if cpuid is None and flags is None:
        reasons.append("the CPU's features cannot be read")
    return CpuInfo(machine, avx=not reasons, reasons=tuple(reasons))
