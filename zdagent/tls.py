"""HTTPS for an app's site: certbot (webroot) obtains and renews the certificate.

zdagent does not speak ACME itself; certbot does, with ``--webroot``: it writes the http-01
token under ``tls.webroot``, which the site's plain-HTTP server serves at
``/.well-known/acme-challenge/``. Both ``zdagent tls issue`` and every later renewal (certbot's
own timer, ``certbot renew``) end in certbot's deploy hook, ``zdagent tls deployed``: install
the site's HTTPS server if it is not there yet, ``nginx -t``, **one** reload, then check that
Nginx now serves exactly the certificate on disk. That reload is the one a certificate
change needs even in njs mode (Nginx reads certificates only when it loads its config).

The hook is a shell string by certbot's design (it stores it in the renewal config): it is
built from this Python's path and the config's path only, each quoted with ``shlex.quote``.
"""

from __future__ import annotations

import hashlib
import shlex
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from zdagent.config import AppConfig, TlsConfig
from zdagent.errors import ConfigError, EnvironmentProblem, NginxError, ZdError
from zdagent.events import Emit, Event
from zdagent.lock import app_lock
from zdagent.nginx import Nginx, atomic_write, render_site

# The first line of the bundled site templates: a site file zdagent may rewrite.
SITE_HEADER = '# Nginx site for app "{app}"'


def tls_of(cfg: AppConfig) -> TlsConfig:
    if cfg.tls is None:
        raise ConfigError(f"{cfg.path}: HTTPS is not enabled for app {cfg.name}",
                          hint="set `enabled = true` under [tls] (and nginx.server_name), "
                               "then `zdagent config check`")
    return cfg.tls


def deploy_hook(cfg: AppConfig) -> str:
    """The command certbot runs after each issuance or renewal (a shell string, constant
    but for two validated paths)."""
    return shlex.join([sys.executable, "-m", "zdagent", "tls", "deployed",
                       "--config", str(cfg.path)])


def certbot_argv(cfg: AppConfig, *, renew: bool = False, force: bool = False) -> list[str]:
    """certbot's argv: ``certonly --webroot`` for the site's names, or ``renew`` of its
    certificate; the deploy hook either way (certbot keeps it for later renewals)."""
    tls = tls_of(cfg)
    argv = [*tls.certbot_command, "--non-interactive"]
    if renew:
        # Run by hand: no random wait of up to 8 minutes (that is for certbot's timer).
        argv += ["renew", "--cert-name", tls.domains[0], "--no-random-sleep-on-renew"]
    else:
        argv += ["certonly", "--agree-tos", "--webroot", "-w", str(tls.webroot),
                 "--cert-name", tls.domains[0], "--keep-until-expiring"]
        for name in tls.domains:
            argv += ["-d", name]
        argv += ["--email", tls.email] if tls.email else ["--register-unsafely-without-email"]
    if tls.acme_server:
        argv += ["--server", tls.acme_server]
    if force:
        argv.append("--force-renewal")
    return [*argv, "--deploy-hook", deploy_hook(cfg)]


def run_certbot(cfg: AppConfig, emit: Emit, *, renew: bool = False,
                force: bool = False) -> None:
    """Run certbot (argv, no shell); its output streams to our stderr as events."""
    tls = tls_of(cfg)
    if not renew:
        try:
            tls.webroot.mkdir(parents=True, exist_ok=True, mode=0o755)
        except OSError as e:
            raise EnvironmentProblem(f"cannot create tls.webroot {tls.webroot}: {e.strerror}",
                                     hint="run as root (certbot needs root too)") from None
    argv = certbot_argv(cfg, renew=renew, force=force)
    emit(Event("info", f"running {argv[0]} {'renew' if renew else 'certonly'} for "
                       f"{', '.join(tls.domains)}"))
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    except FileNotFoundError:
        raise EnvironmentProblem(f"certbot not found: {argv[0]}",
                                 hint="apt-get install certbot (or set tls.certbot_command)"
                                 ) from None
    except subprocess.TimeoutExpired:
        raise EnvironmentProblem("certbot did not finish within 15 minutes",
                                 hint="see /var/log/letsencrypt/letsencrypt.log") from None
    for line in (p.stdout + p.stderr).splitlines():
        if line.strip() and not line.startswith("- - -"):
            emit(Event("info", f"certbot: {line.strip()}"))
    if p.returncode != 0:
        raise ZdError(f"certbot failed (exit {p.returncode}) for {', '.join(tls.domains)}",
                      hint="the ACME server must reach http://<name>/.well-known/acme-challenge/"
                           " through this Nginx: install the site (`zdagent nginx render "
                           "--site`) and reload Nginx first; certbot's log has the details")


