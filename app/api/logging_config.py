"""Structured JSON-lines logging with a per-request id.

Never log patient names, IDs, birth dates or UIDs in clear: use :func:`pseudonym` (a salted, truncated
sha256, salt per process) when a log line must correlate a study across lines.

Third-party libraries do not follow that rule: pydicom quotes raw element values (patient name, ID, birth date
included) in the records of its ``pydicom`` logger and in its ``warnings``, and ``zipfile`` warns with member
names. So :func:`configure_logging` also

* sets the ``pydicom`` logger to ERROR and attaches :class:`ValueFreeFilter` to the handler, which replaces the
  message of every ``pydicom*`` / ``py.warnings`` record by a value-free summary;
* replaces ``warnings.showwarning`` by :func:`log_warning_without_values`, which logs a warning's category and
  code location only, never its text.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import os
import re
import sys
import time
import warnings
from typing import Any

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_SALT = os.urandom(16)
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def pseudonym(value: str | None) -> str | None:
    """A stable-within-this-process, non-reversible token for an identifier (12 hex digits)."""
    if value is None:
        return None
    return hashlib.sha256(_SALT + value.encode("utf-8")).hexdigest()[:12]


# DICOM UIDs (a root of 0, 1 or 2 and at least four more components, or a UUID-derived 2.25.<n>); the
# standard's own UIDs (1.2.840.10008.*: SOP classes, transfer syntaxes) identify no one and are kept readable.
_UID_RE = re.compile(r"(?<![\d.])(?!1\.2\.840\.10008\.)(?:[0-2](?:\.\d+){4,}|2\.25\.\d{10,})(?![\d.])")
# third-party loggers that print instance/series UIDs at INFO (highdicom: "copy ... from dataset <UID>")
QUIET_LOGGERS = ("highdicom",)
# loggers whose messages may quote raw element values of client DICOM: kept at ERROR, messages withheld
VALUE_LOGGERS = ("pydicom",)


def redact_uids(text: str) -> str:
    """Replace every DICOM UID in ``text`` (other than the standard's own) by ``uid:<pseudonym>``."""
    return _UID_RE.sub(lambda m: f"uid:{pseudonym(m.group(0))}", text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line. The message and string-valued extras pass through :func:`redact_uids`, a
    safety net for libraries that log UIDs; our own code logs pseudonyms only."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": redact_uids(record.getMessage()),
        }
        rid = request_id_var.get()
        if rid:
            payload["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                payload[key] = redact_uids(value) if isinstance(value, str) else value
        if record.exc_info and record.exc_info[0] is not None:
            payload["exc_type"] = record.exc_info[0].__name__
            payload["exc"] = redact_uids(self.formatException(record.exc_info))
        return json.dumps(payload, default=str)


class ValueFreeFilter(logging.Filter):
    """Handler filter: records of value-quoting libraries (:data:`VALUE_LOGGERS`, and ``py.warnings`` should
    warnings be captured by the standard ``logging.captureWarnings``) keep their level, logger and code
    location; their message, arguments and exception text are replaced, so no element value can pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if name == "py.warnings" or any(name == v or name.startswith(v + ".") for v in VALUE_LOGGERS):
            record.msg = f"{name} reported a problem at {record.module}:{record.lineno} [message withheld]"
            record.args = None
            record.exc_info = None
            record.exc_text = None
            record.stack_info = None
        return True


_warnings_log = logging.getLogger("app.warnings")


def log_warning_without_values(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                               file: Any = None, line: str | None = None) -> None:
    """``warnings.showwarning`` replacement: log the category and where it was raised, never the text
    (pydicom's say ``Invalid value for VR PN: '<the patient name>'``)."""
    _warnings_log.warning("warning", extra={"category": category.__name__,
                                            "where": f"{os.path.basename(filename)}:{lineno}"})


def configure_logging(level: str = "INFO") -> None:
    """Send the root logger and uvicorn's loggers to stderr as JSON lines (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ValueFreeFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    # the access log repeats what our request log says (and would print raw paths); keep it quiet
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in VALUE_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.captureWarnings(False)
    warnings.showwarning = log_warning_without_values
