"""``compare-auc``: AUCs with DeLong CIs and pairwise paired DeLong tests for scores in any CSV file.

Example (pROC's aSAH data)::

    python -m model_training compare-auc --csv asah.csv --label outcome --positive Poor --scores wfns,s100b,ndka

Rows whose label or any selected score is empty are left out of every computation (the paired tests need the
same subjects for all scores) and counted in the output. Rows whose label is not ``--positive`` are controls;
when the column has more than two distinct values, ``--negative`` must name the control value and other rows
are left out. ``--direction auto`` follows pROC's ``roc()``: per score, "higher = case" when
median(controls) <= median(cases), otherwise "lower = case"; the direction used is reported.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from model_training.evaluation.delong import auc_ci, oriented, paired_delong, resolve_direction
from model_training.evaluation.serialization import json_safe, to_float

DIRECTION_WORDS = {"<": "controls < cases", ">": "controls > cases"}


class CompareAucError(Exception):
    """A problem with the command's input, reported as one sentence and exit status 2."""


def load_columns(
    csv_path: Path, label: str, positive: str, scores: list[str], negative: str | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, int]]:
    """Read ``label`` and the ``scores`` columns: ``(y, {score: values}, counts of rows left out)``."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in [label, *scores] if c not in header]
            if missing:
                raise CompareAucError(f"column(s) not in {csv_path.name}: {', '.join(missing)}")
            rows = list(reader)
    except OSError as exc:
        raise CompareAucError(f"cannot read {csv_path}: {exc.strerror or exc}") from exc
    labels = [(r.get(label) or "").strip() for r in rows]
    distinct = sorted({v for v in labels if v})
    if positive not in distinct:
        raise CompareAucError(f"no row has {label} = {positive!r} (values: {', '.join(distinct[:10])})")
    if negative is None and len(distinct) > 2:
        raise CompareAucError(
            f"{label} has {len(distinct)} distinct values; name the control value with --negative"
        )
    if negative is not None and negative not in distinct:
        raise CompareAucError(f"no row has {label} = {negative!r}")
    controls_value = negative if negative is not None else next((v for v in distinct if v != positive), None)
    if controls_value is None:
        raise CompareAucError(f"every labelled row has {label} = {positive!r}: no controls")
    values = {s: np.array([to_float(r.get(s)) for r in rows], dtype=np.float64) for s in scores}
    in_classes = np.array([v in (positive, controls_value) for v in labels])
    complete = np.logical_and.reduce([np.isfinite(v) for v in values.values()])
    keep = in_classes & complete
    dropped = {
        "rows": len(rows),
        "other_label_or_empty": int((~in_classes).sum()),
        "missing_score": int((in_classes & ~complete).sum()),
    }
    y = np.array([1 if v == positive else 0 for v in labels], dtype=np.int64)[keep]
    return y, {s: v[keep] for s, v in values.items()}, dropped


def compare_auc(
    y: np.ndarray, scores: dict[str, np.ndarray], direction: str = "auto", alpha: float = 0.05
) -> dict[str, Any]:
    """AUC, DeLong CI and direction of each score; paired DeLong tests of every pair (first minus second)."""
    if not (y == 1).any() or not (y == 0).any():
        raise CompareAucError("the kept rows need both cases and controls")
    directions = {name: resolve_direction(y, s, direction) for name, s in scores.items()}  # type: ignore[arg-type]
    oriented_scores = {name: oriented(s, directions[name]) for name, s in scores.items()}
    out_scores = []
    for name, s in oriented_scores.items():
        a = auc_ci(y, s, alpha=alpha)
        out_scores.append(
            {
                "score": name,
                "direction": directions[name],
                "direction_meaning": DIRECTION_WORDS[directions[name]],
                "auc": a.auc,
                "variance": a.variance,
                "ci_lower": a.lower,
                "ci_upper": a.upper,
            }
        )
    tests = []
    for a_name, b_name in itertools.combinations(oriented_scores, 2):
        d = paired_delong(y, oriented_scores[a_name], oriented_scores[b_name], alpha=alpha)
        tests.append(
            {
                "score1": a_name,
                "score2": b_name,
                "auc1": d.auc1,
                "auc2": d.auc2,
                "diff": d.diff,
                "diff_ci_lower": d.ci_lower,
                "diff_ci_upper": d.ci_upper,
                "z": d.z,
                "p": d.p,
                "note": d.note,
            }
        )
    return {
        "n_cases": int((y == 1).sum()),
        "n_controls": int((y == 0).sum()),
        "confidence_level": 1.0 - alpha,
        "method": "DeLong (Sun & Xu fast algorithm); CIs: normal approximation; tests: paired, two-sided",
        "scores": out_scores,
        "tests": tests,
    }


def _num(x: float, digits: int = 6) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _p(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.6g}"


def render_text(result: dict[str, Any], dropped: dict[str, int]) -> str:
    level = round(100 * result["confidence_level"])
    lines = [
        f"{result['n_cases']} cases, {result['n_controls']} controls "
        f"({dropped['missing_score']} row(s) with a missing score and "
        f"{dropped['other_label_or_empty']} with another or empty label left out)",
        "",
        f"{'score':<20} {'direction':<18} {'AUC':>9} {f'{level}% CI (DeLong)':>22}",
    ]
    for s in result["scores"]:
        lines.append(
            f"{s['score']:<20} {s['direction_meaning']:<18} {_num(s['auc']):>9} "
            f"{_num(s['ci_lower']) + ' - ' + _num(s['ci_upper']):>22}"
        )
    if result["tests"]:
        lines += [
            "",
            "Paired DeLong tests (two-sided)",
            f"{'score1':<14} {'score2':<14} {'AUC1-AUC2':>10} {f'{level}% CI':>22} {'z':>10} {'p':>12}",
        ]
        for t in result["tests"]:
            lines.append(
                f"{t['score1']:<14} {t['score2']:<14} {_num(t['diff']):>10} "
                f"{_num(t['diff_ci_lower']) + ' - ' + _num(t['diff_ci_upper']):>22} {_num(t['z']):>10} {_p(t['p']):>12}"
                + (f"  ({t['note']})" if t["note"] else "")
            )
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    scores = [s.strip() for s in args.scores.split(",") if s.strip()]
    try:
        if not scores:
            raise CompareAucError("--scores names no column")
        if len(set(scores)) != len(scores):
            raise CompareAucError("--scores names a column twice")
        if not 0.0 < args.alpha < 1.0:
            raise CompareAucError("--alpha must be in (0, 1)")
        y, values, dropped = load_columns(Path(args.csv), args.label, args.positive, scores, args.negative)
        result = compare_auc(y, values, args.direction, args.alpha)
    except (CompareAucError, ValueError) as exc:
        print(f"compare-auc: {exc}", file=sys.stderr)
        return 2
    result["rows_left_out"] = dropped
    if args.json:
        print(json.dumps(json_safe(result), indent=2, allow_nan=False))
    else:
        sys.stdout.write(render_text(result, dropped))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare-auc",
        help="AUCs with DeLong CIs and paired DeLong tests for score columns of a CSV file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--csv", required=True, help="CSV file with a header row")
    p.add_argument("--label", required=True, help="column holding the outcome")
    p.add_argument("--positive", required=True, help="value of --label that marks a case")
    p.add_argument("--negative", help="value of --label that marks a control (needed with > 2 values)")
    p.add_argument("--scores", required=True, help="comma-separated score columns, e.g. A,B,C")
    p.add_argument(
        "--direction",
        choices=("auto", "higher", "lower"),
        default="auto",
        help="higher/lower: larger/smaller values mean case; auto: pROC's median rule (default)",
    )
    p.add_argument("--alpha", type=float, default=0.05, help="1 - confidence level (default 0.05)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)
