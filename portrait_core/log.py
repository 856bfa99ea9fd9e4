"""The `portrait` logger: one named logger with its own handler; the root logger is never touched."""

from __future__ import annotations

import logging
import sys

LOGGER_NAME = "portrait"
_HANDLER_FLAG = "_portrait_studio_handler"


def get_logger(child: str | None = None) -> logging.Logger:
    """Return the `portrait` logger, or one of its children (`portrait.<child>`)."""
    name = LOGGER_NAME if not child else f"{LOGGER_NAME}.{child}"
    return logging.getLogger(name)


def configure_logging(level: str | int = "INFO", stream=None) -> logging.Logger:
    """Give the `portrait` logger a level and exactly one handler of ours; safe to call repeatedly."""
    logger = logging.getLogger(LOGGER_NAME)
    if isinstance(level, str):
        resolved = logging.getLevelName(level.upper())
        if not isinstance(resolved, int):
            raise ValueError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING or ERROR")
        level = resolved
    logger.setLevel(level)
    logger.propagate = False
    ours = [h for h in logger.handlers if getattr(h, _HANDLER_FLAG, False)]
    if not ours:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(logging.Formatter("[Portrait Studio] %(levelname)s %(name)s: %(message)s"))
        setattr(handler, _HANDLER_FLAG, True)
        logger.addHandler(handler)
    elif stream is not None:
        ours[0].setStream(stream)
    return logger
