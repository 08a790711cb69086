"""Python handlers served on one node, called through a tribe from another."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Callable, List, Tuple

import pytest

import pytribe
from conftest import Cluster, wait_for


def pair(cluster: Cluster, **host_kw) -> Tuple[pytribe.Node, pytribe.Node]:
    """A host and a caller, both in tribe `svc` (the caller by hand)."""
    host = cluster.start("host", **host_kw)
    caller = cluster.start("caller", seeds=[host.addr])
    wait_for("two members", lambda: host.members_alive() == 2 and caller.members_alive() == 2)
    host.create_tribe("svc")
    wait_for("the tribe on the caller", lambda: caller.tribe("svc") is not None)
    host.join("svc")
    caller.join("svc")
    return host, caller


def wait_endpoint(node: pytribe.Node, plugin: str, host: str = "host") -> None:
    def seen() -> bool:
        t = node.tribe("svc")
        return (
            t is not None
            and host in t.members
            and node.name in t.members
            and any(e.name == plugin for m in node.members() if m.name == host for e in m.endpoints)
        )

    wait_for(f"endpoint {plugin}", seen)


def test_sync_and_async_calls_and_1000_calls_from_8_threads(cluster: Cluster) -> None:
    host, caller = pair(cluster, handler_threads=4)
    seen: List[pytribe.CallInfo] = []

    def upper(payload: bytes, info: pytribe.CallInfo) -> bytes:
        if payload == b"info":
            seen.append(info)
        return payload.upper()

    host.serve("upper", "1", "processor", upper)
    host.serve("views", "1", "processor", lambda p, i: memoryview(bytearray(p) + b"!")[1:])
    host.serve("arrays", "1", "processor", lambda p, i: bytearray(p * 2))
    wait_endpoint(caller, "upper")
    wait_endpoint(caller, "arrays")
    assert caller.call("svc", "views", b"abc") == b"bc!"
    assert caller.call("svc", "arrays", b"ab") == b"abab"
    assert caller.call("svc", "upper", b"hello", kind="processor") == b"HELLO"
    assert caller.call("svc", "upper", bytearray(b"ab"), version="1") == b"AB"
    assert caller.call("svc", "upper", memoryview(b"xyz")[1:]) == b"YZ"
    before = time.monotonic()
    caller.call("svc", "upper", b"info", timeout=5.0)
    info = seen[0]
    assert (info.caller, info.tribe, info.plugin, info.version) == ("caller", "svc", "upper", "1")
    assert before < info.deadline <= time.monotonic() + 5.0
    assert "caller" in repr(info)

    async def some_async() -> List[bytes]:
        return list(
            await asyncio.gather(
                *(caller.call_async("svc", "upper", f"a{i}".encode(), kind="processor") for i in range(20))
            )
        )

    assert asyncio.run(some_async()) == [f"A{i}".encode() for i in range(20)]

    errors: List[BaseException] = []
    counts = [0] * 8

    def worker(t: int) -> None:
        try:
            for i in range(125):
                msg = f"t{t}-call{i}-payload".encode()
                assert caller.call("svc", "upper", msg, timeout=10.0) == msg.upper()
                counts[t] += 1
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sum(counts) == 1000
    assert host.rpc_stats()["served"] >= 1000


def test_handlers_run_in_parallel_on_the_pool_and_never_on_a_runtime_thread(cluster: Cluster) -> None:
    host, caller = pair(cluster, handler_threads=4)
    lock = threading.Lock()
    running = [0, 0]  # now, most at once
    names: List[str] = []
    # Set once two handlers run at once; each waits for it (8 s at most), so
    # that the overlap does not depend on a second call coming within 0.3 s.
    overlap = threading.Event()

    def slow(payload: bytes, info: pytribe.CallInfo) -> bytes:
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
            names.append(threading.current_thread().name)
            if running[0] >= 2:
                overlap.set()
        overlap.wait(8.0)  # releases the GIL
        time.sleep(0.3)  # releases the GIL
        with lock:
            running[0] -= 1
        return b"ok"

    host.serve("slow", "1", "processor", slow)
    wait_endpoint(caller, "slow")
    threads = [threading.Thread(target=caller.call, args=("svc", "slow", b"x"), kwargs={"timeout": 10.0}) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert running[1] >= 2, "handlers that release the GIL run in parallel"
    assert running[1] <= 4, "the pool bounds them"
    assert all(n.startswith("pytribe-handler-host-") for n in names), names


def test_call_errors_raise_the_documented_exceptions(cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    host, caller = pair(cluster, max_payload=64 * 1024)

    def fails(payload: bytes, info: pytribe.CallInfo) -> bytes:
        if payload == b"explicit":
            raise pytribe.HandlerError("no_disk", "disk full")
        if payload == b"surrogate":
            # Text Python can hold but UTF-8 cannot (a file name's bytes).
            raise pytribe.HandlerError("bad_\udcff", "bad name \udcff here")
        if payload == b"type":
            return "not bytes"  # type: ignore[return-value]
        raise ValueError(f"bad payload {payload!r}")

    release = threading.Event()

    def stuck(payload: bytes, info: pytribe.CallInfo) -> bytes:
        release.wait(10)
        return b"late"

    host.serve("fails", "1", "processor", fails)
    host.serve("stuck", "1", "processor", stuck)
    wait_endpoint(caller, "fails")
    wait_endpoint(caller, "stuck")

    with caplog.at_level("ERROR", logger="pytribe"):
        with pytest.raises(pytribe.RemoteError) as e:
            caller.call("svc", "fails", b"x")
        assert e.value.code == "ValueError" and e.value.message == "bad payload b'x'"
        wait_for("the failure logged on the host", lambda: "bad payload" in caplog.text, 5)
        failure = next(r for r in caplog.records if "bad payload" in r.getMessage())
        assert failure.tribe_node == host.name  # type: ignore[attr-defined]
        assert failure.exc_info is not None, "an unexpected exception's traceback"
    with caplog.at_level("DEBUG", logger="pytribe"):
        with pytest.raises(pytribe.RemoteError) as e:
            caller.call("svc", "fails", b"explicit")
        assert (e.value.code, e.value.message) == ("no_disk", "disk full")
        # An answer the handler chose: at debug, not as an error, with its
        # traceback (for a `raise HandlerError(...) from e`).
        wait_for("the chosen failure logged on the host", lambda: "disk full" in caplog.text, 5)
        chosen = next(r for r in caplog.records if "disk full" in r.getMessage())
        assert chosen.levelname == "DEBUG" and chosen.exc_info is not None, chosen
    with pytest.raises(pytribe.RemoteError) as e:
        caller.call("svc", "fails", b"surrogate")
    # Only what UTF-8 cannot hold is replaced, not the whole text lost.
    assert e.value.code.startswith("bad_") and e.value.message.startswith("bad name ")
    assert e.value.message.endswith(" here"), e.value.message
    with pytest.raises(pytribe.RemoteError) as e:
        caller.call("svc", "fails", b"type")
    assert e.value.code == "TypeError" and "bytes" in e.value.message

    with pytest.raises(pytribe.NoProviderError) as np:
        caller.call("svc", "missing", b"x")
    assert np.value.code == "no_provider"
    with pytest.raises(pytribe.NoProviderError):
        caller.call("svc", "fails", b"x", version="9")
    with pytest.raises(pytribe.NoProviderError):
        caller.call("svc", "fails", b"x", kind="publisher")

    t0 = time.monotonic()
    with pytest.raises(pytribe.CallTimeoutError) as te:
        caller.call("svc", "stuck", b"x", timeout=0.3)
    assert isinstance(te.value, TimeoutError) and te.value.code == "timeout"
    assert time.monotonic() - t0 < 5
    release.set()
    # A deadline already passed (what info.remaining() gives at the end of a
    # budget) is a timeout too, not a bad argument.
    with pytest.raises(pytribe.CallTimeoutError):
        caller.call("svc", "stuck", b"x", timeout=0)
    with pytest.raises(pytribe.CallTimeoutError):
        asyncio.run(caller.call_async("svc", "stuck", b"x", timeout=0))

    with pytest.raises(pytribe.TooLargeError) as tl:
        caller.call("svc", "fails", b"x" * (128 * 1024))
    # The host refuses it (its limit is 64 KiB); the size is the payload's.
    assert tl.value.code == "too_large" and tl.value.size == 128 * 1024

    # A reply over the host's limit is the same error, with its sizes.
    host.serve("grow", "1", "processor", lambda payload, info: payload * 2)
    wait_endpoint(caller, "grow")
    with caplog.at_level("ERROR", logger="pytribe"):
        with pytest.raises(pytribe.TooLargeError) as tl:
            caller.call("svc", "grow", b"x" * (40 * 1024))
        # The handler's side learns it too: the reply was not sent.
        wait_for("the refused reply logged on the host", lambda: "over the limit of 65536" in caplog.text, 5)
    assert (tl.value.size, tl.value.limit) == (80 * 1024, 64 * 1024)

    # A handler's own "too_large" is the same error, without sizes it never said.
    def own_too_large(payload: bytes, info: pytribe.CallInfo) -> bytes:
        raise pytribe.HandlerError("too_large", "this input is too big for it")

    host.serve("own_too_large", "1", "processor", own_too_large)
    wait_endpoint(caller, "own_too_large")
    with pytest.raises(pytribe.TooLargeError) as tl:
        caller.call("svc", "own_too_large", b"x")
    assert (tl.value.size, tl.value.limit) == (None, None)

    async def timeout_async() -> None:
        release.clear()
        with pytest.raises(pytribe.CallTimeoutError):
            await caller.call_async("svc", "stuck", b"x", timeout=0.2)
        release.set()

    asyncio.run(timeout_async())

    caller.close()
    with pytest.raises(pytribe.ShutdownError):
        caller.call("svc", "fails", b"x")


def test_cancelling_an_async_call_abandons_it(cluster: Cluster) -> None:
    host, caller = pair(cluster)
    started = threading.Event()
    release = threading.Event()

    def stuck(payload: bytes, info: pytribe.CallInfo) -> bytes:
        started.set()
        release.wait(10)
        return b"late"

    host.serve("stuck", "1", "processor", stuck)
    wait_endpoint(caller, "stuck")

    async def main() -> None:
        task = asyncio.ensure_future(caller.call_async("svc", "stuck", b"x", timeout=30.0))
        while not started.is_set():
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The loop goes on; a later call works.
        release.set()
        assert await caller.call_async("svc", "stuck", b"y", timeout=5.0) == b"late"

    asyncio.run(main())


def test_a_call_from_a_closed_host_reports_shutdown_or_no_provider(cluster: Cluster) -> None:
    host, caller = pair(cluster)
    host.serve("echo", "1", "processor", lambda p, i: p)
    wait_endpoint(caller, "echo")
    assert caller.call("svc", "echo", b"1") == b"1"
    host.close()
    wait_for("the host gone", lambda: all(m.state == "left" for m in caller.members() if m.name == "host"))
    with pytest.raises(pytribe.NoProviderError):
        caller.call("svc", "echo", b"2")


def test_calls_to_its_own_handlers_as_a_node_closes_end_in_shutdown(cluster: Cluster) -> None:
    # Calls still queued for the pool as the node closes are refused as by
    # a stopping node, after the node refuses new calls: this node's own
    # calls among them end ShutdownError, never NoProviderError naming it.
    seen: List[str] = []
    lock = threading.Lock()
    for run in range(10):
        node = cluster.start(f"selfclose{run}")
        node.create_tribe("s")
        node.join("s")
        node.serve("echo", "1", "processor", lambda p, i: (time.sleep(0.01 * (len(seen) % 3)), p)[1])
        wait_for("its own endpoint", lambda: node.tribe("s") is not None and len(node.tribe("s").members) == 1)

        def caller(node: pytribe.Node = node) -> None:
            while True:
                try:
                    node.call("s", "echo", b"x", timeout=5.0)
                    outcome = "ok"
                except pytribe.TribeError as e:
                    outcome = type(e).__name__
                with lock:
                    seen.append(outcome)
                if outcome == "ShutdownError":
                    return

        threads = [threading.Thread(target=caller) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        node.close()
        for t in threads:
            t.join(30)
    assert set(seen) == {"ok", "ShutdownError"}, [o for o in seen if o != "ok"]


def test_a_cancelled_call_is_abandoned_for_its_running_handler(cluster: Cluster) -> None:
    host, caller = pair(cluster)
    saw: List[float] = []
    started = threading.Event()

    def patient(payload: bytes, info: pytribe.CallInfo) -> bytes:
        started.set()
        t0 = time.monotonic()
        while not info.abandoned() and time.monotonic() - t0 < 20:
            time.sleep(0.01)
        saw.append(time.monotonic() - t0)
        return b"late"

    host.serve("patient", "1", "processor", patient)
    wait_endpoint(caller, "patient")

    async def cancel_soon() -> None:
        task = asyncio.ensure_future(caller.call_async("svc", "patient", b"x", timeout=30))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_soon())
    wait_for("the handler saw the cancel", lambda: len(saw) == 1)
    assert saw[0] < 5, saw  # told at once, not at the 30 s deadline


def test_an_answer_given_once_abandoned_never_reaches_the_caller(cluster: Cluster) -> None:
    host, caller = pair(cluster)

    def until_abandoned(payload: bytes, info: pytribe.CallInfo) -> bytes:
        t0 = time.monotonic()
        while not info.abandoned() and time.monotonic() - t0 < 10:
            time.sleep(0.005)
        return b"late"

    host.serve("until", "1", "processor", until_abandoned)
    wait_endpoint(caller, "until")
    for _ in range(15):
        # The caller has its own timeout: abandoned() was not true early.
        with pytest.raises(pytribe.CallTimeoutError):
            caller.call("svc", "until", b"x", timeout=0.3)


def test_the_call_bounds_are_set_by_name(cluster: Cluster) -> None:
    """More calls in flight to one host than ``max_inflight_per_conn``
    (256 by default; the caller's and the host's both apply) are refused
    as overloaded; the limit raised on both, they all go through."""
    host = cluster.start("host", limits={"max_inflight_per_conn": 1024})
    host.create_tribe("svc")
    host.join("svc")
    # The handler holds each call until the burst is all out, so the calls
    # are in flight at once however slowly a loaded machine sends them.
    gate = threading.Event()

    def echo(payload: bytes, info: pytribe.CallInfo) -> bytes:
        gate.wait(30.0)
        return payload

    host.serve("echo", "1", "processor", echo)

    def burst(caller: pytribe.Node, n: int, out: Callable[[], bool]) -> Tuple[int, int]:
        """n calls at once; the handler lets them go once `out()` is true."""
        async def run() -> Tuple[int, int]:
            gate.clear()
            calls = [asyncio.ensure_future(caller.call_async("svc", "echo", b"%d" % i, timeout=40.0))
                     for i in range(n)]
            try:
                deadline = time.monotonic() + 30.0
                while not out():
                    assert time.monotonic() < deadline, caller.counters()["calls"]
                    await asyncio.sleep(0.05)
            finally:
                gate.set()
            done = await asyncio.gather(*calls, return_exceptions=True)
            ok = sum(1 for i, r in enumerate(done) if r == b"%d" % i)
            overloaded = sum(1 for r in done if isinstance(r, pytribe.OverloadedError))
            return ok, overloaded

        return asyncio.run(run())

    def seen(caller: pytribe.Node) -> bool:
        return any(e.name == "echo" for m in caller.members() for e in m.endpoints)

    raised = cluster.start("raised", seeds=[host.addr], limits={"max_inflight_per_conn": 1024})
    wait_for("the raised caller to see echo", lambda: seen(raised))
    # All 600 held by the host at once.
    assert burst(raised, 600, lambda: host.counters()["calls"]["serving"] >= 600) == (600, 0)
    default = cluster.start("default", seeds=[host.addr])
    wait_for("the default caller to see echo", lambda: seen(default))
    before = default.counters()["calls"]["overloaded"]
    ok, overloaded = burst(default, 600, lambda: default.counters()["calls"]["overloaded"] > before)
    assert overloaded > 0 and ok + overloaded == 600, (ok, overloaded)
    for bad in ({"max_inflight_per_conn": 0}, {"max_serving": 0}):
        with pytest.raises(ValueError):
            pytribe.Node("bad", profile="local", collect_facts=False, limits=bad)


def test_a_failure_is_answered_before_a_blocked_log_handler_returns(cluster: Cluster) -> None:
    """The failure reaches the caller before the host logs it: a log handler
    that blocks (a full pipe, a network sink) holds up no caller."""
    host, caller = pair(cluster)
    gate = threading.Event()

    class Blocked(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            gate.wait(20)

    def fails(payload: bytes, info: pytribe.CallInfo) -> bytes:
        if payload == b"released":
            view = memoryview(b"abc")
            view.release()
            return view  # type: ignore[return-value]
        raise ValueError("boom")

    host.serve("fails", "1", "processor", fails)
    wait_endpoint(caller, "fails")
    blocked = Blocked()
    logger = logging.getLogger("pytribe")
    logger.addHandler(blocked)
    try:
        with pytest.raises(pytribe.RemoteError) as e:
            caller.call("svc", "fails", b"x", timeout=5.0)
        assert e.value.code == "ValueError"
        with pytest.raises(pytribe.RemoteError) as e:
            caller.call("svc", "fails", b"released", timeout=5.0)
        assert e.value.code == "TypeError"
        assert e.value.message == "a handler returned a memoryview that was released"
    finally:
        gate.set()
        logger.removeHandler(blocked)


def test_aclose_lets_the_loop_run_and_handlers_that_use_it_answer(cluster: Cluster) -> None:
    host, caller = pair(cluster, handler_threads=3)
    started = threading.Semaphore(0)

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def work(payload: bytes) -> bytes:
            await asyncio.sleep(0.3)
            return payload.upper()

        def bridged(payload: bytes, info: pytribe.CallInfo) -> bytes:
            # The handler's work runs on the service's own loop.
            started.release()
            return asyncio.run_coroutine_threadsafe(work(payload), loop).result(10)

        host.serve("bridged", "1", "processor", bridged)
        await asyncio.to_thread(wait_endpoint, caller, "bridged")
        calls = [
            asyncio.ensure_future(caller.call_async("svc", "bridged", b"c%d" % i, timeout=20.0))
            for i in range(3)
        ]
        for _ in range(3):
            await asyncio.to_thread(started.acquire)
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        async with host:
            pass  # `async with` closes with aclose(), the loop running meanwhile.
        assert host.closed
        assert ticks > 0, "the loop stood still while the node closed"
        ticker.cancel()
        assert sorted(await asyncio.gather(*calls)) == [b"C0", b"C1", b"C2"]
        assert await host.aclose() is True  # idempotent

    asyncio.run(main())


def test_aclose_runs_when_the_default_executor_is_busy_and_when_cancelled(cluster: Cluster) -> None:
    node = cluster.start("busy")
    other = cluster.start("other")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        release = threading.Event()
        # Every thread of the loop's default executor waits.
        blockers = [loop.run_in_executor(None, release.wait, 20.0) for _ in range(64)]
        assert await asyncio.wait_for(node.aclose(), 10.0) is True
        assert node.closed
        # Cancelled at once, the close still goes on to its end.
        task = asyncio.ensure_future(other.aclose())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        await asyncio.gather(*blockers)

    asyncio.run(main())
    # (With the loop's executor, a close cancelled before a thread took it
    # never ran.)
    wait_for("the cancelled close ran", lambda: other.closed)
