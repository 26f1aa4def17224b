"""Garbage-collection pauses of the daemon in its first minute, with and without gc.freeze (exporter/gc_freeze.py).

The fleet of bench/fleet.py (N databases, one 100-partition keyed table each, the default schedule), run by the
daemon's own code (Service.run_forever) in a fresh interpreter per run, alternating: the freezes as shipped against
the freezes replaced by nothing. Each collection is timed from gc.callbacks; the table gives, per run, the full
(generation 2) passes of the window: how many, median, longest and their sum; the longest younger pass; what one
full pass costs at the end of the window (gc.collect(), as a steady-state pass would); the objects the collector
tracked and had frozen at the end of the window (tracked: not frozen); and the garbage a thaw then lets a pass
free (cycles the freeze kept alive: 0 when it keeps none).
Run: .venv/bin/python -m bench.gc_pauses [--targets 200] [--window 60] [--rounds 2]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.fleet import build_fleet, config_text, fleet_settings
from bench.server import bench_server, machine

VARIANTS = {"no freeze (before)": False, "gc.freeze (now)": True}


def child(config: Path, window: float, frozen: bool) -> None:
    """One daemon for WINDOW seconds from its start; prints its collections as JSON."""
    pauses: list[tuple[int, float, float]] = []  # (generation, seconds since start, milliseconds)
    began: list[float] = []
    from exporter import daemon, gc_freeze  # timed from here: the imports are not the daemon's

    if not frozen:
        gc_freeze.freeze = lambda: gc.get_freeze_count()  # the shipped freezes become no-ops
    started = time.perf_counter()

    def timed(phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            began.append(now)
        elif began:
            pauses.append((info["generation"], now - started, (now - began.pop()) * 1000))

    gc.callbacks.append(timed)
    service = daemon.Service(config)
    counts: dict[str, float] = {}

    def end() -> None:
        # Counted before the stop, which thaws; SIGTERM ends run_forever as it ends the real daemon's.
        counts.update(tracked=len(gc.get_objects()), frozen=gc.get_freeze_count())
        # What a full pass costs from now on (out of the window: the pauses list stops at it).
        started_pass = time.perf_counter()
        gc.collect()
        counts["steady_ms"] = round((time.perf_counter() - started_pass) * 1000, 1)
        # Garbage only a thaw frees: cycles among frozen objects, or through them (none in the variant without).
        gc.unfreeze()
        counts["kept"] = gc.collect()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Timer(window, end).start()
    service.run_forever()
    gc.callbacks.remove(timed)
    print(json.dumps({"pauses": [p for p in pauses if p[1] <= window], **counts}))


def _row(label: str, run: dict[str, Any]) -> str:
    """One run's table row."""
    full = [ms for generation, _, ms in run["pauses"] if generation == 2]
    young = [ms for generation, _, ms in run["pauses"] if generation < 2]
    median = statistics.median(full) if full else 0.0
    return (
        f"| {label} | {len(full)} | {median:.1f} | {max(full, default=0.0):.1f} | {sum(full):.0f} |"
        f" {max(young, default=0.0):.1f} | {run['steady_ms']:.1f} | {run['tracked']:,} | {run['frozen']:,} |"
        f" {run['kept']:,} |"
    )


def _timeline(run: dict[str, Any]) -> str:
    """One run's full passes as `second: ms`."""
    return ", ".join(f"{at:.1f}: {ms:.0f}" for generation, at, ms in run["pauses"] if generation == 2)


def main() -> None:
    """Build the fleet, run each variant ROUNDS times alternating, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--window", type=float, default=60.0, help="seconds from each daemon's start")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "FROZEN"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), args.window, args.child[1] == "1")
        return
    with bench_server(settings=fleet_settings(args.targets)) as server, tempfile.TemporaryDirectory() as workdir:
        names = build_fleet(server.dsn, args.targets)
        config = Path(workdir) / "fleet.yaml"
        config.write_text(config_text(server.dsn, names, 0))
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        print(f"GC pauses, {args.targets} targets, first {args.window:.0f} s of the daemon, {when}, {machine()}\n")
        print(
            "| run | full passes | median ms | longest ms | sum ms | longest younger pass ms |"
            " a full pass at the end ms | tracked at the end | frozen | garbage freed by a thaw |"
            "\n|---|---|---|---|---|---|---|---|---|---|"
        )
        timelines: list[str] = []
        for round_number in range(args.rounds):
            for label, frozen in VARIANTS.items():
                with open("/proc/loadavg") as load:
                    loadavg = load.read().split()[0]
                command = [sys.executable, "-m", "bench.gc_pauses", "--window", str(args.window)]
                result = subprocess.run(
                    [*command, "--child", str(config), "1" if frozen else "0"],
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=args.window + 120,
                )
                run = json.loads(result.stdout.strip().splitlines()[-1])
                print(_row(f"{label}, round {round_number + 1}, load {loadavg}", run), flush=True)
                timelines.append(f"{label}, round {round_number + 1}: " + _timeline(run))
        print("\nFull passes, seconds after the start: milliseconds\n\n" + "\n".join(timelines))


if __name__ == "__main__":
    main()
