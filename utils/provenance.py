"""What produced a file: the Python and library versions, recorded in config.json (every run)
and meta.json (every database). Epsilon, fidelity and embeddings depend on them. Also the CPU
model (`cpu_model`, for benchmarks)."""

from __future__ import annotations

import platform
import re
import sys
from importlib import metadata

# Distributions whose versions are recorded when installed (the names pip knows them by).
PACKAGES = (
    "torch",
    "numpy",
    "scikit-learn",
    "opacus",
    "flwr",
    "geomloss",
    "timm",
    "safetensors",
    "pillow",
)


def versions() -> dict[str, str]:
    """Python's version and that of every installed package of PACKAGES (read from the
    installed metadata: nothing is imported). torch's own version string, when it is loaded,
    also names its build (e.g. 2.14.1+cu130)."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    if "torch" in sys.modules:
        out["torch"] = sys.modules["torch"].__version__
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            match = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.MULTILINE)
        return match.group(1).strip() if match else platform.processor()
    except OSError:
        return platform.processor()
