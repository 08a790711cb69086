"""Start, snapshots, commands, exceptions and argument checks on real nodes."""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from typing import List

import pytest

import pytribe
from conftest import start, wait_for


def test_keygen_gives_32_random_bytes_in_base64() -> None:
    k1, k2 = pytribe.keygen(), pytribe.keygen()
    assert k1 != k2
    assert len(base64.b64decode(k1, validate=True)) == 32
    assert len(pytribe.key_id(k1)) == 8
    with pytest.raises(ValueError):
        pytribe.key_id("not a key")


def test_node_binds_port_zero_and_reports_its_address() -> None:
    with start("solo", facts={"rack": "r1"}) as node:
        assert node.name == "solo"
        host, port = node.addr.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        me = node.members()
        assert len(me) == 1 and me[0].local and me[0].state == "alive"
        assert me[0].facts["rack"] == "r1"
        assert node.members_alive() == 1
        assert "solo" in repr(node)
        assert not node.closed
    assert node.closed


def test_commands_snapshots_and_typed_errors() -> None:
    with start("cmd") as node:
        node.create_tribe("core")
        with pytest.raises(pytribe.TribeExistsError) as e:
            node.create_tribe("core")
        assert e.value.code == "tribe_exists"
        with pytest.raises(pytribe.UnknownTribeError) as e2:
            node.join("nope")
        assert isinstance(e2.value, KeyError) and e2.value.code == "unknown_tribe"
        assert "nope" in str(e2.value)
        with pytest.raises(pytribe.InvalidNameError) as e3:
            node.create_tribe("-bad")
        assert isinstance(e3.value, ValueError)
        with pytest.raises(pytribe.InvalidPolicyError) as e4:
            node.add_policy("p", "core", "facts.rack ==")
        assert isinstance(e4.value, ValueError)
        assert e4.value.line == 1 and e4.value.column == 14
        node.join("core")
        node.add_policy("r1", "core", 'facts.rack == "r1"')
        node.set_fact("rack", "r1")
        node.load_plugin("core", "disk", "1", "collector")
        node.add_task("core", "t1", {"schedule": {"interval": "1s"}, "collect": {"plugin": "disk"}})
        wait_for("the tribe's view", lambda: node.tribe("core") is not None and node.tribe("core").members == ("cmd",))
        t = node.tribe("core")
        assert t is not None
        assert t.plugins == (pytribe.Plugin("disk", "1", "collector"),)
        assert t.tasks[0].id == "t1" and t.tasks[0].manifest_dict()["collect"]["plugin"] == "disk"
        assert node.tribe("missing") is None
        assert node.tribes() == [t]
        assert node.policies() == [pytribe.Policy("r1", "core", 'facts.rack == "r1"')]
        # Snapshots are frozen and compare by value.
        with pytest.raises(dataclasses.FrozenInstanceError):
            t.name = "x"  # type: ignore[misc]
        with pytest.raises(TypeError):
            node.members()[0].facts["rack"] = "r2"  # type: ignore[index]
        assert "disk" in repr(t)
        assert len(node.state_digest()) > 8
        node.remove_task("core", "t1")
        node.unload_plugin("core", "disk", "1")
        node.remove_policy("r1")
        node.remove_fact("rack")
        with pytest.raises(pytribe.UnknownFactError) as fact_error:
            node.remove_fact("rack")
        assert fact_error.value.fact == "rack"  # type: ignore[attr-defined]
        with pytest.raises(pytribe.UnknownPolicyError) as policy_error:
            node.remove_policy("r1")
        assert policy_error.value.policy == "r1"  # type: ignore[attr-defined]
        node.leave("core")
        node.delete_tribe("core")
        keys = node.keys()
        assert keys.encryption is None and keys.keys == ()
        status = node.status()
        assert (status.name, status.addr, status.encryption, status.primary_key) == (node.name, node.addr, "off", None)
        assert status.members_alive == 1 and status.tribes == 0 and status.version == pytribe.__version__
        assert status.state_digest == node.state_digest() and status.name_held_by is None
        assert node.member(node.name) == node.members()[0] and node.member("nobody") is None
        with pytest.raises(TypeError):
            node.member(5)  # type: ignore[arg-type]
        with pytest.raises(pytribe.NoKeyringError):
            node.install_key(pytribe.keygen())


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"bind": "nonsense"}, ValueError),
        ({"bind": 12}, TypeError),
        ({"seeds": "127.0.0.1:1"}, TypeError),
        ({"seeds": [1]}, TypeError),
        ({"facts": {"k": 1}}, TypeError),
        ({"facts": ["k"]}, TypeError),
        ({"facts": {"bad key!": "v"}}, ValueError),
        ({"key": "short"}, ValueError),
        ({"profile": "fast"}, ValueError),
        ({"encryption": "maybe"}, ValueError),
        ({"handler_threads": 0}, ValueError),
        ({"handler_threads": "4"}, TypeError),
        ({"label": "x" * 100}, ValueError),
    ],
)
def test_bad_start_arguments_raise_type_or_value_errors(kwargs: dict, exc: type) -> None:
    with pytest.raises(exc):
        start("bad", **kwargs)


