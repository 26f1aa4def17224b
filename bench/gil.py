"""Scrape latency of a cached body next to busy Python threads, at interpreter switch intervals, side by side.

The exporter's HTTP threads only send cached bytes, but each request takes the interpreter lock several times;
while a check computes (or encodes its result for /metrics), each take waits up to sys.getswitchinterval().
This serves a 700 KB body from a thread server in this process, keeps two threads busy, and scrapes it from a
child process, alternating the intervals round by round so that the machine's load hits both alike.
Run: .venv/bin/python -m bench.gil [--rounds 4] [--scrapes 200]
"""

from __future__ import annotations

import argparse
import http.server
import json
import subprocess
import sys
import threading

from bench.stats import Summary, summarize

BODY = b"x" * 700_000  # about one fleet's gzip body at 200 targets x 100 partitions
INTERVALS = (0.005, 0.001)  # Python's default, and the exporter's

_CLIENT = """
import http.client, json, sys, time
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
took = []
for _ in range(int(sys.argv[2])):
    started = time.perf_counter()
    conn.request("GET", "/")
    conn.getresponse().read()
    took.append(time.perf_counter() - started)
    time.sleep(0.01)
print(json.dumps(took))
"""


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves BODY on a kept-alive connection, as the exporter does."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        """The cached body."""
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


def _burn(stop: threading.Event) -> None:
    """Pure-Python work, as encoding a fragment or assembling a body is."""
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def scrape(port: int, scrapes: int) -> list[float]:
    """Seconds per scrape, from a child process (its own interpreter lock)."""
    out = subprocess.run(
        [sys.executable, "-c", _CLIENT, str(port), str(scrapes)], capture_output=True, text=True, check=True
    )
    return [float(value) for value in json.loads(out.stdout)]


def main() -> None:
    """Alternate the intervals for some rounds; print p50 and p99 per interval, medians with min/max, and ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--intervals", default=",".join(map(str, INTERVALS)), help="seconds, the first is the base")
    args = parser.parse_args()
    intervals = tuple(float(value) for value in args.intervals.split(","))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop = threading.Event()
    for _ in range(2):
        threading.Thread(target=_burn, args=(stop,), daemon=True).start()
    found: dict[float, list[Summary]] = {interval: [] for interval in intervals}
    try:
        for _ in range(args.rounds):
            for interval in intervals:
                sys.setswitchinterval(interval)
                found[interval].append(summarize(scrape(server.server_address[1], args.scrapes)))
    finally:
        stop.set()
        server.shutdown()
    base = intervals[0]
    print(f"| switch interval | p50 ms, median (min-max) of {args.rounds} rounds | p99 ms | p50 ratio | p99 ratio |")
    print("|---|---|---|---|---|")
    for interval, rounds in found.items():
        p50 = summarize([r.median / 1000 for r in rounds])
        p99 = summarize([r.p99 / 1000 for r in rounds])
        base50 = summarize([r.median / 1000 for r in found[base]]).median
        base99 = summarize([r.p99 / 1000 for r in found[base]]).median
        ratios = f"{p50.median / base50:.2f}x | {p99.median / base99:.2f}x"
        print(
            f"| {interval * 1000:g} ms | {p50.median:.1f} ({p50.low:.1f}-{p50.high:.1f}) "
            f"| {p99.median:.1f} ({p99.low:.1f}-{p99.high:.1f}) | {ratios} |"
        )


if __name__ == "__main__":
    main()
