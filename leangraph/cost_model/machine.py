"""What identifies this machine for results that depend on it: the CPU and its features, the
threads, and the versions of the libraries whose kernels run or are timed.

Compiled results depend on it twice: measurements choose kernels, precisions and backends, and some
choices are only exact on some CPUs (fbgemm's 8-bit activations need AVX-512 VNNI, see
linear_kernels.INT8_BITS). The compile cache keys on it; the measurement store will too.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"


@functools.lru_cache(maxsize=1)
def _static_fingerprint() -> tuple:
    import torch

    features = sorted(name for name, present in torch.cpu.get_capabilities().items() if present is True)
    libraries = tuple((name, _version(name)) for name in ("torch", "onnxruntime", "apache-tvm", "onnx", "numpy"))
    return (platform.machine(), _cpu_model(), tuple(features), libraries)


def machine_fingerprint() -> dict:
    """CPU model, architecture, CPU features torch detects, torch's thread count, library versions."""
    import torch

    arch, model, features, libraries = _static_fingerprint()
    return {"arch": arch, "cpu": model, "features": list(features), "threads": torch.get_num_threads(),
            "libraries": dict(libraries)}
