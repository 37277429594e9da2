"""Send GETs (Connection: close) to a URL until a stop file appears or time runs out.

Prints one line at the end: total requests, failures, and how many each version answered.
Bounded: at most --seconds and --max-requests. Used by scripts/demo.sh.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import httpx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("url")
    ap.add_argument("--stop-file", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--max-requests", type=int, default=200_000)
    args = ap.parse_args()
    versions: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    total = 0
    deadline = time.monotonic() + args.seconds
    with httpx.Client(headers={"Connection": "close"}, timeout=10) as client:
        while (not args.stop_file.exists() and time.monotonic() < deadline
               and total < args.max_requests):
            total += 1
            try:
                r = client.get(args.url)
                if r.status_code == 200:
                    versions[r.text.split()[0]] += 1
                else:
                    failures[f"HTTP {r.status_code}"] += 1
            except httpx.HTTPError as e:
                failures[type(e).__name__] += 1
    served = ", ".join(f"{v}: {n}" for v, n in sorted(versions.items()))
    print(f"requests: {total}, failed: {sum(failures.values())} {dict(failures) or ''}"
          f"(served {served})")


if __name__ == "__main__":
    main()
