"""Sending: Apprise for every service it knows, httpx for the HMAC-signed JSON webhook.

Why the webhook is not Apprise's ``json://``: Apprise can add fixed headers (``+Name=value``)
but cannot compute a header from the body it sends, so an HMAC over the exact bytes on the wire
is impossible there. The signed webhook is therefore a plain POST with httpx: the body is the
event's JSON, ``X-Zdagent-Signature: sha256=<hex HMAC-SHA256 of the body>``, and
``X-Zdagent-Event-Id`` (the receiver's dedup key: delivery is at least once).

Each send is bounded (``SEND_TIMEOUT``); nothing here raises to a caller that runs a deploy:
``drain`` records failures in the outbox and ``flush`` swallows everything.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from zdagent import __version__
from zdagent.config import AppConfig, NotifyChannel
from zdagent.errors import shorten
from zdagent.notifications import outbox
from zdagent.notifications.events import describe, make_notice, title_and_body
from zdagent.store import Store

SEND_TIMEOUT = 10.0  # the whole send, at most (outbox.LEASE is longer)
SIGNATURE_HEADER = "X-Zdagent-Signature"
EVENT_ID_HEADER = "X-Zdagent-Event-Id"
EVENT_HEADER = "X-Zdagent-Event"

# Apprise reports a failed send only through its logger, which is global: one Apprise send at
# a time, so each capture holds its own send's lines only. (Webhooks do not wait for it.)
# A send left at its bound keeps it until it ends: the next one waits at most its own bound.
_APPRISE = threading.Lock()
logging.getLogger("apprise").addHandler(logging.NullHandler())  # never to stderr


class DeliveryError(Exception):
    """A send that did not arrive; the message never holds the URL or the secret."""


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the HMAC-SHA256 of ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def body_of(payload: dict[str, Any]) -> bytes:
    """The webhook body: compact JSON with sorted keys (the bytes the signature covers)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def secret_of(channel: NotifyChannel) -> bytes:
    """The webhook's HMAC key, read now (the daemon may read what the config reader cannot)."""
    if channel.secret is not None:
        return channel.secret.encode()
    if channel.secret_env is not None:
        value = os.environ.get(channel.secret_env)
        if not value:
            raise DeliveryError(f"the environment variable {channel.secret_env} (secret_env) "
                                "is not set for this process")
        return value.encode()
    assert channel.secret_file is not None
    try:
        value = channel.secret_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or type(e).__name__
        raise DeliveryError(f"cannot read secret_file {channel.secret_file}: {why}") from None
    if not value:
        raise DeliveryError(f"secret_file {channel.secret_file} is empty")
    return value.encode()


def label(channel: NotifyChannel) -> str:
    """How a channel is shown: its name and the URL without credentials, path or query."""
    if channel.kind == "webhook":
        parts = urlsplit(channel.url)
        return f"{channel.name} ({parts.scheme}://{parts.hostname}/…)"
    return f"{channel.name} ({channel.url.split(':', 1)[0]}://…)"


def send(channel: NotifyChannel, payload: dict[str, Any],
         timeout: float = SEND_TIMEOUT) -> None:
    """Deliver ``payload`` to ``channel`` now; DeliveryError when it did not arrive."""
    if channel.kind == "webhook":
        _post_webhook(channel, payload, timeout)
    else:
        _apprise(channel, payload, timeout)


def _post_webhook(channel: NotifyChannel, payload: dict[str, Any], timeout: float) -> None:
    import httpx

    body = body_of(payload)
    headers = {"Content-Type": "application/json", "User-Agent": f"zdagent/{__version__}",
               SIGNATURE_HEADER: sign(secret_of(channel), body),
               EVENT_ID_HEADER: payload["id"], EVENT_HEADER: payload["event"]}
    try:
        r = _post_bounded(channel.url, body, headers, timeout)
    except httpx.HTTPError as e:
        text = scrub(str(e), channel.url)  # never the URL: it may hold a token
        raise DeliveryError(f"{type(e).__name__}: {shorten(text, 160)}") from None
    if not 200 <= r.status_code < 300:
        raise DeliveryError(f"the receiver answered HTTP {r.status_code}")


