#!/usr/bin/env bash
# The README quick start in one command (run as root on Debian): install everything, then
# deploy the bundled sample app, deploy v2 while a request loop counts failed requests, show
# status and history, and roll back. Everything listens on 127.0.0.1 only.
#   ZDAGENT_DEMO_DIR  (default /tmp/zdagent-demo)   ZDAGENT_DEMO_PORT (default 8080)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
bash scripts/bootstrap.sh

DEMO=${ZDAGENT_DEMO_DIR:-/tmp/zdagent-demo}
PORT=${ZDAGENT_DEMO_PORT:-8080}
NGINX=(nginx -p "$DEMO/nginx" -c "$DEMO/nginx/nginx.conf" -e "$DEMO/nginx/error.log")
# Zero drop by default: the reload-free switch wherever Nginx's njs module is installed.
NJS_MODULE=/usr/lib/nginx/modules/ngx_http_js_module.so
if [ -f "$NJS_MODULE" ]; then SWITCH_MODE=njs; LOAD_NJS="load_module $NJS_MODULE;"
else SWITCH_MODE=reload; LOAD_NJS=""; fi
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "setting up the demo in $DEMO (Nginx on 127.0.0.1:$PORT, switch_mode = $SWITCH_MODE)"
if [ -f "$DEMO/nginx/nginx.pid" ]; then "${NGINX[@]}" -s quit 2>/dev/null || true; sleep 1; fi
docker rm -f demo-blue demo-green >/dev/null 2>&1 || true
rm -rf "$DEMO"
mkdir -p "$DEMO/app" "$DEMO/nginx/tmp" "$DEMO/nginx/sites" "$DEMO/nginx/zdagent"
cp -r "$REPO/examples/sample-app/." "$DEMO/app/"
cp "$(command -v busybox)" "$DEMO/app/busybox"
cat > "$DEMO/zdagent.toml" <<TOML
[app]
name = "demo"
state_dir = "$DEMO/state"

[source.build]
context = "$DEMO/app"
tag = "zdagent-demo"

[container]
port = 8080
stop_timeout = 3

[slots]
blue_port = 18001
green_port = 18002
drain_seconds = 10

[health]
path = "/cgi-bin/health"
interval = 0.5
passes = 2
startup_deadline = 30
expect_version = "body"

[nginx]
upstream_file = "$DEMO/nginx/zdagent/demo.upstream.conf"
test_command = ["nginx", "-p", "$DEMO/nginx", "-c", "$DEMO/nginx/nginx.conf", "-e", "$DEMO/nginx/error.log", "-t"]
reload_command = ["nginx", "-p", "$DEMO/nginx", "-c", "$DEMO/nginx/nginx.conf", "-e", "$DEMO/nginx/error.log", "-s", "reload"]
pid_file = "$DEMO/nginx/nginx.pid"
public_url = "http://127.0.0.1:$PORT/"
listen = "127.0.0.1:$PORT"
switch_mode = "$SWITCH_MODE"
TOML
cat > "$DEMO/nginx/nginx.conf" <<CONF
$LOAD_NJS
worker_processes 2;
pid $DEMO/nginx/nginx.pid;
error_log $DEMO/nginx/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $DEMO/nginx/tmp/body;
    proxy_temp_path $DEMO/nginx/tmp/proxy;
    fastcgi_temp_path $DEMO/nginx/tmp/fastcgi;
    uwsgi_temp_path $DEMO/nginx/tmp/uwsgi;
    scgi_temp_path $DEMO/nginx/tmp/scgi;
    include $DEMO/nginx/sites/*.conf;
}
CONF
export ZDAGENT_CONFIG="$DEMO/zdagent.toml"

step "zdagent config check"
zdagent config check
step "install the site block and the placeholder upstream, start Nginx"
zdagent nginx render --site > "$DEMO/nginx/sites/demo.conf"
zdagent nginx render --live none > "$DEMO/nginx/zdagent/demo.upstream.conf"
"${NGINX[@]}"

step "zdagent deploy v1"
zdagent deploy v1
curl -s "http://127.0.0.1:$PORT/cgi-bin/version"

step "zdagent deploy v2 while a request loop hits Nginx"
rm -f "$DEMO/stop"
python3 "$REPO/scripts/request_loop.py" "http://127.0.0.1:$PORT/cgi-bin/version" \
    --stop-file "$DEMO/stop" > "$DEMO/loop.txt" &
LOOP=$!
sleep 1
zdagent deploy v2
sleep 1
touch "$DEMO/stop"; wait "$LOOP"
cat "$DEMO/loop.txt"
curl -s "http://127.0.0.1:$PORT/cgi-bin/version"

step "zdagent status"
zdagent status
step "zdagent history"
zdagent history
step "zdagent rollback"
zdagent rollback
curl -s "http://127.0.0.1:$PORT/cgi-bin/version"

step "done: the demo keeps running. Try: ZDAGENT_CONFIG=$DEMO/zdagent.toml zdagent status"
grep -q "failed: 0 " "$DEMO/loop.txt" || { echo "demo: requests failed during the deploy" >&2; exit 1; }
