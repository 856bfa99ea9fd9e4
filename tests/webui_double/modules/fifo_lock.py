"""Double of modules/fifo_lock.py: the WebUI's first-come-first-served lock (not reentrant)."""

from __future__ import annotations

import collections
import threading


class FIFOLock:
    """Waiters get the lock in arrival order. Like the real one it is a plain Lock underneath:
    the thread holding it blocks itself if it asks again."""

    def __init__(self):
        self._lock = threading.Lock()
        self._inner_lock = threading.Lock()
        self._pending_threads = collections.deque()

    def acquire(self, blocking=True):
        with self._inner_lock:
            if self._lock.acquire(False):
                return True
            if not blocking:
                return False
            release_event = threading.Event()
            self._pending_threads.append(release_event)
        release_event.wait()
        return self._lock.acquire()

    def release(self):
        with self._inner_lock:
            if self._pending_threads:
                self._pending_threads.popleft().set()
            self._lock.release()

    __enter__ = acquire

    def __exit__(self, exc_type, exc, tb):
        self.release()
