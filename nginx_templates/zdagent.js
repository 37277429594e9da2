// zdagent's reload-free switch (nginx.switch_mode = "njs"), for Nginx's njs module.
// Every request reads the app's small "active" file, which names the upstream group to use;
// zdagent switches by renaming a new file into place, so no reload ever happens and no
// keep-alive connection is closed by an exiting worker.
var fs = require('fs');

// --- canary split (zdagent deploy --canary) --------------------------------------------
// During a canary the active file is JSON instead of a pool name:
//   {"live": <pool>, "canary": <pool>, "percent": 5, "step": 1, "cookie": "zdagent_<app>_v"}
// Each request is given to the canary with `percent` % chance, chosen from $request_id so
// the pool and the sticky cookie of one request agree. With "cookie" set, a client keeps the
// version it was given for the rest of the step (the cookie names the step and the pool).
// zdagent's own verification (from 127.0.0.1 only) may ask for a pool: X-Zdagent-Slot.

function active(r) {
    var text = fs.readFileSync(r.variables.zdagent_active_file, 'utf8').trim();
    if (text.charAt(0) !== '{') {
        return {live: text};
    }
    return JSON.parse(text);
}

function choose(r, st) {
    if (!st.canary) {
        return st.live;
    }
    var forced = r.headersIn['X-Zdagent-Slot'];
    if (forced && r.remoteAddress === '127.0.0.1' && (forced === st.live || forced === st.canary)) {
        return forced;
    }
    if (st.cookie) {
        var got = r.variables['cookie_' + st.cookie];
        var want = st.step + '.';
        if (got === want + st.live || got === want + st.canary) {
            return got.slice(want.length);
        }
    }
    var roll = parseInt(r.variables.request_id.slice(0, 8), 16) % 100;
    return roll < st.percent ? st.canary : st.live;
}

function pool(r) {
    try {
        return choose(r, active(r));
    } catch (e) {
        r.error('zdagent: cannot read ' + r.variables.zdagent_active_file + ': ' + e);
        return r.variables.zdagent_fallback_pool;
    }
}

// The Set-Cookie value that pins a client to its pool for this step ("" when not sticky).
function cookie(r) {
    try {
        var st = active(r);
        if (!st.canary || !st.cookie) {
            return '';
        }
        var value = st.step + '.' + choose(r, st);
        if (r.variables['cookie_' + st.cookie] === value) {
            return '';
        }
        return st.cookie + '=' + value + '; Path=/; HttpOnly; SameSite=Lax';
    } catch (e) {
        return '';
    }
}

// --- maintenance mode (zdagent maintenance on|off) -------------------------------------
// The maintenance file exists only while it is on: {"page": <escaped HTML>, "retry_after": N}.
// zdagent's own checks of the health path from 127.0.0.1 pass through (switch verification,
// the watchdog), so deploys still work while the public sees the page.

function maintenanceState(r) {
    try {
        return JSON.parse(fs.readFileSync(r.variables.zdagent_maintenance_file, 'utf8'));
    } catch (e) {
        return null;
    }
}

// '' when this request passes, else the state as JSON text: the site block keeps it in
// $zdagent_maintenance_state for page(), so a request that saw maintenance on gets its page
// even when `maintenance off` removes the file in between.
function maintenance(r) {
    var st = maintenanceState(r);
    if (!st) {
        return '';
    }
    if (r.remoteAddress === '127.0.0.1' && r.uri === r.variables.zdagent_verify_path) {
        return '';
    }
    return JSON.stringify({page: st.page, retry_after: st.retry_after});
}

function page(r) {
    var st = null;
    try {
        st = JSON.parse(r.variables.zdagent_maintenance_state);
    } catch (e) {
        st = maintenanceState(r);
    }
    st = st || {page: 'Down for maintenance', retry_after: 60};
    r.headersOut['Content-Type'] = 'text/html; charset=utf-8';
    r.headersOut['Retry-After'] = String(st.retry_after);
    r.headersOut['Cache-Control'] = 'no-store';
    r.headersOut['X-Zdagent-Maintenance'] = 'on';
    r.return(503, st.page);
}

export default {pool, cookie, maintenance, page};