def _post_bounded(url: str, body: bytes, headers: dict[str, str], timeout: float) -> Any:
    """POST with the whole exchange bounded by ``timeout``: httpx's timeouts are per read,
    so a receiver trickling its answer would hold the send (and a deploy's CLI) forever.
    At the bound the connection's socket is shut down, which wakes the blocked read."""
    import httpx

    sockets: list[socket.socket] = []
    expired = threading.Event()

    def cut(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def trace(name: str, info: dict[str, Any]) -> None:
        if name == "connection.connect_tcp.complete":
            sockets.append(info["return_value"].get_extra_info("socket"))
            if expired.is_set():
                cut(sockets[-1])

    def expire() -> None:
        expired.set()
        for sock in list(sockets):
            cut(sock)

    timer = threading.Timer(timeout, expire)
    timer.start()
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            return client.post(url, content=body, headers=headers,
                               extensions={"trace": trace})
    except httpx.HTTPError:
        if expired.is_set():
            raise httpx.TimeoutException(f"no complete answer within {timeout:.2g} s") \
                from None
        raise
    finally:
        timer.cancel()


def _apprise(channel: NotifyChannel, payload: dict[str, Any], timeout: float) -> None:
    import apprise

    plugin = apprise.Apprise.instantiate(channel.url, suppress_exceptions=True)
    if plugin is None:
        raise DeliveryError("Apprise no longer understands this URL (check the config)")
    plugin.socket_connect_timeout = timeout
    plugin.socket_read_timeout = timeout
    title, body = title_and_body(payload)
    outcome: list[tuple[bool, str] | BaseException] = []

    def notify() -> None:
        if not _APPRISE.acquire(timeout=timeout):
            return  # an earlier send, left at its bound, still runs
        try:
            with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as log:
                outcome.append((plugin.notify(body=body, title=title), log.getvalue()))
        except Exception as e:  # raised again by the caller, as a send of its own would
            outcome.append(e)
        finally:
            _APPRISE.release()

    # Apprise's timeouts are per connect and per read: a server slow at each step holds a
    # send for several of them. So the send has a thread of its own and, at the bound, is
    # left to end by itself (should it still arrive, the retry is a duplicate: same event id).
    worker = threading.Thread(target=notify, name="zd-apprise", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        raise DeliveryError(f"SendTimeout: no complete answer within {timeout:.2g} s")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    ok, said = outcome[0]
    if not ok:
        lines = [ln for ln in said.splitlines() if ln.strip()]
        text = lines[-1] if lines else "Apprise reported a failure"
        raise DeliveryError(shorten(scrub(text, channel.url), 200))


def scrub(text: str, url: str) -> str:
    """``text`` without any part of ``url`` that may be a credential: some Apprise services
    log the API URL they called, token included (e.g. Telegram's bot token in the path)."""
    parts = re.split(r"[/:@?&=#,+]", url.split("://", 1)[-1])
    for part in sorted({unquote(p) for p in parts} | set(parts), key=len, reverse=True):
        if len(part) >= 6:
            text = text.replace(part, "…")
    return text


# --- draining the outbox -----------------------------------------------------------------

@dataclass
class Round:
    """What one drain round did (``failed`` holds channel name -> error)."""

    sent: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    reached: set[str] = field(default_factory=set)  # channel names that took one
    left: int = 0  # still to deliver after the round


def drain(store: Store, cfg: AppConfig, deadline: float,
          clock: Callable[[], float] = time.time, tidy: bool = True) -> Round:
    """Send what is due for ``cfg``'s channels until done or ``deadline`` (a clock() time).
    ``tidy``: first give up deliveries to removed channels and delete old finished events."""
    result = Round()
    if tidy:
        outbox.drop_unknown(store, cfg.name, {c.key for c in cfg.notify}, clock())
        outbox.prune(store, cfg.name, clock() - outbox.KEEP)
    # Each channel its own due list, served in turn, one delivery each: neither a down
    # channel's backlog nor a slow one's holds up another (removed channels' rows are not
    # asked for: the tidy gives them up).
    turns = deque((c, deque(outbox.due(store, cfg.name, clock(), channel=c.key)))
                  for c in cfg.notify)
    while turns:
        channel, items = turns.popleft()
        if not items:
            continue
        remaining = deadline - clock()
        if remaining <= 0.5:
            break
        if _deliver(store, channel, items.popleft(), remaining, clock, result):
            turns.append((channel, items))  # else failed: the rest wait their backoff
    result.left = outbox.outbox_depth(store, cfg.name)
    return result


def _deliver(store: Store, channel: NotifyChannel, item: outbox.Pending, remaining: float,
             clock: Callable[[], float], result: Round) -> bool:
    """Claim and send one delivery, and record how it went; False if the send failed."""
    if not outbox.claim(store, item, clock()):
        return True  # another sender has it
    try:
        send(channel, item.payload, min(SEND_TIMEOUT, remaining))
    except DeliveryError as e:
        error = str(e)
    except Exception as e:  # a plugin's bug must not stop the other deliveries
        error = f"unexpected {type(e).__name__}"
    else:
        outbox.delivered(store, item, clock())
        result.sent += 1
        result.reached.add(channel.name)
        return True
    outbox.failed(store, item, clock(), error)
    result.failed[channel.name] = error
    return False


def flush(cfg: AppConfig, seconds: float) -> Round | None:
    """Deliver what is due within ``seconds`` (the CLI after an in-process deploy). Never
    raises: what fails stays queued for the daemon or the next run. None if no channel."""
    if not cfg.notify:
        return None
    try:
        store = Store(cfg.state_dir)
    except Exception:
        return None
    try:
        return drain(store, cfg, time.time() + seconds)
    except Exception as e:
        return Round(failed={"outbox": f"{type(e).__name__}: {e}"})
    finally:
        store.close()


def send_test(cfg: AppConfig) -> dict[str, Any]:
    """`zdagent notify test`: a test event to every channel now, not queued; per channel
    its name, target (no secrets), ok and error."""
    notice = make_notice(cfg.name, "test", {"message": "zdagent notify test"})
    channels = []
    for channel in cfg.notify:
        error: str | None = None
        try:
            send(channel, notice.payload)
        except DeliveryError as e:
            error = str(e)
        except Exception as e:
            error = f"unexpected {type(e).__name__}"
        channels.append({"name": channel.name, "target": label(channel), "ok": error is None,
                         "error": error})
    return {"app": cfg.name, "channels": channels}


def status(cfg: AppConfig) -> dict[str, Any]:
    """`zdagent notify status`: per channel, what the outbox holds."""
    with Store(cfg.state_dir) as store:
        stats = outbox.channel_stats(store, cfg.name)
        depth = outbox.outbox_depth(store, cfg.name)
    empty = {"pending": 0, "delivered": 0, "given_up": 0, "last_delivered_at": None,
             "last_error": None}
    return {"app": cfg.name, "pending": depth,
            "channels": [{"name": c.name, "kind": c.kind, "target": label(c),
                          "events": describe(c.events), **stats.get(c.key, empty)}
                         for c in cfg.notify]}
