"""One small error hierarchy: a message, a hint saying what to do, and the exit code.

Nothing below the CLI calls sys.exit; the CLI's top-level handler turns these into one line
plus a hint. Exit codes are part of the public interface (see README "Exit codes").
"""

from __future__ import annotations

import errno

from zdagent.runbook import with_link

EXIT_OK = 0
EXIT_DEPLOY_FAILED = 1
EXIT_USAGE = 2
EXIT_ENVIRONMENT = 3


class ZdError(Exception):
    """Base for every error zdagent expects and explains."""

    exit_code = EXIT_DEPLOY_FAILED

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(ZdError):
    """The config file (or a CLI argument) is wrong; nothing was touched."""

    exit_code = EXIT_USAGE


class UsageError(ZdError):
    """A command was called with arguments that cannot work; nothing was touched."""

    exit_code = EXIT_USAGE


class EnvironmentProblem(ZdError):
    """Docker or Nginx is missing or unreachable; nothing was touched."""

    exit_code = EXIT_ENVIRONMENT


class DeployFailed(ZdError):
    """A deploy or rollback failed; the live app is unchanged or was restored."""

    exit_code = EXIT_DEPLOY_FAILED


class LockBusy(DeployFailed):
    """Another deploy of the same app holds the lock and we were told not to wait."""


class BuildFailed(DeployFailed):
    """The image build failed; carries the failing step."""


class HealthCheckFailed(DeployFailed):
    """The candidate never became healthy; carries its last log lines."""


class ReleaseFailed(DeployFailed):
    """The release command failed or timed out; nothing was switched."""


class SmokeCheckFailed(DeployFailed):
    """A smoke check on the candidate failed (it is named); nothing was switched."""


class HookFailed(DeployFailed):
    """A host hook failed; a pre_ hook aborts, a post_ hook's failure is only recorded."""


class NginxError(DeployFailed):
    """nginx -t, reload or verification failed; the previous upstream was restored."""


class DiskFull(EnvironmentProblem):
    """A disk filled up (Docker's data root, the state dir): an environment problem."""


# How a full disk shows in Docker's answers (build/pull/run), SQLite and OSError texts.
_DISK_FULL = ("no space left on device", "database or disk is full", "disk quota exceeded")


def is_disk_full(problem: BaseException | str) -> bool:
    """True when ``problem`` (an exception or an error text) says a disk is full."""
    if isinstance(problem, OSError) and problem.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = problem if isinstance(problem, str) else \
        f"{problem} {getattr(problem, 'explanation', '') or ''}"
    return any(words in text.lower() for words in _DISK_FULL)


def disk_full(what: str, detail: str) -> DiskFull:
    """The one error for a full disk, whatever was writing: what failed and Docker's words."""
    return DiskFull(f"{what}: the disk is full ({shorten(detail, 200)})",
                    hint=with_link("free space where Docker keeps its data and in the state "
                                   "dir (`df -h`, `zdagent prune`, `docker image prune`); the "
                                   "live slot is untouched", "disk-full"))


def as_known(e: BaseException) -> ZdError | None:
    """``e`` as an error zdagent explains, or None for a bug: a full disk anywhere (an
    OSError, SQLite's "database or disk is full") is the operator's to fix, not a bug."""
    if isinstance(e, ZdError):
        return e
    if is_disk_full(e):
        return disk_full(type(e).__name__, str(e))
    return None


def shorten(text: str, limit: int = 300) -> str:
    """One line of at most ``limit`` characters, cut in the MIDDLE: the end of a Docker or
    git message usually holds the cause ("...: port is already allocated"), so it stays."""
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    head = limit // 3
    tail = limit - head - 3
    return f"{line[:head]} … {line[-tail:]}"
