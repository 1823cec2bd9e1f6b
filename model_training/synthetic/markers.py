"""NCCT markers of haematoma expansion (Supplemental Table 2 of the paper) and their cohort prevalences.

Draws are hierarchical so that the labels stay consistent with the supplement's definitions:
a black hole is a hypodensity (> 28 HU darker, encapsulated); heterogeneous density is drawn as several
encapsulated hypodense foci, so it implies a hypodensity; a swirl without a hypodensity reaches the haematoma
margin (not encapsulated); the blend sign and the fluid level both split the clot along a straight margin and are
not drawn together. Marginal prevalences: hypodensity 0.40, black hole 0.15, swirl 0.40, blend ~0.15,
fluid level 0.10, irregular shape 0.55, heterogeneous density 0.34, intraventricular extension 0.38.
"""

from __future__ import annotations

import numpy as np

from model_training.ncct_markers import MARKER_FLAGS, NCCT_MARKERS

MARKER_NAMES: tuple[str, ...] = NCCT_MARKERS
FLAG_NAMES: tuple[str, ...] = MARKER_FLAGS


def draw_markers(rng: np.random.Generator) -> dict[str, int]:
    """Draw the seven NCCT markers and ``ivh`` (0/1) for one case."""
    hypo = rng.random() < 0.40
    black_hole = hypo and rng.random() < 0.375
    hetero = hypo and rng.random() < 0.85
    swirl = rng.random() < (0.55 if hypo else 0.30)
    fluid = rng.random() < 0.10
    blend = (not fluid) and rng.random() < 0.167
    irregular = rng.random() < 0.55
    ivh = rng.random() < 0.38
    values = (hypo, black_hole, swirl, blend, fluid, irregular, hetero, ivh)
    return {name: int(v) for name, v in zip(FLAG_NAMES, values, strict=True)}


def normalise_markers(markers: dict[str, int]) -> dict[str, int]:
    """Complete and make a (possibly partial, user-given) marker dict consistent with the definitions above."""
    m = {name: int(bool(markers.get(name, 0))) for name in FLAG_NAMES}
    unknown = set(markers) - set(FLAG_NAMES)
    if unknown:
        raise ValueError(f"unknown marker(s): {sorted(unknown)}")
    if m["black_hole"] or m["heterogeneous_density"]:
        m["hypodensity"] = 1
    if m["fluid_level"] and m["blend"]:
        raise ValueError("blend sign and fluid level are not drawn together")
    return m
