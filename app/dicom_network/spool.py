"""On-disk spool of instances received over DICOM, one folder per series, and the record of analysed series.

Layout under ``<work>/spool``: ``<series key>/<instance key>.dcm`` (Part-10 files as received), where the keys
are SHA-256 digests of the Study + Series Instance UIDs and of the SOP Instance UID, so no identifier appears in a
path and a re-sent instance overwrites its own file (idempotent). Files are written to ``*.part`` first and
renamed into place, so a folder only ever holds complete files. Instances are never held in memory beyond the
one being written.

A series is *stable* once no instance has arrived for ``stable_s`` seconds; :meth:`Spool.take_stable` then moves
its folder to ``<work>/analysing/`` (instances of the series that arrive later start a new folder) and hands
it out as a :class:`Batch`. :meth:`Spool.recover` requeues whatever a previous process left in either place.

``<work>/done/<series key>.json`` records the digest of the SOP Instance UIDs of every analysed or refused batch
(:func:`app.outputs.result_uids.source_digest`): the same instances sent again are recognised and not analysed
or sent twice (:meth:`Spool.already_done`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom


def _key(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "replace")).hexdigest()[:32]


class SpoolLimit(Exception):
    """An instance the spool does not take (a limit); ``reason`` is machine-readable."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class SeriesState:
    study_uid: str
    series_uid: str
    directory: Path
    last_arrival: float
    instances: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Batch:
    """A stable series handed out for analysis: its folder (owned by the caller, :meth:`Spool.finish` removes
    it) and its UIDs."""

    key: str
    study_uid: str
    series_uid: str
    directory: Path

    def files(self) -> list[Path]:
        return sorted(self.directory.glob("*.dcm"))


class Spool:
    """Thread-safe: C-STORE handlers of several associations call :meth:`store` at once."""

    def __init__(self, root: Path, stable_s: float, max_series_per_study: int,
                 clock: Callable[[], float] = time.monotonic):
        self.spool_dir = root / "spool"
        self.analysing_dir = root / "analysing"
        self.done_dir = root / "done"
        for d in (self.spool_dir, self.analysing_dir, self.done_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.stable_s = stable_s
        self.max_series_per_study = max_series_per_study
        self._clock = clock
        self._series: dict[str, SeriesState] = {}
        self._lock = threading.Lock()

    # --- receiving ----------------------------------------------------------------------------------------
    def store(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> bool:
        """Write one instance (Part-10 bytes); True when it is new to the series' spool, False for a re-sent
        one. Raises :class:`SpoolLimit` (``series_per_study``) when the study already has the maximum of series
        waiting."""
        key = _key(study_uid, series_uid)
        with self._lock:
            state = self._series.get(key)
            if state is None:
                waiting = sum(1 for s in self._series.values() if s.study_uid == study_uid)
                if waiting >= self.max_series_per_study:
                    raise SpoolLimit("series_per_study")
                state = SeriesState(study_uid, series_uid, self.spool_dir / key, self._clock())
                state.directory.mkdir(parents=True, exist_ok=True)
                self._series[key] = state
            new = sop_uid not in state.instances
            state.instances.add(sop_uid)
            state.last_arrival = self._clock()
            directory = state.directory
        target = directory / f"{_key(sop_uid)}.dcm"
        part = directory / f"{_key(sop_uid)}.{uuid.uuid4().hex[:8]}.part"
        part.write_bytes(data)
        os.replace(part, target)
        with self._lock:
            state.last_arrival = self._clock()  # a slow write does not make the series look stable early
        return new

    # --- handing out --------------------------------------------------------------------------------------
    def pending(self) -> int:
        with self._lock:
            return len(self._series)

    def take_stable(self) -> list[Batch]:
        """The series quiet for ``stable_s`` seconds, moved out of the receiving spool."""
        now = self._clock()
        batches = []
        with self._lock:
            for key, state in list(self._series.items()):
                if now - state.last_arrival < self.stable_s:
                    continue
                del self._series[key]
                target = self.analysing_dir / f"{key}-{uuid.uuid4().hex[:8]}"
                os.replace(state.directory, target)
                batches.append(Batch(key, state.study_uid, state.series_uid, target))
        return batches

    def recover(self) -> list[Batch]:
        """Batches left by a previous process (received or being analysed), UIDs read from their first file."""
        batches = []
        for directory in [*sorted(self.spool_dir.iterdir()), *sorted(self.analysing_dir.iterdir())]:
            for part in directory.glob("*.part"):
                part.unlink(missing_ok=True)
            files = sorted(directory.glob("*.dcm"))
            header = None
            for f in files:
                try:
                    header = pydicom.dcmread(f, stop_before_pixels=True,
                                             specific_tags=["StudyInstanceUID", "SeriesInstanceUID"])
                    break
                except Exception:  # noqa: BLE001 - a damaged file: try the next one
                    continue
            if header is None or "SeriesInstanceUID" not in header:
                shutil.rmtree(directory, ignore_errors=True)
                continue
            study, series = str(header.get("StudyInstanceUID", "")), str(header.SeriesInstanceUID)
            target = self.analysing_dir / f"{_key(study, series)}-{uuid.uuid4().hex[:8]}"
            if directory.parent != self.analysing_dir:
                os.replace(directory, target)
            else:
                target = directory
            batches.append(Batch(_key(study, series), study, series, target))
        return batches

    # --- after analysis -----------------------------------------------------------------------------------
    def already_done(self, batch: Batch, digest: str) -> bool:
        record = self.done_dir / f"{batch.key}.json"
        try:
            return digest in json.loads(record.read_text()).get("digests", [])
        except (OSError, ValueError):
            return False

    def finish(self, batch: Batch, digest: str | None) -> None:
        """Remove the batch's folder; record ``digest`` (when given) as analysed for the series."""
        if digest is not None:
            record = self.done_dir / f"{batch.key}.json"
            try:
                digests = json.loads(record.read_text()).get("digests", [])
            except (OSError, ValueError):
                digests = []
            digests = [*[d for d in digests if d != digest], digest][-20:]
            tmp = record.with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_text(json.dumps({"digests": digests}))
            os.replace(tmp, record)
        shutil.rmtree(batch.directory, ignore_errors=True)