def test_bad_call_arguments_raise_type_or_value_errors() -> None:
    with start("args") as node:
        node.create_tribe("t")
        with pytest.raises(TypeError):
            node.call("t", "p", "text")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            node.call("t", "p", b"x", kind="transformer")
        with pytest.raises(ValueError):
            node.call("t", "p", b"x", timeout=-1)
        with pytest.raises(ValueError):
            node.call("t", "p", b"x", timeout=float("nan"))
        with pytest.raises(TypeError):
            node.call("t", "p", b"x", timeout="1")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            node.serve("p", "1", "processor", "not callable")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            node.serve("p", "1", "nope", lambda p, i: p)
        with pytest.raises(pytribe.InvalidNameError):
            node.serve("-p", "1", "processor", lambda p, i: p)
        with pytest.raises(TypeError):
            node.create_tribe(None)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            node.add_task("t", "x", 5)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            node.add_task("t", "x", {}, state="paused")
        with pytest.raises(ValueError):
            node.use_key("zz")
        with pytest.raises(TypeError):
            node.events(timeout="soon")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            pytribe.set_log_level("chatty")


def test_closed_node_raises_shutdown_error_and_close_is_idempotent() -> None:
    node = start("closing")
    node.create_tribe("t")
    assert node.close() is True
    assert node.close() is True
    node.abort()
    with pytest.raises(pytribe.ShutdownError) as e:
        node.create_tribe("u")
    assert e.value.code == "shutting_down"
    with pytest.raises(pytribe.ShutdownError):
        node.call("t", "p", b"x")
    # What a closed node last knew is not the cluster's state.
    for snapshot in (node.members, node.members_alive, node.tribes, node.policies, node.state_digest, node.keys):
        with pytest.raises(pytribe.ShutdownError):
            snapshot()
    with pytest.raises(pytribe.ShutdownError):
        node.tribe("t")
    # Artifacts too, as in C and Go (the hash is checked first).
    with pytest.raises(pytribe.ShutdownError):
        node.artifact("00" * 32)
    with pytest.raises(ValueError):
        node.artifact("not hex")
    # A long one is cut in the message, as libtribe cuts names.
    with pytest.raises(ValueError) as long_one:
        node.artifact("a" * 100_000)
    assert len(str(long_one.value)) < 200
    # Counters stay readable, with every counter of the admin API.
    counters = node.counters()
    assert set(counters) == {"engine", "calls"}
    assert counters["calls"] == node.rpc_stats()
    assert {"replies_too_large", "chunks_served", "artifacts_fetched", "cancelled"} <= set(node.rpc_stats())
    assert counters["engine"]["events_dropped"] >= 0


def test_exception_hierarchy() -> None:
    assert issubclass(pytribe.CallTimeoutError, TimeoutError)
    assert issubclass(pytribe.CallTimeoutError, pytribe.TribeError)
    assert issubclass(pytribe.InvalidPolicyError, ValueError)
    assert issubclass(pytribe.InvalidNameError, ValueError)
    assert issubclass(pytribe.UnknownTribeError, KeyError)
    for cls in (
        pytribe.NoProviderError,
        pytribe.RemoteError,
        pytribe.OverloadedError,
        pytribe.DisconnectedError,
        pytribe.ShutdownError,
        pytribe.ConfigError,
        pytribe.TooLargeError,
    ):
        assert issubclass(cls, pytribe.TribeError)
    assert pytribe.RemoteError.error_code == "remote"


