"""Wake IDLE sessions when their mailbox changes on disk: one inotify watch per path,
shared by every session of this process that waits on it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from twisted.internet import inotify
from twisted.python import filepath

# What changes a folder: a file arriving, leaving, renamed (flags), written (mbox, index WAL).
_MASK = (
    inotify.IN_CREATE
    | inotify.IN_MOVED_TO
    | inotify.IN_MOVED_FROM
    | inotify.IN_DELETE
    | inotify.IN_MODIFY
    | inotify.IN_CLOSE_WRITE
)


class Watcher:
    def __init__(self, reactor) -> None:  # type: ignore[no-untyped-def]
        self.reactor = reactor
        self.notifier: inotify.INotify | None = None
        self.listeners: dict[str, set[Callable[[], None]]] = {}
        self._scheduled: set[Callable[[], None]] = set()
        try:
            self.notifier = inotify.INotify(reactor)
            self.notifier.startReading()
        except Exception:  # noqa: BLE001 - no inotify (other OS, limits): sessions poll instead
            self.notifier = None

    @property
    def available(self) -> bool:
        return self.notifier is not None

    def add(self, paths: tuple[Path, ...], callback: Callable[[], None]) -> None:
        for path in paths:
            key = str(path)
            if key not in self.listeners:
                self.listeners[key] = set()
                if self.notifier is not None:
                    try:
                        self.notifier.watch(filepath.FilePath(key), mask=_MASK, callbacks=[self._changed])
                    except Exception:  # noqa: BLE001 - vanished path: the poll timer still runs
                        pass
            self.listeners[key].add(callback)

    def remove(self, callback: Callable[[], None]) -> None:
        for key in list(self.listeners):
            listeners = self.listeners[key]
            listeners.discard(callback)
            if not listeners:
                del self.listeners[key]
                if self.notifier is not None:
                    try:
                        self.notifier.ignore(filepath.FilePath(key))
                    except KeyError:
                        pass

    def _changed(self, _watch, path: filepath.FilePath, _mask: int) -> None:  # type: ignore[no-untyped-def]
        # inotify reports the child as a bytes path, whatever we watched with
        full = os.fsdecode(path.path)
        for key in (full, os.path.dirname(full)):
            for callback in list(self.listeners.get(key, ())):
                # a delivery is several events (create, write, rename): one wake-up for all
                if callback not in self._scheduled:
                    self._scheduled.add(callback)
                    self.reactor.callLater(0.05, self._fire, callback)

    def _fire(self, callback: Callable[[], None]) -> None:
        self._scheduled.discard(callback)
        callback()
