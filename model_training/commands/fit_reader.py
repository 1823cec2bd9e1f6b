"""``python -m model_training fit-reader``: fit the marker reader and the expansion model of registered weights on
the serving-path rows of one or more earlier runs, without predicting the cohorts again.

Each ``--report`` is the ``serving_report.json`` that ``evaluate`` or ``calibrate --fit-expansion-model`` wrote
(its ``cases`` are the per-case rows: clot measurements, marker truth, labels). The rows are only valid for the
network that produced them, so every report must name the same network as the weights being fitted: the same
file (``model.sha256``), or a version registered beside them whose file has that hash, whose tensors are equal to
these weights' and whose mask refinement is the same (a copy saved under a new version rewrites the file's
metadata, not the network). The post-processing that draws the mask should be the same too (copying a folder and
refitting only the reader, the expansion model or the calibration keeps it). Case ids are prefixed with their cohort (the
manifest's folder, or the report's folder for reports that do not name it) so that cohorts generated with the
same id scheme pool without collisions. Run ``calibrate`` on a separate validation
cohort afterwards, as after ``calibrate --fit-expansion-model``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from model_training.marker_reader_fit import READER_KINDS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit-reader", help="fit the marker reader and expansion model on saved serving-path rows",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", type=Path, required=True, help="weights registry folder or one model folder")
    p.add_argument("--version", default=None, help="<name>-<version> or a unique version")
    p.add_argument("--report", type=Path, nargs="+", required=True,
                   help="serving_report.json files of runs with these weights' network (pooled)")
    p.add_argument("--out", type=Path, required=True, help="folder for expansion_model.json")
    p.add_argument("--reader-kind", choices=READER_KINDS, default="boosted_trees")
    p.add_argument("--reader-l2-c", type=float, default=0.3, help="inverse L2 strength of a logistic reader")
    p.add_argument("--l2-c", type=float, default=0.05,
                   help="inverse L2 strength of the expansion model's logistic regression")
    p.set_defaults(func=run)


def same_network(registry: Path, report_model: dict[str, Any], target: Any) -> bool:
    """Whether the report's weights (``report_model``: name, version, sha256) are ``target``'s network: the same
    file, or a version registered in ``registry`` with that file hash, equal tensors and the same refinement."""
    import torch

    from app.weights.registry import WeightsError, load_weights

    if report_model.get("sha256") == target.weights_sha256:
        return True
    version = report_model.get("version")
    if not version:
        return False
    try:
        source = load_weights(registry, f"{report_model.get('name')}-{version}")
    except (WeightsError, FileNotFoundError, ValueError):
        return False
    if source.weights_sha256 != report_model.get("sha256"):
        return False
    if source.postprocessing.refinement != target.postprocessing.refinement:
        return False
    a, b = source.model.state_dict(), target.model.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def pooled_rows(reports: list[Path], target: Any, registry: Path) -> tuple[list[dict[str, Any]], str]:
    """The reports' case rows (ids prefixed ``<cohort>/``) and a cohort description; refuses a report of another
    network (:func:`same_network`)."""
    rows: list[dict[str, Any]] = []
    names = []
    network_sha256 = target.weights_sha256
    for path in reports:
        report = json.loads(Path(path).read_text())
        sha = (report.get("model") or {}).get("sha256")
        if not same_network(registry, report.get("model") or {}, target):
            raise ValueError(f"{path}: rows of network {str(sha)[:12]}, not of these weights' network "
                             f"{network_sha256[:12]}; predict that cohort with these weights first")
        manifest = (report.get("manifest") or {}).get("file", "?")
        cohort = (report.get("manifest") or {}).get("cohort") or Path(path).resolve().parent.name
        names.append(f"{cohort} ({manifest}, {len(report['cases'])} cases)")
        rows += [{**r, "case_id": f"{cohort}/{r['case_id']}"} for r in report["cases"]]
    return rows, " + ".join(names)


def run(args: argparse.Namespace) -> int:
    from app.weights.registry import load_weights
    from model_training.evaluation.serving_path import resolve_weights
    from model_training.expansion_model import store_expansion_model

    registry, version = resolve_weights(args.weights, args.version)
    try:
        rows, cohort = pooled_rows(args.report, load_weights(registry, version), Path(registry))
        model = store_expansion_model(registry, version, rows, cohort, args.out, c=args.l2_c, marker_reader=True,
                                      reader_c=args.reader_l2_c, reader_kind=args.reader_kind)
    except ValueError as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    print(json.dumps({"expansion_model": model.model_dump(mode="json")}))
    return 0
