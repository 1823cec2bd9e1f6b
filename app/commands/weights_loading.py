"""Loading the registered weights for a CLI command, with the one error report every command gives."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

#: exit status of a command whose weights could not be loaded
WEIGHTS_EXIT_CODE = 3


def load_predictor(weights_dir: str | Path, version: str | None, device: str, **options: Any) -> Any | None:
    """The :class:`app.inference.Predictor` of the registered weights, or None after printing a JSON error
    (``{"error": "weights", "code", "message"}``) on stderr: a bad checksum, a missing folder or an unusable
    device."""
    from app.inference import Predictor

    try:
        return Predictor.from_registry(weights_dir, version, device, **options)
    except Exception as exc:  # WeightsError, missing folder, bad device
        print(json.dumps({"error": "weights", "code": getattr(exc, "code", type(exc).__name__),
                          "message": str(exc)}), file=sys.stderr)
        return None