def test_state_limits_refuse_the_command_past_them() -> None:
    with start("limited", limits={"tribes": 2, "max_streams": 8}) as node:
        node.create_tribe("a")
        node.create_tribe("b")
        with pytest.raises(pytribe.LimitReachedError) as e:
            node.create_tribe("c")
        assert e.value.code == "limit_reached" and "2 tribes" in e.value.message
        assert sorted(t.name for t in node.tribes()) == ["a", "b"]
    with pytest.raises(pytribe.InvalidArgumentError):
        start("bad-limit", limits={"moons": 3})
    with pytest.raises(ValueError):
        start("zero-limit", limits={"tribes": 0})
    with pytest.raises(TypeError):
        start("bool-limit", limits={"tribes": True})


def test_identity_and_skew_events_decode() -> None:
    ev = pytribe._event({"kind_": "identity_claimed", "addr": "10.0.0.9:7946", "generation": 2**64 - 1})
    assert isinstance(ev, pytribe.IdentityClaimed) and ev.generation == 2**64 - 1
    ev = pytribe._event({"kind_": "clock_skew", "name": "slow-1", "offset_ms": -600000})
    assert isinstance(ev, pytribe.ClockSkew) and ev.name == "slow-1" and ev.offset_ms == -600000


def test_a_subscriber_made_after_close_ends_at_once() -> None:
    node = start("late-sub")
    node.events(timeout=0.1)
    node.close()
    began = time.monotonic()
    list(node.events())  # ends: the node has stopped
    # Far from for ever (it used to wait for events that never come).
    assert time.monotonic() - began < 5.0


def test_bad_arguments_are_refused_before_anything_happens() -> None:
    node = start("refusals")
    with pytest.raises(ValueError):
        node.close(timeout=-1)
    with pytest.raises(ValueError):
        node.events(timeout=float("nan"))
    assert not node.closed

    async def handler(payload: bytes, info: pytribe.CallInfo) -> bytes:
        return payload

    with pytest.raises(TypeError):
        node.serve("a", "1", "processor", handler)  # type: ignore[arg-type]
    node.close()


def test_a_port_in_use_is_an_oserror_with_its_errno() -> None:
    import errno

    node = start("port-owner")
    with pytest.raises(OSError) as e:
        pytribe.Node("port-taker", bind=node.addr, profile="local", collect_facts=False)
    assert isinstance(e.value, pytribe.TribeIOError)
    assert e.value.errno == errno.EADDRINUSE, e.value
    node.close()


def test_a_long_io_message_is_read_in_linear_time() -> None:
    # A join's message names each address and why: long, and without the
    # pattern in most of it. A quadratic scan of 400,000 characters would
    # hold the GIL for hours.
    long = "joined through no address: " + "; ".join(
        f"127.0.0.{i % 250}:7946: did not finish the stream setup in time" for i in range(6000)
    )
    assert len(long) > 300_000
    e = pytribe.TribeIOError(long)
    assert not hasattr(e, "errno") or e.errno is None
    e = pytribe.TribeIOError(long + "; cannot bind: Address in use (os error 98)")
    assert e.errno == 98
    assert e.strerror == "Address in use"


def test_a_node_referred_to_by_its_handler_is_collected_and_aborted() -> None:
    import gc
    import weakref as wr

    node = start("cyclic")
    node.serve("me", "1", "processor", lambda payload, info: node.name.encode())
    ref = wr.ref(node)
    del node
    gc.collect()
    assert ref() is None, "a node kept alive by its own handler"


