// zdagent's reload-free switch (nginx.switch_mode = "njs"), for Nginx's njs module.
// Every request reads the app's small "active" file, which names the upstream group to use;
// zdagent switches by renaming a new file into place, so no reload ever happens and no
// keep-alive connection is closed by an exiting worker.
var fs = require('fs');

function pool(r) {
    try {
        return fs.readFileSync(r.variables.zdagent_active_file, 'utf8').trim();
    } catch (e) {
        r.error('zdagent: cannot read ' + r.variables.zdagent_active_file + ': ' + e);
        return r.variables.zdagent_fallback_pool;
    }
}

export default {pool};
