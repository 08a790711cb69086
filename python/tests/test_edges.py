"""Edges found by review: a stop with a bad timeout, a handler unserved while
calls wait for it, host names, and many asyncio calls at once."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import List

import pytest

import pytribe
from conftest import Cluster, start, wait_for
from test_calls import pair, wait_endpoint


def pool_threads(name: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith(f"pytribe-handler-{name}-"))


def test_a_bad_close_timeout_stops_nothing() -> None:
    node = start("badclose", bind="127.0.0.1:0")
    node.serve("echo", "1", "processor", lambda payload, info: payload)  # starts the pool
    assert pool_threads("badclose") > 0
    for bad in (1e10, 10**400, float("nan"), -1):
        with pytest.raises(ValueError):
            node.close(timeout=bad)
        assert not node.closed
    assert node.close(timeout=5.0)
    wait_for("the handler pool to stop", lambda: pool_threads("badclose") == 0, 5.0)


def test_calls_queued_for_an_unserved_handler_move_on(cluster: Cluster) -> None:
    host, caller = pair(cluster, handler_threads=1)
    release = threading.Event()

    def slow(payload: bytes, info: pytribe.CallInfo) -> bytes:
        release.wait(5.0)
        return payload

    host.serve("slow", "1", "processor", slow)
    wait_endpoint(caller, "slow")
    outcomes: List[BaseException] = []

    def call() -> None:
        try:
            caller.call("svc", "slow", b"x", timeout=5.0)
        except BaseException as e:  # noqa: BLE001 - recorded for the assertion
            outcomes.append(e)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    # One call runs (one pool thread), two wait in the queue.
    time.sleep(0.5)
    host.unserve("slow", "1")
    release.set()
    for t in threads:
        t.join(10.0)
    # The running call may finish or not; the queued ones are refused as by
    # a stopping host, and with no other provider that is NoProviderError.
    assert len(outcomes) >= 2, outcomes
    assert all(isinstance(e, pytribe.NoProviderError) for e in outcomes), outcomes
    # Each names the host that turned it away, not only "nobody serves it".
    for e in outcomes:
        assert isinstance(e, pytribe.NoProviderError)
        assert (e.tribe, e.plugin, e.stopping) == ("svc", "slow", (host.name,)), e
        assert str(e).endswith(f"; {host.name} refused it as it stopped serving it"), e


def test_a_host_name_binds() -> None:
    node = start("byname", bind="localhost:0")
    try:
        assert node.addr.startswith("127.0.0.1:") or node.addr.startswith("[::1]:")
    finally:
        node.close()


def test_seed_names_are_looked_up_by_the_node(cluster: Cluster) -> None:
    first = cluster.start("seed-by-name-0")
    port = first.addr.rsplit(":", 1)[1]
    # One that never resolves does not fail the start; localhost is joined.
    second = cluster.start("seed-by-name-1", seeds=["no-such-seed.invalid:7946", f"localhost:{port}"])
    wait_for("the join through localhost", lambda: second.members_alive() == 2)
    with pytest.raises(ValueError):
        start("seed-bad", seeds=["localhost"])


def test_many_async_calls_start_no_thread_each(cluster: Cluster) -> None:
    host, caller = pair(cluster, handler_threads=4)
    host.serve("echo", "1", "processor", lambda payload, info: payload)
    wait_endpoint(caller, "echo")

    def os_threads() -> int:
        return len(os.listdir("/proc/self/task"))

    async def burst() -> int:
        calls = [caller.call_async("svc", "echo", b"%d" % i, timeout=10.0) for i in range(200)]
        peak = 0
        pending = [asyncio.ensure_future(c) for c in calls]
        while not all(p.done() for p in pending):
            peak = max(peak, os_threads())
            await asyncio.sleep(0.001)
        replies = [p.result() for p in pending]
        assert replies == [b"%d" % i for i in range(200)]
        return peak

    before = os_threads()
    peak = asyncio.run(burst())
    # One completer thread hands every outcome over, not a thread per call.
    assert peak - before < 20, (before, peak)


def test_close_keeps_its_timeout_and_abort_cuts_a_close_short(cluster: Cluster) -> None:
    host = cluster.start("host")
    caller = cluster.start("caller", seeds=[host.addr])
    host.create_tribe("svc")
    host.join("svc")
    block = threading.Event()
    started = threading.Event()

    def stuck(payload: bytes, info: pytribe.CallInfo) -> bytes:
        started.set()
        block.wait(30)
        return b"late"

    host.serve("stuck", "1", "processor", stuck)
    wait_for("the caller to see stuck", lambda: any(
        e.name == "stuck" for m in caller.members() for e in m.endpoints))
    outcome: List[BaseException] = []

    def call() -> None:
        try:
            caller.call("svc", "stuck", b"x", timeout=30)
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=call)
    t.start()
    try:
        assert started.wait(10)
        began = time.monotonic()
        assert host.close(timeout=0.1) is False  # the handler still runs
        assert time.monotonic() - began < 0.8
        began = time.monotonic()
        assert host.abort(timeout=10) is True
        # At once: the pool thread still in the handler is not waited for.
        assert time.monotonic() - began < 0.6
        t.join(10)
        assert not t.is_alive()
        assert outcome and isinstance(outcome[0], pytribe.TribeError), outcome
    finally:
        block.set()
        t.join(10)


def test_close_after_calls_were_served_does_not_wait_for_idle_callers(cluster: Cluster) -> None:
    host = cluster.start("host")
    caller = cluster.start("caller", seeds=[host.addr])
    host.create_tribe("svc")
    host.join("svc")
    host.serve("echo", "1", "processor", lambda payload, info: payload)
    wait_for("the caller to see echo", lambda: any(
        e.name == "echo" for m in caller.members() for e in m.endpoints))
    assert caller.call("svc", "echo", b"x", timeout=10) == b"x"
    # The caller keeps its stream open; nothing is left to send.
    began = time.monotonic()
    assert host.close() is True
    assert time.monotonic() - began < 1.5


def test_a_handler_that_closes_its_own_node_in_a_thread_is_answered(cluster: Cluster) -> None:
    host = cluster.start("host")
    caller = cluster.start("caller", seeds=[host.addr])
    host.create_tribe("svc")
    host.join("svc")

    def bye(payload: bytes, info: pytribe.CallInfo) -> bytes:
        threading.Thread(target=host.close).start()
        return b"bye"

    host.serve("bye", "1", "processor", bye)
    wait_for("the caller to see bye", lambda: any(
        e.name == "bye" for m in caller.members() for e in m.endpoints))
    began = time.monotonic()
    assert caller.call("svc", "bye", b"x", timeout=10) == b"bye"
    # Not held up by the close's wait for running handlers (2 s).
    assert time.monotonic() - began < 1.5
    wait_for("the host to close", lambda: host.closed)
