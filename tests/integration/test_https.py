"""HTTPS against a real ACME CA: Debian's pebble validates http-01 through our Nginx, real
certbot obtains and renews the certificate, its deploy hook (`zdagent tls deployed`) installs
the HTTPS server and reloads Nginx once; a deploy over HTTPS under load loses nothing."""

from __future__ import annotations

import os
import ssl
import subprocess
import uuid

import httpx
import pytest

from benchmarks.harness import NJS_MODULE, free_port
from tests import acme
from tests.conftest import require
from tests.traffic import RequestLoop

DOMAIN = "web.zdagent.test"  # pebble-challtestsrv resolves every name to 127.0.0.1


@pytest.fixture
def pebble(tmp_path, nginx_server):
    """pebble validating http-01 on the test Nginx's port (the app's plain-HTTP listen)."""
    require(acme.available(), "pebble, pebble-challtestsrv, certbot and openssl "
                              "(apt-get install pebble certbot)")
    ca = acme.Pebble(tmp_path / "pebble", nginx_server.port).start()
    yield ca
    ca.close()


@pytest.fixture
def https_app(make_app, pebble, tmp_path, nginx_server):
    require(NJS_MODULE.exists(), "Nginx's njs module (apt-get install libnginx-mod-http-js)")
    le = tmp_path / "le"
    tls_port = free_port()
    site = nginx_server.prefix / "sites" / "https-app.conf"
    certbot = ["certbot", "--config-dir", str(le / "config"), "--work-dir", str(le / "work"),
               "--logs-dir", str(le / "logs")]
    extra = f"""server_name = "{DOMAIN}"
switch_mode = "njs"

[tls]
enabled = true
listen = "127.0.0.1:{tls_port}"
webroot = "{tmp_path / 'acme-webroot'}"
certificate = "{le / 'config/live' / DOMAIN / 'fullchain.pem'}"
certificate_key = "{le / 'config/live' / DOMAIN / 'privkey.pem'}"
acme_server = "{pebble.directory}"
certbot_command = {certbot!r}
site_file = "{site}"
""".replace("'", '"')
    app = make_app(extra=extra)
    # make_app installed the site as <name>.conf: zdagent's site file is tls.site_file.
    (nginx_server.prefix / "sites" / f"{app.name}.conf").rename(site)
    nginx_server.reload()
    bundle = pebble.trust_bundle(tmp_path / "ca-bundle.pem")
    # certbot trusts pebble's API; zdagent's verification trusts pebble's issuing root.
    app.env.update(REQUESTS_CA_BUNDLE=str(bundle), SSL_CERT_FILE=str(bundle))
    app.tls_port, app.bundle, app.site, app.le, app.certbot = (
        tls_port, bundle, site, le, certbot)
    return app


def served_der(port: int) -> bytes | None:
    from zdagent.tls import served_der as served

    return served(("127.0.0.1", port), DOMAIN)


def handshake(port: int, bundle, maximum: ssl.TLSVersion | None) -> tuple[str, str]:
    """(protocol, cipher) of a verified TLS connection to the site as DOMAIN."""
    import socket

    ctx = ssl.create_default_context(cafile=str(bundle))
    if maximum is not None:
        ctx.maximum_version = maximum
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, \
            ctx.wrap_socket(sock, server_hostname=DOMAIN) as s:
        return s.version() or "", s.cipher()[0]


def reloads(nginx_server) -> int:
    return (nginx_server.prefix / "error.log").read_text().count("(SIGHUP) received")


