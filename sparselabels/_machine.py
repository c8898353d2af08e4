"""A description of the machine a measurement ran on, for the JSON that benchmarks and the demo write."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
from typing import Any

from sparselabels.format.layout import CRC32_IMPLEMENTATION


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(modules: tuple[str, ...] = ("numpy", "numba", "torch", "triton")) -> dict[str, Any]:
    """Date, CPU model, cores, load, Python and the versions of ``modules`` that are installed."""
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
    }
    info["crc32"] = CRC32_IMPLEMENTATION  # every read checks a CRC: isal's is several times zlib's speed
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = os.getloadavg()[0]  # other work sharing the cores
    for module in modules:
        try:
            info[module] = importlib.metadata.version(module)
        except importlib.metadata.PackageNotFoundError:  # a missing optional package is simply not reported
            continue
    return info
