"""``python -m app predict-batch MANIFEST.csv --out DIR``: a research cohort without a server.

The manifest is a CSV with a header: ``case_id`` and ``path`` (a DICOM folder, ZIP or file, or one HU NIfTI
volume; several paths separated by ``;``; relative paths are relative to the manifest's folder), optionally
``series_instance_uid`` and ``onset_to_ct_hours``. Every case is predicted as ``python -m app predict`` does
(:func:`app.commands.predict.predict_case`) into ``DIR/cases/<case_id>/``; ``DIR/results.csv`` lists every case
in manifest order: ``case_id, status, volume_ml, probability, detected, predicted, warnings, code, message``
(``status``: ``ok``, ``refused`` with the refusal code, or ``error``).

* Resumable: a case whose folder holds its ``case.json`` (written last, atomically) is not done again; stop the
  run at any moment (Ctrl-C, a killed job) and start the same command again. Cases that ended in ``error`` (not a
  refusal: e.g. an unreadable disk) are tried again.
* A failing case is listed, never fatal: the exit status is 0 when every case was processed (refused or not), 1
  when the run was interrupted, 3 when the weights could not be loaded.
* ``--workers N``: N cases are read, preprocessed and written at once; the forward passes take turns on the
  one model (intra-op threads: ``--threads``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULT_COLUMNS = ["case_id", "status", "volume_ml", "probability", "detected", "predicted", "warnings", "code",
                  "message"]
CASE_FILE = "case.json"
SAFE_ID = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict-batch", help="predict every case of a manifest CSV (resumable)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", type=Path, help="CSV with case_id, path[, series_instance_uid, onset_to_ct_hours]")
    p.add_argument("--out", required=True, type=Path, help="output folder (created; resumed when it exists)")
    p.add_argument("--workers", type=int, default=2, help="cases in progress at once (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--weights-dir", type=Path, default=Path("weights"))
    p.add_argument("--weights-version", default=None, help="default: the registry's default version")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="off", help="torch.compile the model")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run)


@dataclass(frozen=True)
class Case:
    case_id: str
    inputs: list[Path]
    series_instance_uid: str | None
    onset_to_ct_hours: float | None


class ManifestError(ValueError):
    pass


def read_manifest(path: Path) -> list[Case]:
    """The cases of a manifest CSV; :class:`ManifestError` names the first bad row (by line number)."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"case_id", "path"} <= set(reader.fieldnames):
            raise ManifestError(f"{path}: the header must name the columns case_id and path")
        cases, seen = [], set()
        for line, row in enumerate(reader, start=2):
            case_id = (row.get("case_id") or "").strip()
            if not case_id or not set(case_id) <= SAFE_ID or case_id in (".", ".."):
                raise ManifestError(f"{path}:{line}: case_id must be letters, digits, '.', '_' or '-'")
            if case_id in seen:
                raise ManifestError(f"{path}:{line}: case_id {case_id} appears twice")
            seen.add(case_id)
            paths = [p.strip() for p in (row.get("path") or "").split(";") if p.strip()]
            if not paths:
                raise ManifestError(f"{path}:{line}: no path")
            onset = (row.get("onset_to_ct_hours") or "").strip()
            try:
                hours = float(onset) if onset else None
            except ValueError:
                raise ManifestError(f"{path}:{line}: onset_to_ct_hours must be a number of hours") from None
            cases.append(Case(case_id, [(path.parent / p) for p in paths],
                              (row.get("series_instance_uid") or "").strip() or None, hours))
    return cases


def _write_json_atomic(path: Path, body: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(body, indent=2) + "\n")
    partial.replace(path)