def test_a_node_dropped_while_its_handler_runs_is_aborted_at_once(tmp_path) -> None:
    import gc
    import weakref as wr

    host = start("dropped", data_dir=str(tmp_path / "d"))
    caller = start("dropper", seeds=[host.addr])
    caller.create_tribe("t")
    caller.add_policy("all", "t", "true")
    running = threading.Event()
    release = threading.Event()

    def slow(payload: bytes, info: pytribe.CallInfo) -> bytes:
        running.set()
        release.wait(20.0)
        return payload

    host.serve("slow", "1", "processor", slow)
    wait_for(
        "the endpoint on the caller",
        lambda: any(e.name == "slow" for m in caller.members() if m.name == "dropped" for e in m.endpoints),
    )

    def placed(n: pytribe.Node) -> bool:
        t = n.tribe("t")
        return t is not None and "dropped" in t.members

    wait_for("the host in t on both", lambda: placed(host) and placed(caller))
    outcome: List[BaseException] = []

    def call() -> None:
        try:
            caller.call("t", "slow", b"x", timeout=20.0)
        except BaseException as e:  # noqa: BLE001 - recorded for the assertion
            outcome.append(e)

    t = threading.Thread(target=call)
    t.start()
    try:
        assert running.wait(10.0), "the call did not reach the handler"
        addr, ref = host.addr, wr.ref(host)
        del host
        gc.collect()
        assert ref() is None, "a node kept alive by its running handler"
        # Aborted: its port and data dir are free at once, the call is lost.
        again = pytribe.Node("dropped", bind=addr, data_dir=str(tmp_path / "d"), profile="local", collect_facts=False)
        t.join(10.0)
        assert not t.is_alive(), "the call outlived the aborted node"
        assert outcome and isinstance(outcome[0], (pytribe.DisconnectedError, pytribe.NoProviderError)), outcome
        again.abort()
    finally:
        release.set()
        t.join(20.0)
        caller.abort()


def test_a_sub_interpreter_is_refused() -> None:
    # In a fresh process, whose sub-interpreter imports pytribe first.
    code = textwrap.dedent(
        """
        import sys
        try:
            import _interpreters as interpreters
        except ImportError:
            import _xxsubinterpreters as interpreters
        interp = interpreters.create()
        script = (
            "try:\\n"
            "    import pytribe\\n"
            "    result = 'imported'\\n"
            "except ImportError as e:\\n"
            "    result = str(e)\\n"
            "open(%r, 'w').write(result)\\n"
        )
        interpreters.run_string(interp, script % sys.argv[1])
        interpreters.destroy(interp)
        import pytribe
        print(pytribe.Node("main-one", profile="local", collect_facts=False).close())
        """
    )
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "result")
        done = subprocess.run([sys.executable, "-c", code, out], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert open(out).read() == "pytribe runs in the main interpreter only, not in a sub-interpreter"
        # The main interpreter still imports it and starts nodes.
        assert done.stdout.strip() == "True", done.stdout


def test_snapshots_pickle_copy_and_hash() -> None:
    import copy
    import pickle

    node = pytribe.Node("snap", profile="local", collect_facts=False, facts={"rack": "r1"})
    member = node.members()[0]
    assert pickle.loads(pickle.dumps(member)) == member
    assert copy.deepcopy(member) == member
    assert hash(member) == hash(copy.copy(member))
    assert dataclasses.asdict(member)["facts"] == {"rack": "r1"}
    assert member.facts["rack"] == "r1" and dict(member.facts) == {"rack": "r1"}
    node.close()


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"key": "zz"}, pytribe.InvalidArgumentError),
        ({"bind": "nope"}, pytribe.InvalidArgumentError),
        ({"max_payload": -1}, pytribe.InvalidArgumentError),
        ({"handler_threads": 0}, pytribe.InvalidArgumentError),
        ({"profile": "bogus"}, pytribe.InvalidArgumentError),
        ({"key": pytribe.keygen(), "encryption": "loud"}, pytribe.InvalidArgumentError),
        # Not the current directory, which the node would take over.
        ({"data_dir": ""}, pytribe.InvalidArgumentError),
    ],
)
def test_bad_config_values_raise_the_library_errors(kwargs: dict, error: type) -> None:
    # One `except pytribe.TribeError` (or ValueError) catches them all,
    # each with its code, as the same values give in C and Go.
    with pytest.raises(error) as e:
        pytribe.Node.check_config("bad-config", **kwargs)
    with pytest.raises(error) as e:
        pytribe.Node("bad-config", **kwargs)
    assert isinstance(e.value, ValueError) and isinstance(e.value, pytribe.TribeError)
    assert e.value.code == error.error_code


def test_an_encryption_mode_without_any_key_does_not_start_in_plaintext(tmp_path) -> None:
    # Neither a key nor a keyring kept in the data dir by an earlier run.
    for extra in ({}, {"data_dir": str(tmp_path)}):
        with pytest.raises(pytribe.ConfigError, match="needs a key"):
            pytribe.Node("modal", encryption="require", **extra)


def test_a_bad_key_or_mode_is_an_invalid_argument_everywhere() -> None:
    with pytest.raises(pytribe.InvalidArgumentError):
        pytribe.key_id("zz")
    with start("modes", key=pytribe.keygen()) as node:
        with pytest.raises(pytribe.InvalidArgumentError):
            node.set_encryption("loud")


