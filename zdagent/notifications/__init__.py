"""Notifications: engine and watchdog events -> a durable outbox in the store -> channels.

``events`` holds the event names, the per-channel filter and the payload (pure); ``outbox``
the SQLite rows that make delivery survive a crash; ``deliver`` the sending (Apprise, and the
HMAC-signed JSON webhook over httpx) and the drain rounds of the daemon and the CLI. Only
``deliver`` imports Apprise or httpx, so queueing an event costs the engine nothing more.
"""
