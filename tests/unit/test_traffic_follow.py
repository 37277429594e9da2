"""The access-log follower: new lines only, through rename and truncation, bad lines skipped."""

from __future__ import annotations

import json
import os

from zdagent.traffic.follow import START_TAIL, LogFollower, feed, parse
from zdagent.traffic.windows import TrafficWindows

T0 = 1_700_000_000.0
PORTS = {18001: "blue", 18002: "green"}


def line(status: int = 200, port: int = 18001, t: float = T0, ut: str = "0.010") -> str:
    return json.dumps({"t": t, "s": status, "rt": 0.02, "ut": ut,
                       "ua": f"127.0.0.1:{port}"}) + "\n"


def append(path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def test_reads_only_complete_new_lines(tmp_path):
    log = tmp_path / "a.log"
    log.write_text(line())
    f = LogFollower(log)
    assert len(f.read()) == 1
    assert f.read() == []
    append(log, line()[:10])  # Nginx mid-write: half a line waits for its end
    assert f.read() == []
    append(log, line()[10:] + line())
    assert len(f.read()) == 2
    f.close()


def test_survives_rename_and_reopen(tmp_path):
    log = tmp_path / "a.log"
    log.write_text(line())
    f = LogFollower(log)
    assert len(f.read()) == 1
    append(log, line())  # written just before the rotation: read from the old file
    os.rename(log, tmp_path / "a.log.1")
    assert len(f.read()) == 1  # the new file is not there yet: keep the old one
    append(tmp_path / "a.log.1", line())  # Nginx writes to the old file until reopen
    log.write_text(line() + line() + line())
    assert len(f.read()) == 4  # the old file's rest, then the new one from its start
    assert f.rotations == 1
    append(log, line())
    assert len(f.read()) == 1
    f.close()


def test_survives_truncation(tmp_path):
    log = tmp_path / "a.log"
    log.write_text(line() * 5)
    f = LogFollower(log)
    assert len(f.read()) == 5
    log.write_text(line())  # copytruncate: same inode, shorter
    assert len(f.read()) == 1 and f.rotations == 1
    f.close()


def test_missing_file_is_retried(tmp_path):
    log = tmp_path / "a.log"
    f = LogFollower(log)
    assert f.read() == [] and f.fd is None
    log.write_text(line())
    assert len(f.read()) == 1
    f.close()


def test_starts_near_the_end_of_a_big_file(tmp_path):
    log = tmp_path / "a.log"
    one = line()
    log.write_text(one * (2 * START_TAIL // len(one)))
    f = LogFollower(log)
    lines = f.read()
    assert all(json.loads(x) for x in lines)  # the half line at the cut is dropped
    assert len(lines) < START_TAIL // len(one) + 1
    f.close()


def test_parse_takes_the_last_try_and_the_upstream_time():
    rec = json.dumps({"t": T0, "s": 502, "rt": 2.5, "ut": "2.001, 0.004",
                      "ua": "127.0.0.1:18001, 127.0.0.1:18002"}).encode()
    assert parse(rec) == (T0, 502, 0.004, 18002, False, [(18001, 2.001)])
    rec = json.dumps({"t": T0, "s": 499, "rt": 0.3, "ut": "-", "ua": "-"}).encode()
    assert parse(rec) == (T0, 499, 0.3, None, False, [])


def test_feed_counts_bad_lines_and_foreign_upstreams():
    w = TrafficWindows()
    lines = [line(500).encode().strip(), line(200, 18002).encode().strip(), b"not json",
             b'{"t": 1}', b"[1,2]", line(200, 9999).encode().strip(), b""]
    feed(w, lines, PORTS)
    assert w.bad_lines == 3 and w.unrouted == 1 and w.lines == 6
    assert w.figures("blue", T0).errors == 1
    assert w.figures("green", T0).requests == 1


def test_feed_skips_non_finite_numbers_without_losing_the_batch():
    """Python's json reads NaN, Infinity and 1e400: such a line is one bad line, not an
    exception that loses every other line read in the same call."""
    w = TrafficWindows()
    odd = [b'{"t":1e400,"s":200,"rt":0.1,"ut":"0.1","ua":"127.0.0.1:18001"}',
           b'{"t":NaN,"s":200,"rt":0.1,"ut":"0.1","ua":"127.0.0.1:18001"}',
           b'{"t":1700000000,"s":1e400,"rt":0.1,"ut":"0.1","ua":"127.0.0.1:18001"}',
           b'{"t":1700000000,"s":200,"rt":NaN,"ut":"-","ua":"127.0.0.1:18001"}',
           b'{"t":1700000000,"s":200,"rt":0.1,"ut":"Infinity","ua":"127.0.0.1:18001"}',
           b'{"t":1700000000,"s":200,"rt":-1,"ut":"-","ua":"127.0.0.1:18001"}',
           b'{"t":1700000000,"s":200,"rt":0.1,"ut":"0.1","ua":"127.0.0.1:99999999999"}']
    feed(w, [*odd, line(500).encode().strip()], PORTS)
    assert w.bad_lines == 6 and w.unrouted == 1
    f = w.figures("blue", T0)
    assert (f.requests, f.errors) == (1, 1)


def test_feed_leaves_out_zdagents_own_requests():
    """The site's map marks a User-Agent starting "zdagent-" (the watchdog's probe through
    Nginx every interval, switch checks) with "z":"1": no slot's traffic, counted apart."""
    w = TrafficWindows()
    own = json.dumps({"t": T0, "s": 200, "rt": 0.001, "ut": "0.001", "ua": "127.0.0.1:18001",
                      "z": "1"}).encode()
    theirs = json.dumps({"t": T0, "s": 500, "rt": 0.02, "ut": "0.010", "ua": "127.0.0.1:18001",
                         "z": "0"}).encode()
    feed(w, [own, own, theirs, line(500).encode().strip()], PORTS)  # no "z": an older site
    assert w.own == 2 and w.to_dict(T0)["own_requests"] == 2
    f = w.figures("blue", T0)
    assert (f.requests, f.errors) == (2, 2)


def test_rotation_with_more_than_one_read_left_loses_nothing(tmp_path):
    """A busy site wrote more than two reads' worth (MAX_READ each) between two calls and the
    log was rotated meanwhile: the old file's rest was cut after one more read."""
    from zdagent.traffic.follow import MAX_READ

    log = tmp_path / "a.log"
    log.write_text("")
    f = LogFollower(log)
    assert f.read() == []
    one = line()
    n = 3 * MAX_READ // len(one) + 10
    append(log, one * n)
    os.rename(log, tmp_path / "a.log.1")
    log.write_text(line(500))
    got: list[bytes] = []
    for _ in range(10):
        got += f.read()
    assert len(got) == n + 1 and json.loads(got[-1])["s"] == 500
    f.close()


def test_a_failed_try_counts_against_the_slot_that_failed():
    """With the standby as Nginx's backup, a live slot that times out or refuses is retried
    on the standby: "ua":"live, standby". Counting only the last try made the new release's
    failures look like the old version's successes (a release whose pages hang passed its
    analysis); each failed try now counts as a 5xx of its slot."""
    w = TrafficWindows()
    rescued = json.dumps({"t": T0, "s": 200, "rt": 2.01, "ut": "2.000, 0.004",
                          "ua": "127.0.0.1:18002, 127.0.0.1:18001", "z": "0"}).encode()
    both = json.dumps({"t": T0, "s": 502, "rt": 0.01, "ut": "0.000, 0.000",
                       "ua": "127.0.0.1:18002, 127.0.0.1:18001", "z": "0"}).encode()
    # " : " separates upstream groups (an internal redirect), not failed tries
    redirect = json.dumps({"t": T0, "s": 200, "rt": 0.02, "ut": "0.010 : 0.005",
                           "ua": "127.0.0.1:18002 : 127.0.0.1:18001", "z": "0"}).encode()
    # a kept-alive connection the app had just closed: Nginx tries the same server again
    again = json.dumps({"t": T0, "s": 200, "rt": 0.02, "ut": "0.000, 0.010",
                        "ua": "127.0.0.1:18001, 127.0.0.1:18001", "z": "0"}).encode()
    feed(w, [rescued, both, redirect, again], PORTS)
    green, blue = w.figures("green", T0), w.figures("blue", T0)
    assert (green.requests, green.errors) == (2, 2) and green.p99 >= 2.0
    assert (blue.requests, blue.errors) == (4, 1)
