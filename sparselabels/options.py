"""Checks of option values shared across the package (sampling, data, loss, pipeline, synthetic labels).

They need neither torch nor a file, so any module may import them without pulling in the parts above it.
"""

from __future__ import annotations

import math

from sparselabels.errors import InputError, check_int
from sparselabels.format.checks import MAX_ROUNDS


def check_rounds(rounds: object) -> int:
    """``rounds`` (draws per position) as an int in 1..MAX_ROUNDS: counts are stored as uint8."""
    value = check_int("rounds", rounds, None)
    if not 1 <= value <= MAX_ROUNDS:
        raise InputError(f"rounds must be in 1..{MAX_ROUNDS} (counts are uint8), got {value}")
    return value


def check_temperature(temperature: object) -> float:
    """``temperature`` as a positive finite float."""
    try:
        value = float(temperature)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"temperature must be a positive finite number, got {temperature!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"temperature must be a positive finite number, got {temperature!r}")
    return value
