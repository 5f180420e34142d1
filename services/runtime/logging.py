"""structlog configuration for every worker, in one place.

JSON lines on stderr, one object per event, with ISO timestamps and the level. Workers log one
``decision`` event per input record (stage, key, record coordinates, result), never a record's
value: values may hold key material or other secrets.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


class _JsonFormatter(logging.Formatter):
    """Stdlib records (aiokafka's) as the same JSON lines."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"level": record.levelname.lower(), "logger": record.name,
               "event": record.getMessage()}
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Route structlog (and the stdlib loggers aiokafka uses, at WARNING) to JSON lines."""
    out = stream if stream is not None else sys.stderr
    numeric = _LEVELS.get(level, logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(_JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))


def get_logger(**bound: Any) -> Any:
    """A structlog logger with ``bound`` context."""
    return structlog.get_logger().bind(**bound)
