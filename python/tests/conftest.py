"""Shared helpers: real nodes on 127.0.0.1 (port 0, `local` profile)."""

from __future__ import annotations

import os
import time
from typing import Callable, Iterator, List

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
