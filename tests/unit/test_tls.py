"""HTTPS as data: the [tls] keys, the rendered site in its two stages, certbot's argv and
the deploy hook's quoting, and where switches are verified."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from tests.unit.test_config import MINIMAL, error_of, write
from zdagent.config import LETSENCRYPT_LIVE, load_config
from zdagent.nginx import render_site
from zdagent.tls import certbot_argv, deploy_hook

NAMED = MINIMAL.replace('upstream_file = "up.conf"',
                        'upstream_file = "up.conf"\nserver_name = "example.com www.example.com"'
                        '\npublic_url = "http://127.0.0.1:8080/"\nlisten = "8080"')
TLS = NAMED + '\n[tls]\nenabled = true\nlisten = "8443"\n'


def with_cert(tmp_path: Path, extra: str = "") -> str:
    (tmp_path / "c.pem").write_text("cert")
    (tmp_path / "k.pem").write_text("key")
    return TLS + f'certificate = "{tmp_path}/c.pem"\ncertificate_key = "{tmp_path}/k.pem"\n' + extra


def test_tls_is_off_by_default_and_defaults_to_certbots_live_files(tmp_path):
    assert load_config(write(tmp_path, NAMED)).tls is None
    tls = load_config(write(tmp_path, TLS)).tls
    assert tls is not None and tls.domains == ("example.com", "www.example.com")
    assert tls.certificate == LETSENCRYPT_LIVE / "example.com" / "fullchain.pem"
    assert tls.certificate_key == LETSENCRYPT_LIVE / "example.com" / "privkey.pem"
    assert tls.webroot == Path("/var/www/zdagent-acme") and tls.certbot_command == ("certbot",)


@pytest.mark.parametrize("text, fragment", [
    (MINIMAL + "[tls]\nenabled = true\n", "tls.enabled: needs nginx.server_name"),
    (NAMED + '[tls]\nenabled = true\nlisten = "8080"\n', "tls.listen: must differ"),
    (TLS + 'email = "not an address"\n', "tls.email: must be an e-mail address"),
    (TLS + 'acme_server = "ftp://x"\n', "tls.acme_server: must be an http(s):// URL"),
    (TLS + 'certbot_command = "certbot renew"\n', "tls.certbot_command: must be a non-empty"),
    (TLS + "enabeld = true\n", "did you mean 'enabled'"),
])
def test_bad_tls_keys_name_the_key(tmp_path, text, fragment):
    assert fragment in error_of(tmp_path, text)


def test_site_before_the_certificate_serves_the_challenge_and_proxies(tmp_path):
    cfg = load_config(write(tmp_path, TLS))
    assert cfg.tls is not None and not cfg.tls.ready
    site = render_site(cfg)
    assert "location ^~ /.well-known/acme-challenge/ {\n        root /var/www/zdagent-acme;" in site
    assert " ssl;" not in site and "return 301" not in site
    assert "proxy_pass http://zdagent_web;" in site
    assert cfg.verify_url == "http://127.0.0.1:8080/"  # no HTTPS server yet


@pytest.mark.parametrize("mode", ["reload", "njs"])
def test_site_with_the_certificate_redirects_and_serves_https(tmp_path, mode):
    text = with_cert(tmp_path).replace('listen = "8080"',
                                       f'listen = "8080"\nswitch_mode = "{mode}"')
    cfg = load_config(write(tmp_path, text))
    site = render_site(cfg)
    http, https = site.split("\nserver {\n")[1:]
    assert "acme-challenge" in http and "return 301 https://$host:8443$request_uri;" in http
    assert "proxy_pass" not in http
    assert https.startswith("    listen 8443 ssl;\n    server_name example.com www.example.com;")
    assert f"ssl_certificate {tmp_path}/c.pem;" in https
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in https and "ssl_session_tickets off;" in https
    # HSTS sits beside the location's own add_header (Nginx drops inherited ones there).
    assert 'add_header Strict-Transport-Security "max-age=63072000" always;' in https
    assert "X-Zdagent-Upstream" in https
    assert cfg.verify_url == "https://127.0.0.1:8443/"
    assert cfg.verify_headers == {"Host": "example.com"}


def test_site_without_tls_is_unchanged_by_the_tls_blocks(tmp_path):
    site = render_site(load_config(write(tmp_path, NAMED)))
    assert "acme" not in site and "ssl" not in site and "Strict-Transport" not in site


def test_certbot_argv_issue_and_renew(tmp_path):
    extra = ('email = "ops@example.com"\nacme_server = "https://127.0.0.1:14000/dir"\n'
             'certbot_command = ["certbot", "--config-dir", "/tmp/le dir"]\n')
    cfg = load_config(write(tmp_path, TLS + extra))
    hook = deploy_hook(cfg)
    assert certbot_argv(cfg) == [
        "certbot", "--config-dir", "/tmp/le dir", "--non-interactive", "certonly",
        "--agree-tos", "--webroot", "-w", "/var/www/zdagent-acme", "--cert-name",
        "example.com", "--keep-until-expiring", "-d", "example.com", "-d", "www.example.com",
        "--email", "ops@example.com", "--server", "https://127.0.0.1:14000/dir",
        "--deploy-hook", hook]
    assert certbot_argv(cfg, renew=True, force=True) == [
        "certbot", "--config-dir", "/tmp/le dir", "--non-interactive", "renew", "--cert-name",
        "example.com", "--no-random-sleep-on-renew", "--server", "https://127.0.0.1:14000/dir",
        "--force-renewal", "--deploy-hook", hook]


def test_deploy_hook_is_one_quoted_command(tmp_path):
    odd = tmp_path / "a dir; touch $HOME" / "web.toml"
    odd.parent.mkdir()
    odd.write_text(TLS)
    cfg = load_config(odd)
    assert shlex.split(deploy_hook(cfg)) == [sys.executable, "-m", "zdagent", "tls",
                                            "deployed", "--config", str(odd)]


def test_watchdog_probe_moves_to_https_when_the_certificate_appears(tmp_path):
    from zdagent.probe import KeptAlive
    from zdagent.watchdog import edge_for

    cfg = load_config(write(tmp_path, TLS + f'certificate = "{tmp_path}/c.pem"\n'
                                             f'certificate_key = "{tmp_path}/k.pem"\n'))
    edge = KeptAlive(cfg.verify_url)
    assert edge_for(cfg, edge) is edge and edge.url == "http://127.0.0.1:8080/"
    with_cert(tmp_path)  # certbot wrote the files
    moved = edge_for(cfg, edge)
    assert moved.url == "https://127.0.0.1:8443/" and moved.host_header == "example.com"


def test_https_port_must_not_be_a_slot_port(tmp_path):
    assert "tls.listen: must differ from slots.blue_port" in error_of(
        tmp_path, NAMED + '[tls]\nenabled = true\nlisten = "18001"\n')


@pytest.mark.parametrize("web_tls, zzz, fragment", [
    ("8443", {"blue": 8443}, "slots.blue_port: port 8443 is the HTTPS listen port of app web"),
    ("8443", {"listen": "8443"}, "nginx.listen: port 8443 is the HTTPS listen port of app web"),
    (None, {"tls": "18001"}, "tls.listen: port 18001 is a slot port of app web"),
    (None, {"tls": "8080", "listen": "8081"},
     "tls.listen: port 8080 is Nginx's plain-HTTP listen port of app web"),
])
def test_https_port_clashes_across_apps(tmp_path, web_tls, zzz, fragment):
    """An HTTPS port is a port: another app's slot must not take it, and one port cannot
    serve plain HTTP for one app and TLS for another (Nginx makes the socket ssl)."""
    from tests.unit.test_config import app_file
    from zdagent.config import load_app_dir

    def tls(path: Path, listen: str) -> None:
        text = path.read_text().replace("[nginx]\n", '[nginx]\nserver_name = "example.com"\n')
        path.write_text(text + f'[tls]\nenabled = true\nlisten = "{listen}"\n')

    web = app_file(tmp_path, "web", 18001, 18002, listen="8080")
    if web_tls:
        tls(web, web_tls)
    path = app_file(tmp_path, "zzz", zzz.get("blue", 18008), 18009,
                    listen=zzz.get("listen", "8080"))
    if "tls" in zzz:
        tls(path, zzz["tls"])
    d = load_app_dir(tmp_path)
    assert list(d.apps) == ["web"], d.errors
    assert d.errors == {"zzz": f"{path.resolve()}: {fragment}"}


def test_apps_may_share_an_https_port(tmp_path):
    """Like port 80: several sites on 443, told apart by SNI and server_name."""
    from tests.unit.test_config import app_file
    from zdagent.config import load_app_dir

    for name, blue in (("web", 18001), ("api", 18003)):
        path = app_file(tmp_path, name, blue, blue + 1)
        text = path.read_text().replace("[nginx]\n", f'[nginx]\nserver_name = "{name}.com"\n')
        path.write_text(text + '[tls]\nenabled = true\nlisten = "8443"\n')
    d = load_app_dir(tmp_path)
    assert sorted(d.apps) == ["api", "web"] and d.errors == {}


def test_the_verify_host_is_a_name_of_the_certificate(tmp_path):
    """Switches are verified over HTTPS with SNI = the Host header: a certificate without
    that name fails every switch. `.example.com` means example.com (and its subdomains)."""
    text = with_cert(tmp_path).replace('"example.com www.example.com"',
                                       '".example.com www.example.com"')
    cfg = load_config(write(tmp_path, text))
    assert cfg.tls is not None and cfg.tls.domains == ("example.com", "www.example.com")
    assert cfg.verify_headers["Host"] in cfg.tls.domains


def test_the_hook_writes_through_a_site_file_symlink(tmp_path):
    """sites-enabled/x.conf -> ../sites-available/x.conf: the hook updates the file the link
    names and keeps the operator's link (a rename over it would leave the target stale)."""
    from zdagent.tls import install_site

    available, enabled = tmp_path / "sites-available", tmp_path / "sites-enabled"
    available.mkdir()
    enabled.mkdir()
    link = enabled / "web.conf"
    link.symlink_to("../sites-available/web.conf")
    cfg = load_config(write(tmp_path, with_cert(tmp_path, f'site_file = "{link}"\n')))
    (available / "web.conf").write_text(render_site(cfg).replace("ssl", "x"))  # older text
    assert install_site(cfg)[0]
    assert link.is_symlink() and (available / "web.conf").read_text() == render_site(cfg)
