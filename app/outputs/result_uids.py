"""DICOM UIDs of the result objects (SEG, SR, summary), derived deterministically from what the result is of.

A result object's Series and SOP Instance UIDs are ``2.25.<the first 128 bits of a SHA-256 digest, decimal>`` (the
UUID-derived UID form of PS3.5 B.2) of the object's role (``"seg"``, ``"sr"``, ``"summary"``, and
``"series"`` or ``"instance"``), the algorithm name and version, and the sorted SOP Instance UIDs of the analysed
source instances. The same series analysed again by the same weights therefore yields the same UIDs, so a PACS
that receives a result twice (a re-sent study, an outbox retried after a restart) replaces it instead of
storing a duplicate, and the SR can reference the SEG without building it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass


def derived_uid(*parts: str) -> str:
    """A ``2.25.`` UID that is a function of ``parts`` only (at most 44 characters)."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8", "replace")).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def source_digest(sop_instance_uids: Iterable[str]) -> str:
    """SHA-256 (hex) of the sorted, newline-joined SOP Instance UIDs: the identity of an analysed instance set."""
    joined = "\n".join(sorted(str(u) for u in sop_instance_uids))
    return hashlib.sha256(joined.encode("ascii", "replace")).hexdigest()


@dataclass(frozen=True)
class ResultUids:
    """The UIDs of one result's objects; ``digest`` is :func:`source_digest` of the source instances."""

    digest: str
    algorithm_name: str
    algorithm_version: str

    @classmethod
    def for_sources(cls, sop_instance_uids: Iterable[str], algorithm_name: str, algorithm_version: str) -> ResultUids:
        return cls(source_digest(sop_instance_uids), algorithm_name, algorithm_version)

    def uid(self, role: str, kind: str) -> str:
        """The UID of ``kind`` (``"series"`` or ``"instance"``) of the result object ``role``."""
        return derived_uid("ich-expansion-result", role, kind, self.algorithm_name, self.algorithm_version,
                           self.digest)

    def series(self, role: str) -> str:
        return self.uid(role, "series")

    def instance(self, role: str) -> str:
        return self.uid(role, "instance")
