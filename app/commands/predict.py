"""``python -m app predict INPUT... --out DIR``: one prediction without a server.

Writes ``result.json`` (the same JSON as ``POST /v1/predictions``), ``mask.nii.gz``, ``seg.dcm``,
``overlay.png``, ``sr.dcm`` (DICOM SR measurement report) and ``summary.dcm`` (secondary-capture summary) to
``--out``. The input is a DICOM series (files, folders, ZIPs) or one HU NIfTI volume (``.nii``,
``.nii.gz``); a NIfTI input has no source instances, so the DICOM files are not written: the reason is printed on
stderr and listed under ``files_not_written`` in result.json and ``not_written`` in the summary line on stdout.
Exit codes: 0 success, 2 input refused (the refusal JSON on stderr), 3 weights could not be loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="predict expansion + haematoma mask for one CT series",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", type=Path, help="DICOM files, folders or ZIP archives, or one NIfTI volume")
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--series-instance-uid", default=None, help="analyse this series when several are present")
    p.add_argument("--onset-to-ct-hours", type=float, default=None, help="echoed in result.json")
    p.add_argument("--weights-dir", type=Path, default=Path("weights"))
    p.add_argument("--weights-version", default=None, help="default: the registry's default version")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="off",
                   help="torch.compile the model (inductor); off by default: compiling (~10-40 s) costs more than it saves "
                   "on one study")
    p.add_argument("--tta-passes", type=int, default=None,
                   help="test-time augmentation passes (intervals in result.json; default: 8 on CUDA, 0 on CPU)")
    p.set_defaults(func=run)


def predict_case(predictor: Any, inputs: list[Path], out: Path, *, series_instance_uid: str | None = None,
                 onset_to_ct_hours: float | None = None, infer: Any = None) -> dict[str, Any]:
    """One prediction written to ``out`` (``result.json`` last, so its presence means the case is complete);
    returns the summary line's fields. Raises :class:`~app.errors.IngestionError` for a refused input.
    ``infer``: the forward pass to use (default ``predictor.infer``; ``predict-batch`` passes one that serialises
    the model among its workers)."""
    from app.ingestion import load_series
    from app.outputs.compact import DOCUMENT_FILES
    from app.result import StageTimings, build_document, compact_outputs, local_document, unavailable_files

    timings = StageTimings()
    with timings.stage("read"):
        series = load_series([str(p) for p in inputs], series_instance_uid=series_instance_uid)
    if infer is None:
        result = predictor.predict(series)
    else:
        prepared = predictor.prepare(series)
        result = predictor.finish(series, prepared, infer(prepared.tensor))
    timings.add_result(result)
    with timings.stage("outputs"):
        compact = compact_outputs(predictor, series, result, keep_slices=False)
        files = compact.render_all()
    document = build_document(uuid.uuid4().hex, predictor, series, result, timings.ms, onset_to_ct_hours)
    compact = compact.with_document(document)  # the SR and the summary report the document's figures
    files.update(compact.render_all([n for n in DOCUMENT_FILES if compact.unavailable(n) is None]))
    not_written = unavailable_files(compact)
    body = local_document(document, files, not_written)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (out / name).write_bytes(data)
    partial = out / "result.json.partial"
    partial.write_text(json.dumps(body, indent=2) + "\n")
    partial.replace(out / "result.json")
    return {"out": str(out), "detected": result.detected, "probability": result.probability,
            "predicted": result.predicted, "volume_ml": result.volume_ml,
            "warnings": [w.code for w in document.input.warnings],
            "not_written": {name: m.reason for name, m in not_written.items()}}


def run(args: argparse.Namespace) -> int:
    from app.commands.weights_loading import WEIGHTS_EXIT_CODE, load_predictor
    from app.errors import IngestionError

    predictor = load_predictor(args.weights_dir, args.weights_version, args.device, compile=args.compile, tta_passes=args.tta_passes)
    if predictor is None:
        return WEIGHTS_EXIT_CODE
    try:
        summary = predict_case(predictor, args.inputs, args.out, series_instance_uid=args.series_instance_uid,
                               onset_to_ct_hours=args.onset_to_ct_hours)
    except IngestionError as exc:
        print(json.dumps(exc.as_dict()), file=sys.stderr)
        return 2
    for name, reason in summary["not_written"].items():
        print(f"{name} not written: {reason}", file=sys.stderr)
    summary.pop("warnings")
    print(json.dumps(summary))
    return 0
