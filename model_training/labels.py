"""Haematoma expansion label, shared by synthetic and real cohorts.

The paper's main text defines early haematoma expansion as an increase of > 6 mL absolute or > 33 % relative
volume between the baseline and the 24-hour follow-up CT; its supplement writes ">= 6 mL or >= 33 %".
``inclusive`` switches between the two readings (default: the main text's strict inequalities). The rule itself
is the service's (:func:`app.comparison.expanded`), so labels and ``POST /v1/comparisons`` always agree.
"""

from __future__ import annotations

from app.comparison import ExpansionRule, expanded


def expansion_label(
    baseline_ml: float, followup_ml: float, *, abs_ml: float = 6.0, rel: float = 0.33, inclusive: bool = False
) -> bool:
    """True when the haematoma expanded: growth > ``abs_ml`` mL or > ``rel`` x baseline (>= when ``inclusive``).

    Volumes in mL. ``baseline_ml`` must be positive and finite; ``followup_ml`` finite and >= 0.
    """
    return expanded(baseline_ml, followup_ml, ExpansionRule(abs_ml=abs_ml, rel=rel, inclusive=inclusive))
