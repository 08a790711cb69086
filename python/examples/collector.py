#!/usr/bin/env python3
"""An existing Python collector that joins a tribe.

Every second it reads /proc/loadavg and /proc/meminfo (what it always did)
and publishes the batch through a remote call to a member of a tribe that
serves a publisher (by default `file` in tribe `storage`, the built-in file
publisher of `tribe agent --publish-file`). The node joins tribes by policy
from its facts (the host's collected facts plus `--fact` ones) and prints
what its tribes ask of it (plugin loads, tasks).

Against `tribe demo --keep` (see the README):

    eval "$(sed -n 's/^join //p' /tmp/demo.log)"   # the demo's `join` line
    python python/examples/collector.py --seed "$seed" --key-file "$key_file" \\
        --fact os_dist=ubuntu

Stop it with Ctrl-C: it leaves the tribe gracefully.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import sys
import threading
import time
from typing import Any, Dict, List

import pytribe


def read_loadavg(path: str = "/proc/loadavg") -> Dict[str, float]:
    with open(path) as f:
        one, five, fifteen = f.read().split()[:3]
    return {"load/1min": float(one), "load/5min": float(five), "load/15min": float(fifteen)}


def read_meminfo(path: str = "/proc/meminfo") -> Dict[str, float]:
    wanted = {"MemTotal": "mem/total_kb", "MemFree": "mem/free_kb", "MemAvailable": "mem/available_kb"}
    out: Dict[str, float] = {}
    with open(path) as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in wanted:
                out[wanted[key]] = float(rest.split()[0])
    return out


def collect(host: str) -> List[Dict[str, Any]]:
    """One batch in the task manifest's metric schema."""
    now = int(time.time() * 1000)
    values = {**read_loadavg(), **read_meminfo()}
    return [
        {"name": name, "value": value, "tags": {"plugin": "pycollector", "source": host}, "timestamp_ms": now}
        for name, value in sorted(values.items())
    ]


def read_key(path: str) -> str:
    """A base64 key file (`tribe keygen > FILE`) or an agent's keyring.json
    (its primary key: the current one after a rotation)."""
    with open(path) as f:
        text = f.read().strip()
    if text.startswith("{"):
        return str(json.loads(text)["primary"])
    return text


def watch(node: pytribe.Node, stop: threading.Event) -> None:
    """Prints what the node's tribes ask of it."""
    events = node.events(timeout=0.5)
    while not stop.is_set():
        for event in events:
            if isinstance(event, (pytribe.TribeJoined, pytribe.TribeLeft, pytribe.PluginLoad, pytribe.TaskRun)):
                print(f"[{node.name}] {event}", flush=True)


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default=f"pycollector-{socket.gethostname()}")
    p.add_argument("--bind", default="127.0.0.1:0")
    p.add_argument("--seed", action="append", default=[], help="HOST:PORT of a member (repeatable)")
    p.add_argument("--key", help="base64 key of the tribe")
    p.add_argument("--key-file", help="file with the key, or an agent's keyring.json")
    p.add_argument("--fact", action="append", default=[], help="KEY=VALUE (repeatable)")
    p.add_argument("--profile", default="local", choices=["lan", "wan", "local"])
    p.add_argument("--tribe", default="storage", help="tribe whose members publish")
    p.add_argument("--publisher", default="file")
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--count", type=int, default=0, help="batches to publish (0: until Ctrl-C)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    if any("=" not in f for f in args.fact):
        p.error("--fact takes KEY=VALUE")
    facts = dict(f.split("=", 1) for f in args.fact)
    stop = threading.Event()
    # A mistake in the setup is one line, not a traceback.
    try:
        key = args.key or (read_key(args.key_file) if args.key_file else None)
        node = pytribe.Node(args.name, bind=args.bind, seeds=args.seed, facts=facts, key=key, profile=args.profile)
    except (OSError, ValueError, KeyError, pytribe.TribeError) as e:
        print(f"collector: {e}", file=sys.stderr)
        return 2
    with node:
        deadline = time.monotonic() + 15
        while node.tribe(args.tribe) is None and time.monotonic() < deadline:
            time.sleep(0.1)  # the first sync with a seed brings every tribe
        print(f"[{node.name}] up at {node.addr}; {node.members_alive()} members alive", flush=True)
        if args.seed and node.members_alive() < 2:
            print(f"[{node.name}] no seed answered: check --seed (a gossip port, not an admin port) "
                  "and the key (the tribe's current one; none for a plaintext tribe)", file=sys.stderr, flush=True)
        watcher = threading.Thread(target=watch, args=(node, stop), daemon=True)
        watcher.start()
        published = 0
        try:
            while args.count == 0 or published < args.count:
                batch = collect(node.name)
                payload = json.dumps({"config": {}, "metrics": batch}).encode()
                try:
                    reply = node.call(args.tribe, args.publisher, payload, kind="publisher", timeout=5.0)
                    published += 1
                    print(f"[{node.name}] published {len(batch)} metrics through {args.tribe}: {reply.decode()}", flush=True)
                except (pytribe.NoProviderError, pytribe.UnknownTribeError):
                    print(f"[{node.name}] no member of {args.tribe} serves {args.publisher} yet", flush=True)
                except pytribe.TribeError as e:
                    print(f"[{node.name}] publish failed: {e!r}", flush=True)
                time.sleep(args.interval)
        except KeyboardInterrupt:
            print(f"[{node.name}] leaving", flush=True)
        finally:
            stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