def _finished(out: Path, case: Case) -> dict[str, Any] | None:
    """The recorded row of a case done in an earlier run (``ok`` or ``refused``), else None."""
    try:
        row = json.loads((out / "cases" / case.case_id / CASE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return row if row.get("status") in ("ok", "refused") else None


def process_case(predictor: Any, infer: Any, out: Path, case: Case) -> dict[str, Any]:
    """Predict one case into its folder and record its row in ``case.json``; never raises for the case's data."""
    from app.commands.predict import predict_case
    from app.errors import IngestionError

    folder = out / "cases" / case.case_id
    folder.mkdir(parents=True, exist_ok=True)
    row: dict[str, Any] = {"case_id": case.case_id}
    try:
        missing = [str(p) for p in case.inputs if not p.exists()]
        if missing:
            raise FileNotFoundError(f"input not found: {', '.join(missing)}")
        summary = predict_case(predictor, case.inputs, folder, series_instance_uid=case.series_instance_uid,
                               onset_to_ct_hours=case.onset_to_ct_hours, infer=infer)
        row.update(status="ok", volume_ml=summary["volume_ml"], probability=summary["probability"],
                   detected=summary["detected"], predicted=summary["predicted"],
                   warnings=";".join(summary["warnings"]))
    except IngestionError as exc:
        row.update(status="refused", code=str(exc.code), message=exc.message)
    except FileNotFoundError as exc:
        row.update(status="refused", code="input_not_found", message=str(exc))
    except Exception as exc:  # noqa: BLE001 - a failing case is listed, never fatal
        row.update(status="error", code=type(exc).__name__, message=str(exc)[:500])
    _write_json_atomic(folder / CASE_FILE, row)
    return row


def write_results(out: Path, cases: list[Case]) -> int:
    """``results.csv`` from every case's record, in manifest order; returns how many cases are listed."""
    rows = []
    for case in cases:
        try:
            rows.append(json.loads((out / "cases" / case.case_id / CASE_FILE).read_text()))
        except (OSError, ValueError):
            continue
    partial = out / "results.csv.partial"
    with partial.open("w", newline="") as f:
        writer = csv.DictWriter(f, RESULT_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    partial.replace(out / "results.csv")
    return len(rows)


def _bounded(pool: ThreadPoolExecutor, fn: Any, items: list[Case], limit: int) -> Iterator[Future]:
    """Submit ``fn(item)`` keeping at most ``limit`` in progress; yields futures as they finish."""
    pending: set[Future] = set()
    queue = iter(items)
    for item in queue:
        pending.add(pool.submit(fn, item))
        if len(pending) >= limit:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from done
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        yield from done


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from app.commands.weights_loading import WEIGHTS_EXIT_CODE, load_predictor

    try:
        cases = read_manifest(args.manifest)
    except (OSError, ManifestError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    predictor = load_predictor(args.weights_dir, args.weights_version, args.device, compile=args.compile)
    if predictor is None:
        return WEIGHTS_EXIT_CODE
    if args.threads:
        from app.model.device import configure_cpu_threads

        configure_cpu_threads(args.threads)
    out: Path = args.out
    (out / "cases").mkdir(parents=True, exist_ok=True)
    todo = [c for c in cases if _finished(out, c) is None]
    model_lock = threading.Lock()

    def infer(tensor: Any) -> Any:
        with model_lock:
            return predictor.infer(tensor)

    counts = {"ok": 0, "refused": 0, "error": 0}
    interrupted = False
    bar = tqdm(total=len(cases), initial=len(cases) - len(todo), unit="case", disable=args.no_progress,
               file=sys.stderr)
    pool = ThreadPoolExecutor(max(1, args.workers), thread_name_prefix="ich-batch")
    try:
        for future in _bounded(pool, lambda c: process_case(predictor, infer, out, c), todo, max(1, args.workers)):
            row = future.result()
            counts[row["status"]] += 1
            bar.set_postfix(counts, refresh=False)
            bar.update(1)
    except KeyboardInterrupt:
        interrupted = True
        pool.shutdown(wait=True, cancel_futures=True)
    finally:
        pool.shutdown(wait=True)
        bar.close()
        listed = write_results(out, cases)
    print(json.dumps({"out": str(out), "cases": len(cases), "skipped_done": len(cases) - len(todo), **counts,
                      "listed": listed, "interrupted": interrupted}))
    return 1 if interrupted else 0
