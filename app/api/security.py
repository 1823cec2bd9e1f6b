"""Optional API-key authentication for ``/v1`` (``Authorization: Bearer <key>``); health stays open.

``ICH_API_KEYS`` holds comma-separated keys in clear or ``sha256:<64 hex>`` hashes of keys (so a
deployment's configuration need not contain the keys themselves). Presented keys are hashed and compared
against every configured hash with :func:`hmac.compare_digest` (constant time, no early exit).
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from app.api.problems import Problem


def _sha256(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


def parse_key_hashes(entries: list[str]) -> list[bytes]:
    """sha256 digests of the configured keys. Raises ``ValueError`` on a malformed ``sha256:`` entry."""
    hashes = []
    for entry in entries:
        if entry.lower().startswith("sha256:"):
            hex_digest = entry[7:].strip()
            if len(hex_digest) != 64:
                raise ValueError("a 'sha256:' API key entry must hold 64 hexadecimal digits")
            hashes.append(bytes.fromhex(hex_digest))
        else:
            hashes.append(_sha256(entry))
    return hashes


class ApiKeyAuth:
    """FastAPI dependency; a no-op when no keys are configured."""

    def __init__(self, entries: list[str]):
        self._hashes = parse_key_hashes(entries)

    @property
    def enabled(self) -> bool:
        return bool(self._hashes)

    def check(self, presented: str | None) -> bool:
        if not self._hashes:
            return True
        if not presented:
            return False
        digest = _sha256(presented)
        ok = False
        for expected in self._hashes:  # no short circuit: the time does not reveal which key matched
            ok |= hmac.compare_digest(digest, expected)
        return ok

    async def __call__(self, request: Request) -> None:
        if not self._hashes:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not self.check(token.strip()):
            raise Problem("unauthorized", "A valid API key is required: 'Authorization: Bearer <key>'",
                          headers={"WWW-Authenticate": 'Bearer realm="ich-expansion"'})
