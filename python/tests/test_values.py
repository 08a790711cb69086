"""What values the API takes and gives: handles that refuse copies,
snapshot mappings that are dicts, errors that name the argument, the error
classes of bad configurations, and the classes' public names."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import pickle
import time
import traceback
from typing import Any, Callable, Iterator

import pytest

import pytribe
from conftest import start, wait_for


@pytest.fixture
def node() -> Iterator[pytribe.Node]:
    n = start("values", facts={"rack": "r1"})
    try:
        yield n
    finally:
        n.abort()


def test_handles_refuse_copies_and_pickles(node: pytribe.Node) -> None:
    info = pytribe.CallInfo("c", "t", "p", "1", time.monotonic() + 5)
    handles = [(node, "Node"), (node.events(timeout=0.1), "Events"), (node.aevents(), "AsyncEvents"), (info, "CallInfo")]
    ways: list[Callable[[Any], object]] = [copy.copy, copy.deepcopy, pickle.dumps]
    for handle, name in handles:
        for way in ways:
            with pytest.raises(TypeError, match=f"^pytribe.{name} cannot be copied or pickled$"):
                way(handle)
    # No copy was made whose collection shuts the node down.
    import gc

    gc.collect()
    assert not node.closed and node.members_alive() == 1


def test_snapshot_mappings_are_read_only_dicts(node: pytribe.Node) -> None:
    member = node.members()[0]
    facts = member.facts
    assert json.dumps(facts) == '{"rack": "r1"}'
    assert json.dumps(facts, indent=1)  # the pure-Python encoder too
    merged = facts | {"x": "y"}
    assert merged == {"rack": "r1", "x": "y"} and type(merged) is dict
    assert {"x": "y"} | facts == {"x": "y", "rack": "r1"}
    as_dict = dataclasses.asdict(member)
    assert json.loads(json.dumps(as_dict))["facts"] == {"rack": "r1"}
    assert as_dict["facts"] == {"rack": "r1"}
    for mutate in (
        lambda: facts.__setitem__("rack", "r2"),
        lambda: facts.__delitem__("rack"),
        lambda: facts.update(rack="r2"),
        lambda: facts.setdefault("x", "y"),
        lambda: facts.pop("rack"),
        facts.popitem,
        facts.clear,
    ):
        with pytest.raises(TypeError, match="read-only"):
            mutate()
    with pytest.raises(TypeError, match="read-only"):
        f = facts
        f |= {"x": "y"}
    facts.__init__({"rack": "r3"})  # type: ignore[misc]
    assert facts == {"rack": "r1"} and member == node.members()[0]
    assert hash(member) == hash(pickle.loads(pickle.dumps(member)))
    assert copy.copy(facts) is facts and copy.deepcopy(member) == member


def test_wrong_types_and_unencodable_text_name_the_argument(node: pytribe.Node) -> None:
    node.create_tribe("t")
    wrong: list[tuple[Callable[[], object], str]] = [
        (lambda: node.set_fact("a", 1), "set_fact: value must be str, not int"),  # type: ignore[arg-type]
        (lambda: node.call("t", "e", b"", version=1), "call: version must be str or None, not int"),  # type: ignore[arg-type]
        (lambda: node.create_tribe(None), "create_tribe: tribe must be str, not NoneType"),  # type: ignore[arg-type]
        (lambda: start("typed", collect_facts=0), "Node: collect_facts must be bool, not int"),
        (lambda: pytribe.key_id(5), "key_id: key must be str, not int"),  # type: ignore[arg-type]
        (lambda: node.load_plugin("t", "p", "1", "collector", artifact="abc"), "load_plugin: artifact must be bytes"),  # type: ignore[arg-type]
        (lambda: start("limits", limits={"tribes": "5"}), "Node: limit 'tribes' must be an int, not str"),
        (lambda: start("limits", limits={"tribes": None}), "Node: limit 'tribes' must be an int, not NoneType"),
        (lambda: start("limits", limits={"tribes": True}), "Node: limit 'tribes' must be an int, not bool"),
        (lambda: start("payload", max_payload="5"), "Node: max_payload must be an int, not str"),
        (lambda: start("seeded", seeds=None), "Node: seeds must be a list of strings, not NoneType"),  # type: ignore[arg-type]
        (lambda: start("kept", data_dir=5), "Node: data_dir must be a str, bytes or os.PathLike, not int"),  # type: ignore[arg-type]
    ]
    for make, message in wrong:
        with pytest.raises(TypeError) as e:
            make()
        assert str(e.value).startswith(message), e.value
    # A NUL no path can hold is a bad value, as os.makedirs says, not an I/O error.
    with pytest.raises(pytribe.InvalidArgumentError, match="data_dir holds a NUL byte"):
        start("kept", data_dir="/tmp/a\0b")
    with pytest.raises(TypeError, match="^call_async: plugin must be str, not bytes$"):
        asyncio.run(node.call_async("t", b"e", b""))  # type: ignore[arg-type]

    unencodable: list[tuple[Callable[[], object], str]] = [
        (lambda: node.call("\udcff", "e", b""), "call: tribe"),
        (lambda: node.set_fact("a", "\ud800"), "set_fact: value"),
        (lambda: node.member("\udcff"), "member: name"),
        (lambda: node.add_policy("p", "t", "facts.a == '\ud800'"), "add_policy: when"),
        (lambda: start("surrogates", facts={"a": "\udcff"}), "Node: facts"),
        (lambda: start("surrogates", seeds=["\udcff:1"]), "Node: seeds"),
        (lambda: pytribe.set_log_level("\udcff"), "set_log_level: level"),
    ]
    for make, name in unencodable:
        with pytest.raises(pytribe.InvalidArgumentError) as e2:
            make()
        assert str(e2.value) == f"{name} holds text that UTF-8 cannot encode (a lone surrogate)"
        assert isinstance(e2.value, ValueError) and e2.value.code == "invalid_argument"
    # Values out of range stay value errors.
    with pytest.raises(pytribe.InvalidArgumentError):
        start("payload", max_payload=0)
    with pytest.raises(pytribe.InvalidArgumentError):
        start("limits", limits={"tribes": 0})
    # A str payload is a wrong type, not bad text, surrogates or not.
    with pytest.raises(TypeError, match="^call: payload must be bytes"):
        node.call("t", "e", "\udcff")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="^call: timeout must be a number of seconds, not bool$"):
        node.call("t", "e", b"", timeout=True)
    with pytest.raises(TypeError, match="^Node: seeds must be a list of strings, not a single str$"):
        start("seeded", seeds="127.0.0.1:1")
    with pytest.raises(OverflowError, match="^Node: "):
        start("limits", limits={"tribes": 2**70})
    assert not node.closed


def test_config_time_and_command_time_refusals_are_the_documented_classes(node: pytribe.Node) -> None:
    many = {f"f{i}": "v" for i in range(257)}
    # What holds together only at start is refused there (code "config", as
    # `tribe_node_start` in C and `Start` in Go give); a bad fact or label is
    # refused as given (code "invalid_argument", as C's setters and so Go's
    # `Start` give), and so is the same value given to a command later.
    for kwargs in ({"facts": many}, {"bind": "0.0.0.0:0"}, {"max_payload": 1 << 31}):
        with pytest.raises(pytribe.ConfigError) as e:
            start("config", **kwargs)
        assert isinstance(e.value, ValueError) and e.value.code == "config"
    for kwargs in ({"facts": {"f": "v" * 1025}}, {"facts": {"bad-key": "v"}}, {"label": "x" * 65}):
        with pytest.raises(pytribe.InvalidArgumentError) as e:
            start("config", **kwargs)
        assert isinstance(e.value, ValueError) and e.value.code == "invalid_argument"
    with pytest.raises(pytribe.InvalidArgumentError):
        node.set_fact("f", "v" * 1025)
    with pytest.raises(pytribe.InvalidArgumentError):
        for name in many:
            node.set_fact(name, "v")
    # An unspecified bind address starts with an advertised one.
    with start("anywhere", bind="0.0.0.0:0", advertise="127.0.0.1:0") as n:
        assert n.addr.startswith("127.0.0.1:") and not n.addr.endswith(":0")


def test_public_classes_are_named_as_imported() -> None:
    for cls in (pytribe.CallTimeoutError, pytribe.TribeError, pytribe.HandlerError, pytribe.Member, pytribe.MemberUp):
        assert cls.__module__ == "pytribe", cls
    assert repr(pytribe.CallTimeoutError) == "<class 'pytribe.CallTimeoutError'>"
    err = pytribe.CallTimeoutError("too slow", "timeout")
    assert traceback.format_exception_only(type(err), err) == ["pytribe.CallTimeoutError: too slow\n"]
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is pytribe.CallTimeoutError and again.code == "timeout"
    member_up = pytribe.MemberUp(name="a", addr="127.0.0.1:1")
    assert pickle.loads(pickle.dumps(member_up)) == member_up


def test_a_hand_made_call_info_is_abandoned_once_its_deadline_passed() -> None:
    assert pytribe.CallInfo("c", "t", "p", "1", time.monotonic() - 1).abandoned()
    assert not pytribe.CallInfo("c", "t", "p", "1", time.monotonic() + 60).abandoned()
    assert repr(pytribe.CallInfo("c", "t", "p", "1", 0)).endswith("deadline=0.0)")
    # Its arguments are checked and named, as the node's methods name theirs.
    with pytest.raises(TypeError, match="^CallInfo: caller must be str, not int$"):
        pytribe.CallInfo(1, "t", "p", "1", 0.0)  # type: ignore[arg-type]
    with pytest.raises(pytribe.InvalidArgumentError, match="CallInfo: tribe holds text that UTF-8"):
        pytribe.CallInfo("c", "t\udcff", "p", "1", 0.0)
    with pytest.raises(pytribe.InvalidArgumentError, match="CallInfo: deadline must be a number"):
        pytribe.CallInfo("c", "t", "p", "1", float("nan"))
    with pytest.raises(TypeError, match="^CallInfo: deadline must be a float, not str$"):
        pytribe.CallInfo("c", "t", "p", "1", "5")  # type: ignore[arg-type]


def test_an_empty_handler_code_reaches_the_caller_as_error(node: pytribe.Node) -> None:
    def fails(payload: bytes, info: pytribe.CallInfo) -> bytes:
        raise pytribe.HandlerError("", "no code")

    node.create_tribe("t")
    node.join("t")
    node.serve("fails", "1", "processor", fails)
    with pytest.raises(pytribe.RemoteError) as e:
        node.call("t", "fails", b"x", timeout=5)
    assert (e.value.code, e.value.message) == ("error", "no code")


def test_event_subscribers_show_and_close(node: pytribe.Node) -> None:
    with node.events(timeout=5.0) as events:
        assert repr(events) == "<pytribe.Events of 'values' timeout=5.0 open>"
        node.create_tribe("before")
        wait_for("an event", lambda: any(isinstance(e, pytribe.TribeCreated) for e in events.drain()), 5)
        node.create_tribe("queued")
    # Closed: what was queued is dropped, reads end at once.
    assert events.closed and repr(events).endswith(" closed>")
    began = time.monotonic()
    assert list(events) == [] and events.get(5.0) is None and events.drain() == []
    # Each read that waited would take its 5 s timeout.
    assert time.monotonic() - began < 4.0
    events.close()  # idempotent

    async def read() -> None:
        async with node.aevents() as aevents:
            assert repr(aevents) == "<pytribe.AsyncEvents of 'values' open>"
            node.create_tribe("async")
            async for e in aevents:
                if isinstance(e, pytribe.TribeCreated) and e.tribe == "async":
                    break
        assert aevents.closed and repr(aevents).endswith(" closed>")
        assert [e async for e in aevents] == []

    asyncio.run(asyncio.wait_for(read(), 10))


def test_type_hints_of_every_public_class_resolve() -> None:
    # The classes say they live in pytribe; their annotations named
    # ClassVar, which was not there (typeguard and friends failed).
    import typing

    for name in pytribe.__all__:
        obj = getattr(pytribe, name)
        if isinstance(obj, type):
            typing.get_type_hints(obj)
