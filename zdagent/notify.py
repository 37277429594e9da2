"""sd_notify in pure Python: READY=1, STATUS=…, WATCHDOG=1 to $NOTIFY_SOCKET.

A leading '@' names an abstract socket (sent as a leading NUL byte). Without NOTIFY_SOCKET
(not under systemd) every call is a no-op.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self) -> None:
        addr = os.environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + addr[1:] if addr.startswith("@") else addr
        usec = os.environ.get("WATCHDOG_USEC", "")
        # Ping at half the watchdog timeout, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None

    def send(self, *lines: str) -> bool:
        if not self.address:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            # Never block (as libsystemd's MSG_DONTWAIT): this runs on the event loop, and a
            # datagram socket whose reader lags (a queue of 10 by default) would stall the
            # whole daemon. A message that does not fit is dropped; the next one follows.
            s.setblocking(False)
            try:
                s.sendto("\n".join(lines).encode(), self.address)
                return True
            except OSError:
                return False

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")