def test_https_issue_serve_renew_and_deploy_without_loss(https_app, nginx_server):
    from zdagent.tls import certificate_der

    app = https_app
    # Before the certificate: plain HTTP proxies to the app and serves the challenge dir.
    token = f"probe-{uuid.uuid4().hex}"
    webroot = app.site.parent.parent.parent / "acme-webroot" / ".well-known/acme-challenge"
    webroot.mkdir(parents=True)
    (webroot / token).write_text("token-content")
    r = httpx.get(f"{app.url}/.well-known/acme-challenge/{token}", headers={"Host": DOMAIN})
    assert (r.status_code, r.text) == (200, "token-content")
    assert served_der(app.tls_port) is None  # no HTTPS server yet

    before = reloads(nginx_server)
    p = app.ok("tls", "issue")
    cert = app.le / "config/live" / DOMAIN / "cert.pem"
    first = certificate_der(cert)
    assert served_der(app.tls_port) == first, p.stderr
    assert reloads(nginx_server) == before + 1, p.stderr  # the deploy hook's one reload
    assert f"listen 127.0.0.1:{app.tls_port} ssl;" in app.site.read_text()

    # HTTP -> HTTPS redirect; the challenge location still answers over plain HTTP.
    r = httpx.get(f"{app.url}/some/path?q=1", headers={"Host": DOMAIN})
    assert r.status_code == 301
    assert r.headers["location"] == f"https://{DOMAIN}:{app.tls_port}/some/path?q=1"
    r = httpx.get(f"{app.url}/.well-known/acme-challenge/{token}", headers={"Host": DOMAIN})
    assert (r.status_code, r.text) == (200, "token-content")
    # Modern settings: TLS 1.3 by default; a TLS 1.2 client gets a forward-secret AEAD cipher;
    # the chain verifies against pebble's root for the server name.
    assert handshake(app.tls_port, app.bundle, None)[0] == "TLSv1.3"
    version, cipher = handshake(app.tls_port, app.bundle, ssl.TLSVersion.TLSv1_2)
    assert version == "TLSv1.2" and cipher.startswith("ECDHE-") and "GCM" in cipher, cipher

    # A forced renewal as certbot's timer runs it (minus the timer's random wait of up to
    # 8 minutes): the stored deploy hook swaps the served certificate with one reload.
    before = reloads(nginx_server)
    renew = subprocess.run([*app.certbot, "renew", "--force-renewal", "--non-interactive",
                            "--no-random-sleep-on-renew"],
                           capture_output=True, text=True, timeout=300, check=False,
                           env={**os.environ, **app.env})
    assert renew.returncode == 0, renew.stderr
    second = certificate_der(cert)
    assert second != first
    assert served_der(app.tls_port) == second
    assert reloads(nginx_server) == before + 1, renew.stderr

    # Rerunning `tls issue` with a valid certificate changes nothing, reloads nothing.
    before = reloads(nginx_server)
    app.ok("tls", "issue")
    assert served_der(app.tls_port) == second
    assert reloads(nginx_server) == before

    # A zero-downtime deploy and a rollback over HTTPS under load lose nothing (njs switch).
    app.ok("deploy", "v1")
    url = f"https://127.0.0.1:{app.tls_port}/cgi-bin/version"
    verify = ssl.create_default_context(cafile=str(app.bundle))
    with RequestLoop(url, max_seconds=60, host=DOMAIN, verify=verify) as close, \
            RequestLoop(url, max_seconds=60, host=DOMAIN, verify=verify,
                        keep_alive=True) as kept:
        app.ok("deploy", "v2")
        app.ok("rollback")
    for loop in (close, kept):
        assert loop.failures == [], loop.failures[:5]
        assert loop.versions["v1"] > 0 and loop.versions["v2"] > 0, loop.versions
    # Plain HTTP only redirects now (no upstream header), so these verified switches went over
    # HTTPS: SNI = the server name, the chain checked against pebble's root.
    from zdagent.config import load_config

    assert load_config(app.config).verify_url == \
        f"https://127.0.0.1:{app.tls_port}/cgi-bin/health"
    r = httpx.get(f"{app.url}/cgi-bin/health", headers={"Host": DOMAIN})
    assert r.status_code == 301 and "x-zdagent-upstream" not in r.headers
