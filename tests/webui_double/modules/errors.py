"""Double of modules/errors.py: the WebUI reports an error to stderr and goes on.

`reported` keeps every message so a test can see what the real WebUI would only have printed.
"""

from __future__ import annotations

import sys
import traceback

reported: list[str] = []


def report(message: str, *, exc_info: bool = False) -> None:
    reported.append(message)
    print("***", message, file=sys.stderr)
    if exc_info:
        traceback.print_exc(file=sys.stderr)


def display(e: Exception, task, *, full_traceback=False):
    report(f"{task or 'error'}: {type(e).__name__}: {e}")
