"""Keep element values of client DICOM (patient identifiers) out of logs and warnings.

pydicom reports damaged elements through ``pydicom.misc.warn_and_log``: a ``logging`` record on the ``pydicom``
logger *and* a ``warnings.warn`` whose text quotes the raw value (``Invalid value for VR UI: '<value>'``), and
``zipfile`` warns with archive member names (``Duplicate name: '<name>'``), which may hold patient names too.

* :class:`RedactingFilter`, installed on the ``pydicom`` logger, cuts every record's message before its first
  quote character and drops its arguments, so the kind of problem stays visible while the value does not.
* :func:`quiet_parsing` suppresses the ``warnings`` of pydicom and zipfile while ingestion parses client data
  (``warnings.catch_warnings``). ``warnings`` filters are process-global, so the suppression is also installed
  permanently, for those two modules only, by :func:`install` (called when :mod:`app.ingestion` is imported):
  overlapping ``catch_warnings`` blocks in concurrent request threads restore each other's filter lists and could
  otherwise briefly re-enable them.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

_QUIET_MODULES = r"(pydicom|zipfile)(\..*)?"
_MAX_MESSAGE = 160


class RedactingFilter(logging.Filter):
    """Rewrites records so that no quoted value (or formatting argument) of a DICOM element survives."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = str(record.msg)
        except Exception:  # noqa: BLE001 - an unprintable message is dropped rather than logged
            text = ""
        cut = min((i for i in (text.find("'"), text.find('"')) if i >= 0), default=len(text))
        text = text[: min(cut, _MAX_MESSAGE)].rstrip(" :")
        record.msg = f"{text} [value withheld]" if text else "pydicom reported a problem [value withheld]"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        return True


_FILTER = RedactingFilter()


def install() -> None:
    """Idempotently install the redacting log filter and the permanent warning filters."""
    logger = logging.getLogger("pydicom")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    warnings.filterwarnings("ignore", module=_QUIET_MODULES)


@contextmanager
def quiet_parsing() -> Iterator[None]:
    """Suppress pydicom/zipfile warnings (which quote values and member names) inside the block."""
    install()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=_QUIET_MODULES)
        yield
