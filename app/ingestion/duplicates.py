"""Duplicate images of the chosen series: one tally, one ``duplicates_removed`` warning.

Two rules find the same image sent more than once (positions in LPS mm, distances along the slice normal):

* **copies** (same SOPInstanceUID, before decoding): byte-identical encoded pixel data (SHA-256) at the same
  ImagePositionPatient is a copy and dropped; anything else under one SOPInstanceUID is refused
  (``conflicting_duplicates``);
* **resends** (same position, any SOPInstanceUID, after decoding and ordering on the normal): two slices closer
  than :data:`POSITION_TOLERANCE_MM` with identical encoded bytes or identical decoded HU are one image sent
  twice; different pixels are refused (``conflicting_duplicates``).

The ingestion pipeline holds one :class:`Duplicates` per call; :func:`app.ingestion.geometry.build_volume` applies
the position rule to it, and :meth:`Duplicates.warning` reports the total of both rules once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.errors import IngestionError, QualityWarning, RefusalCode, WarningCode
from app.ingestion.attributes import try_floats
from app.ingestion.reading import Instance, pixel_hash
from app.ingestion.series import sop_instance_uid

POSITION_TOLERANCE_MM = 0.01


def _same_pixels(a: Instance, b: Instance) -> bool:
    if a.pixel_hash is not None and a.pixel_hash == b.pixel_hash:
        return True
    return a.hu is not None and b.hu is not None and np.array_equal(a.hu, b.hu)


@dataclass
class Duplicates:
    """Images dropped as duplicates during one ingestion call (both rules together)."""

    removed: int = 0

    def drop_copies(self, instances: list[Instance]) -> list[Instance]:
        """Drop byte-identical copies of an instance (fills ``pixel_hash``); refuse two different objects with
        one SOPInstanceUID. Runs before decoding, so copies are never decoded."""
        by_uid: dict[str, Instance] = {}
        kept: list[Instance] = []
        for inst in instances:
            inst.pixel_hash = pixel_hash(inst)
            uid = sop_instance_uid(inst) or ""
            other = by_uid.get(uid) if uid else None
            if other is None:
                if uid:
                    by_uid[uid] = inst
                kept.append(inst)
                continue
            position = try_floats(inst.ds, "ImagePositionPatient", 3)
            same_place = try_floats(other.ds, "ImagePositionPatient", 3) == position
            if other.pixel_hash != inst.pixel_hash or not same_place:
                raise IngestionError(
                    RefusalCode.CONFLICTING_DUPLICATES,
                    "Two different images carry the same SOPInstanceUID.",
                    {"n_instances": len(instances)},
                )
            self.removed += 1
        return kept

    def drop_same_position(self, ordered: list[Instance], positions: np.ndarray) -> tuple[list[Instance], np.ndarray]:
        """Drop slices at an already present position (LPS mm, ``positions`` (n, 3) in the order of ``ordered``,
        sorted along the normal) with identical pixels; refuse when the pixels differ."""
        keep: list[int] = []
        for k in range(len(ordered)):
            if keep and np.linalg.norm(positions[k] - positions[keep[-1]]) < POSITION_TOLERANCE_MM:
                if not _same_pixels(ordered[keep[-1]], ordered[k]):
                    raise IngestionError(
                        RefusalCode.CONFLICTING_DUPLICATES,
                        "Two images of the series lie at the same position but hold different pixels.",
                        {"slice_index": len(keep) - 1},
                    )
                self.removed += 1
                continue
            keep.append(k)
        return [ordered[k] for k in keep], positions[keep]

    def warning(self) -> QualityWarning | None:
        """The one ``duplicates_removed`` warning of the call, or None when nothing was dropped."""
        if not self.removed:
            return None
        return QualityWarning(
            WarningCode.DUPLICATES_REMOVED,
            f"{self.removed} byte-identical duplicate image(s) were ignored.",
            {"count": self.removed},
        )