@dataclass(frozen=True)
class Deployed:
    site_written: bool
    fingerprint: str  # SHA-256 of the certificate Nginx now serves


def deployed(cfg: AppConfig, emit: Emit) -> Deployed:
    """certbot's deploy hook: HTTPS site in place, ``nginx -t``, one verified reload, and the
    served certificate is the one on disk. Holds the app's lock (never during a switch)."""
    tls = tls_of(cfg)
    if not tls.ready:
        raise ConfigError(f"no certificate at {tls.certificate} yet",
                          hint="run `zdagent tls issue` first")
    try:
        cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)  # as the store does
    except OSError as e:
        raise EnvironmentProblem(f"cannot create the state dir {cfg.state_dir}: {e.strerror}",
                                 hint="run as root, as certbot's deploy hook does") from None
    with app_lock(cfg.state_dir, cfg.name, "tls reload", emit):
        nginx = Nginx(cfg, emit)
        try:
            nginx.master()
            written, previous = install_site(cfg)
            problem = nginx.run_command(cfg.nginx.test_command, "nginx -t")
            if problem:
                if written and tls.site_file is not None:
                    _put_back(tls.site_file.resolve(), previous)
                raise NginxError(f"nginx -t failed: {problem}",
                                 hint="nothing was reloaded" +
                                      ("; the previous site file is back" if written else ""))
            deadline = nginx.reload(nginx.workers())
        finally:
            nginx.close()
    want = certificate_der(tls.certificate)
    host = tls.domains[0]
    address = _tls_address(cfg)
    while (seen := served_der(address, host)) != want:
        if time.monotonic() > deadline:
            raise NginxError(
                f"after the reload Nginx on {address[0]}:{address[1]} serves "
                f"{'no certificate' if seen is None else 'another certificate'} for {host}, "
                f"not {tls.certificate}",
                hint="check the site's ssl_certificate and Nginx's error log")
        time.sleep(0.05)
    fingerprint = hashlib.sha256(want).hexdigest()
    emit(Event("info", f"Nginx serves the certificate for {', '.join(tls.domains)} "
                       f"(sha256 {fingerprint[:16]}…)"))
    return Deployed(written, fingerprint)


def install_needed(cfg: AppConfig) -> bool:
    """The certificate exists but the site file does not have its HTTPS server yet."""
    tls = tls_of(cfg)
    if not tls.ready or tls.site_file is None:
        return False
    try:
        return tls.site_file.read_text() != render_site(cfg)
    except OSError:
        return True


def install_site(cfg: AppConfig) -> tuple[bool, str | None]:
    """Rewrite ``tls.site_file`` with the rendered site (now with its HTTPS server) when it
    differs; only a file zdagent wrote. Returns (written, previous text)."""
    tls = tls_of(cfg)
    if tls.site_file is None:
        return False, None
    path = tls.site_file.resolve()  # through an operator's symlink (sites-enabled): kept
    text = render_site(cfg)
    try:
        previous = path.read_text()
    except FileNotFoundError:
        previous = None
    except OSError as e:
        raise EnvironmentProblem(f"cannot read tls.site_file {tls.site_file}: {e.strerror}",
                                 hint="run as root") from None
    if previous == text:
        return False, previous
    if previous is not None and not previous.startswith(SITE_HEADER.format(app=cfg.name)):
        raise ConfigError(f"{cfg.path}: tls.site_file: {tls.site_file} was not written by "
                          "zdagent; it is never overwritten",
                          hint="install the HTTPS server by hand (`zdagent nginx render "
                               "--site`) or point tls.site_file at zdagent's site file")
    atomic_write(path, text)
    return True, previous


def _put_back(path: Path, previous: str | None) -> None:
    if previous is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write(path, previous)


def _tls_address(cfg: AppConfig) -> tuple[str, int]:
    """Where Nginx's HTTPS server is reached from this host (the verify URL's host)."""
    from urllib.parse import urlsplit

    u = urlsplit(cfg.verify_url)
    return (u.hostname or "127.0.0.1", u.port or 443)


def certificate_der(path: Path) -> bytes:
    """The first certificate of a PEM file (the leaf of certbot's fullchain.pem)."""
    text = path.read_text()
    end = "-----END CERTIFICATE-----"
    return ssl.PEM_cert_to_DER_cert(text[:text.index(end) + len(end)])


def served_der(address: tuple[str, int], server_name: str,
               timeout: float = 3.0) -> bytes | None:
    """The certificate Nginx presents for ``server_name`` (SNI). Not validated here: it is
    compared byte for byte with the file on disk, which is the stronger claim."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(address, timeout=timeout) as sock, \
                ctx.wrap_socket(sock, server_hostname=server_name) as s:
            return s.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None
