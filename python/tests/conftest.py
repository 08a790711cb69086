"""Shared helpers: real nodes on 127.0.0.1 (port 0, `local` profile)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Sequence

import pytest

import pytribe


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 20.0) -> None:
    """Polls `cond` every 50 ms until it holds; fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def start(name: str, seeds: List[str] = (), **kw) -> pytribe.Node:  # type: ignore[assignment]
    kw.setdefault("profile", "local")
    kw.setdefault("collect_facts", False)
    return pytribe.Node(name, seeds=seeds, **kw)


class Cluster:
    """Nodes started by a test, aborted at its end if still open."""

    def __init__(self) -> None:
        self.nodes: List[pytribe.Node] = []

    def start(self, name: str, seeds: List[str] = (), **kw) -> pytribe.Node:  # type: ignore[assignment]
        node = start(name, seeds, **kw)
        self.nodes.append(node)
        return node

    def close(self) -> None:
        for n in self.nodes:
            n.abort()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="session")
def tribe_bin() -> str:
    path = os.environ.get("TRIBE_BIN")
    if not path or not os.access(path, os.X_OK):
        pytest.skip("TRIBE_BIN does not name the tribe binary (scripts/test-python sets it)")
    return path


class Agent:
    """A `tribe agent` process on 127.0.0.1 (`local` profile), killed by `stop`."""

    def __init__(self, tribe_bin: str, logs: Path, name: str, extra: Sequence[str] = ()) -> None:
        self.name = name
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIBE_")}
        self.log_path = logs / f"{name}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [tribe_bin, "agent", "--name", name, "--bind", "127.0.0.1:0", "--admin", "127.0.0.1:0",
             "--profile", "local", "--log-level", "info", *extra],
            stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL, text=True, env=env,
        )
        line: List[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(30)
        fields: Dict[str, str] = dict(w.split("=", 1) for w in (line[0] if line else "").split() if "=" in w)
        if "gossip" not in fields:
            self.stop()
            raise AssertionError(f"agent {name}: no ready line {line}; log: {self.log_path.read_text()}")
        self.gossip = fields["gossip"]
        self.admin = fields["admin"]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._log.close()


def keygen_with(tribe_bin: str) -> str:
    return subprocess.run([tribe_bin, "keygen"], check=True, capture_output=True, text=True).stdout.strip()
