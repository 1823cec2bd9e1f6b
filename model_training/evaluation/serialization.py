"""Reading row values (CSV text, None, numbers) as floats, and writing strict JSON (no NaN/Infinity)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def json_safe(x: Any) -> Any:
    """JSON-safe copy: NaN and infinities become ``None``; numpy scalars become Python numbers."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        v = float(x)
        return v if math.isfinite(v) else None
    return x


def to_float(value: Any) -> float:
    """A row value as float; ``None``, ``""`` and unparsable text become NaN."""
    if value is None:
        return math.nan
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    text = str(value).strip()
    if not text or text.lower() in {"na", "nan", "none", "null"}:
        return math.nan
    try:
        return float(text)
    except ValueError:
        return math.nan


def column(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    """``rows[i][key]`` as a float array with NaN for absent or empty values."""
    return np.array([to_float(r.get(key)) for r in rows], dtype=np.float64)