@pytest.mark.parametrize(
    "kwargs, why",
    [
        ({"bind": "no-such-host.invalid:0"}, "the host is not an address or a name that resolves"),
        ({"advertise": "no-such-host.invalid:7946"}, "the host is not an address or a name that resolves"),
        ({"bind": "[::1]"}, "no port"),
        ({"bind": "::1:0"}, "an IPv6 address goes in brackets"),
        ({"advertise": "127.0.0.1:99999"}, "the port is not 0 to 65535"),
    ],
)
def test_a_bad_address_says_why_as_in_c_and_go(kwargs: dict, why: str) -> None:
    # InvalidArgumentError, a ValueError: as C's tribe_config_set_bind.
    with pytest.raises(pytribe.InvalidArgumentError) as e:
        pytribe.Node("bad-addr", profile="local", collect_facts=False, **kwargs)
    assert why in str(e.value), e.value


def test_a_data_dir_that_cannot_be_made_is_an_io_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(pytribe.TribeIOError) as e:
        pytribe.Node("no-dir", data_dir=str(not_a_dir / "sub"))
    assert isinstance(e.value, OSError) and e.value.code == "io"


def test_a_close_whose_data_dir_missed_the_last_state_raises_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Every write of the state file fails (a full disk, here its temporary
    # file's place taken by a directory): the close says so, once, and the
    # node is closed all the same.
    node = pytribe.Node("unsaved", data_dir=str(tmp_path), profile="local", collect_facts=False)
    deadline = time.monotonic() + 10
    while True:
        try:
            (tmp_path / "node-state.json.tmp").mkdir()
            break
        except FileExistsError:  # a write of the node's holds it as a file
            assert time.monotonic() < deadline
            time.sleep(0.01)
    node.create_tribe("lost")
    with pytest.raises(pytribe.TribeIOError) as e:
        node.close()
    assert "last state" in str(e.value), e.value
    assert node.closed
    assert node.close() is True


def test_log_records_name_the_node_whose_work_logged_them(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="pytribe"):
        a = start("log-a")
        b = start("log-b")
        try:
            def started() -> set:
                return {
                    getattr(r, "tribe_node", None)
                    for r in caplog.records
                    if r.getMessage().startswith("node started")
                }

            wait_for("both nodes' start logged", lambda: {"log-a", "log-b"} <= started(), 5)
            record = next(r for r in caplog.records if r.getMessage().startswith("node started"))
            assert record.tribe_target == "tribe::api"  # type: ignore[attr-defined]
        finally:
            a.close()
            b.close()


@pytest.mark.parametrize("error", [RuntimeError, SystemExit])
def test_a_raising_log_filter_loses_its_record_not_the_forwarding(error: type) -> None:
    """A program's log filter that raises loses that record; the thread that
    forwards libtribe's records to logging carries on (also past SystemExit,
    which ended it)."""
    raised: list[logging.LogRecord] = []

    class Buggy(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if not raised:
                raised.append(record)
                raise error("a buggy filter")
            return True

    logger = logging.getLogger("pytribe")
    buggy = Buggy()
    logger.addFilter(buggy)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    node = start("filtered")
    try:
        wait_for("the filter to raise", lambda: bool(raised), 10)
        time.sleep(0.2)
        assert pytribe._log_thread is not None and pytribe._log_thread.is_alive()
    finally:
        node.close()
        logger.removeFilter(buggy)
        logger.setLevel(old_level)


def test_a_subscriber_that_fell_behind_says_how_many_events_it_missed() -> None:
    with start("lag") as node:
        kept = node.events(timeout=0)
        unread = node.events()
        node.create_tribe("t")
        # 35,000 joins and leaves: 70,000 events, more than a subscriber holds.
        for _ in range(35_000):
            node.join("t")
            node.leave("t")
        wait_for("the unread subscriber to count its losses", lambda: unread.missed >= 70_000 - 65_536)
        assert kept.missed == unread.missed, "neither subscriber was read"
        assert node.counters()["engine"]["events_dropped"] >= 2 * unread.missed
        got = kept.drain()
        assert len(got) == 65_536 and kept.missed >= 70_000 - 65_536
        unread.close()
        assert unread.missed >= 70_000 - 65_536, "the count outlives close()"
