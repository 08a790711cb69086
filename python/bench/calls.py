#!/usr/bin/env python3
"""Loopback call benchmark: Python → Python handler, Python → Rust handler,
and Rust → Rust, side by side in one run, at concurrency 1 and 8.

Two nodes in this process (a host and a caller, both in tribe `bench`,
calls over loopback TCP through the tribe). The host serves an echo plugin
twice: as a Python handler (run on its handler pool) and as a Rust handler
(a bench-only helper of the native module). Python callers are threads
calling `Node.call`; the Rust → Rust row runs the same call loop in tokio
tasks inside the native module, on the same nodes. Prints a table and exits.

    python python/bench/calls.py [--calls 4000] [--payload 100] [--key]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
from typing import Callable, List, Tuple

import pytribe
from pytribe import _native


def percentile(sorted_lat: List[float], p: float) -> float:
    if not sorted_lat:
        return float("nan")
    i = min(len(sorted_lat) - 1, max(0, int(round(p / 100.0 * (len(sorted_lat) - 1)))))
    return sorted_lat[i]


def python_calls(call: Callable[[], bytes], calls: int, threads: int) -> Tuple[float, List[float]]:
    per = (calls + threads - 1) // threads
    lats: List[List[float]] = [[] for _ in range(threads)]
    start_gate = threading.Barrier(threads + 1)

    def worker(i: int) -> None:
        out = lats[i]
        start_gate.wait()
        for _ in range(per):
            t = time.perf_counter()
            call()
            out.append((time.perf_counter() - t) * 1e6)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - t0
    return elapsed, [x for part in lats for x in part]


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=4000, help="calls per row")
    p.add_argument("--payload", type=int, default=100, help="payload bytes")
    p.add_argument("--key", action="store_true", help="seal traffic with a key")
    args = p.parse_args(argv)

    key = pytribe.keygen() if args.key else None
    common = dict(profile="local", collect_facts=False, key=key)
    host = pytribe.Node("bench-host", handler_threads=8, **common)  # type: ignore[arg-type]
    caller = pytribe.Node("bench-caller", seeds=[host.addr], **common)  # type: ignore[arg-type]
    try:
        while caller.members_alive() < 2:
            time.sleep(0.05)
        host.create_tribe("bench")
        while caller.tribe("bench") is None:
            time.sleep(0.05)
        host.join("bench")
        caller.join("bench")
        host.serve("pyecho", "1", "processor", lambda payload, info: payload)
        _native._bench_serve_echo(host._native, "rsecho", "1", "processor")
        payload = b"x" * args.payload
        for plugin in ("pyecho", "rsecho"):
            deadline = time.monotonic() + 20
            while True:
                try:
                    caller.call("bench", plugin, payload, timeout=2.0)
                    break
                except pytribe.NoProviderError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        # Warm-up: connections, pools, caches.
        python_calls(lambda: caller.call("bench", "pyecho", payload), 500, 4)
        python_calls(lambda: caller.call("bench", "rsecho", payload), 500, 4)
        _native._bench_rust_calls(caller._native, "bench", "rsecho", 500, 4, args.payload)

        rows = []
        for conc in (1, 8):
            rust = _native._bench_rust_calls(caller._native, "bench", "rsecho", args.calls, conc, args.payload)
            py_rust = python_calls(lambda: caller.call("bench", "rsecho", payload), args.calls, conc)
            py_py = python_calls(lambda: caller.call("bench", "pyecho", payload), args.calls, conc)
            base_rate = len(rust[1]) / rust[0]
            base_p50 = statistics.median(rust[1])
            for label, (elapsed, lat) in (
                ("Rust -> Rust handler", rust),
                ("Python -> Rust handler", py_rust),
                ("Python -> Python handler", py_py),
            ):
                lat = sorted(lat)
                rate = len(lat) / elapsed
                p50 = percentile(lat, 50)
                rows.append(
                    (label, conc, rate, p50, percentile(lat, 99), rate / base_rate, p50 - base_p50)
                )
    finally:
        caller.abort()
        host.abort()

    print(
        f"pytribe {pytribe.__version__} call benchmark: loopback, {args.payload} B payload, "
        f"{'sealed' if key else 'plaintext'}, {args.calls} calls per row, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    print()
    print("| path | threads | calls/s | p50 µs | p99 µs | calls/s vs Rust→Rust | p50 added µs |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, conc, rate, p50, p99, ratio, added in rows:
        print(f"| {label} | {conc} | {rate:,.0f} | {p50:.1f} | {p99:.1f} | {ratio:.2f}× | {added:+.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
