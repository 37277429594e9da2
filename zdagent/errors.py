"""One small error hierarchy: a message, a hint saying what to do, and the exit code.

Nothing below the CLI calls sys.exit; the CLI's top-level handler turns these into one line
plus a hint. Exit codes are part of the public interface (see README "Exit codes").
"""

from __future__ import annotations

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


def shorten(text: str, limit: int = 300) -> str:
    """One line of at most ``limit`` characters, cut in the MIDDLE: the end of a Docker or
    git message usually holds the cause ("...: port is already allocated"), so it stays."""
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    head = limit // 3
    tail = limit - head - 3
    return f"{line[:head]} … {line[-tail:]}"
