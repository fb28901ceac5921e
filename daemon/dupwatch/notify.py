"""systemd's notification protocol (sd_notify): READY, STOPPING, STATUS and WATCHDOG pings.

A few lines over a datagram socket; outside systemd (no NOTIFY_SOCKET) every call does nothing.
"""

from __future__ import annotations

import os
import socket

import structlog

log = structlog.get_logger(__name__)


class Notifier:
    """Sends state changes to systemd when running as a ``Type=notify`` service."""

    def __init__(self, address: str | None = None) -> None:
        self._address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        # The abstract namespace is spelled with a leading "@" in the environment variable.
        if self._address and self._address.startswith("@"):
            self._address = "\0" + self._address[1:]
        self._failed = False

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def watchdog_interval(self) -> float | None:
        """Half of systemd's WatchdogSec, in seconds, if a watchdog is armed for this process."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2_000_000
        except ValueError:
            return None

    def send(self, message: str) -> None:
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall(message.encode("utf-8", "replace"))
        except OSError as exc:
            if not self._failed:  # say it once; the service still works without it
                log.warning("notify_failed", error=str(exc))
                self._failed = True

    def ready(self, status: str = "") -> None:
        self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")
