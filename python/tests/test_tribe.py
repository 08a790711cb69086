"""A five-node tribe of Python nodes: policies, catalogs, late joiners,
moving facts, graceful close and abort."""

from __future__ import annotations

import time
from typing import Callable, Dict, List

import pytribe
from conftest import Cluster, wait_for


class Watch:
    """Every event of one node, from its start."""

    def __init__(self, node: pytribe.Node) -> None:
        self.node = node
        self.events = node.events()
        self.seen: List[pytribe.Event] = []

    def wait(self, what: str, pred: Callable[[pytribe.Event], bool], timeout: float = 20.0) -> pytribe.Event:
        for e in self.seen:
            if pred(e):
                return e
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            e = self.events.get(0.1)
            if e is None:
                continue
            self.seen.append(e)
            if pred(e):
                return e
        raise AssertionError(f"{self.node.name}: no {what} within {timeout} s; saw {self.seen}")


def plugin_load(tribe: str, name: str) -> Callable[[pytribe.Event], bool]:
    return lambda e: isinstance(e, pytribe.PluginLoad) and e.tribe == tribe and e.plugin.name == name


def test_five_python_nodes_form_tribes_by_policy(cluster: Cluster) -> None:
    racks = {"n1": "r1", "n2": "r1", "n3": "r1", "n4": "r2"}
    nodes: Dict[str, pytribe.Node] = {}
    watches: Dict[str, Watch] = {}
    for name, rack in racks.items():
        seeds = [nodes["n1"].addr] if nodes else []
        nodes[name] = cluster.start(name, seeds=seeds, facts={"rack": rack})
        watches[name] = Watch(nodes[name])
    wait_for("4 members everywhere", lambda: all(n.members_alive() == 4 for n in nodes.values()))
    for name in ("n1", "n2", "n3"):
        watches[name].wait("member_up of n4", lambda e: isinstance(e, pytribe.MemberUp) and e.name == "n4")

    # A policy places nodes, creating the missing tribe.
    assert nodes["n4"].tribe("core") is None
    nodes["n4"].add_policy("core", "core", 'facts.rack == "r1"')
    core = lambda n: n.tribe("core")  # noqa: E731
    wait_for(
        "core = n1..n3 everywhere",
        lambda: all(core(n) is not None and core(n).members == ("n1", "n2", "n3") for n in nodes.values()),
    )
    for name in ("n1", "n2", "n3"):
        e = watches[name].wait("tribe_joined core", lambda e: isinstance(e, pytribe.TribeJoined) and e.tribe == "core")
        assert e == pytribe.TribeJoined(tribe="core", by_hand=False, by_policy=True)
        assert e.kind == "tribe_joined"
    watches["n4"].wait("tribe_created core", lambda e: isinstance(e, pytribe.TribeCreated) and e.tribe == "core")

    # A plugin entry reaches every member as an event.
    nodes["n4"].load_plugin("core", "disk", "2", "collector")
    for name in ("n1", "n2", "n3"):
        e = watches[name].wait("plugin_load disk", plugin_load("core", "disk"))
        assert e == pytribe.PluginLoad(tribe="core", plugin=pytribe.Plugin("disk", "2", "collector"))
        assert "disk" in repr(e)
    assert not any(plugin_load("core", "disk")(e) for e in watches["n4"].seen + watches["n4"].events.drain())

    # A late joiner inherits the tribe's catalog.
    late = cluster.start("n5", seeds=[nodes["n2"].addr], facts={"rack": "r1"})
    late_watch = Watch(late)
    late_watch.wait("plugin_load disk on the late joiner", plugin_load("core", "disk"))
    nodes["n5"] = late
    watches["n5"] = late_watch
    wait_for("n5 in core everywhere", lambda: all("n5" in (core(n).members if core(n) else ()) for n in nodes.values()))

    # A fact change moves a node: n4 in, n2 out.
    nodes["n4"].set_fact("rack", "r1")
    watches["n4"].wait("plugin_load disk on n4", plugin_load("core", "disk"))
    nodes["n2"].set_fact("rack", "r2")
    watches["n2"].wait("tribe_left core", lambda e: isinstance(e, pytribe.TribeLeft) and e.tribe == "core")
    watches["n2"].wait(
        "plugin_unload disk", lambda e: isinstance(e, pytribe.PluginUnload) and e.plugin.name == "disk"
    )
    wait_for(
        "core = n1 n3 n4 n5 everywhere",
        lambda: all(core(n) is not None and core(n).members == ("n1", "n3", "n4", "n5") for n in nodes.values()),
    )

    # A graceful close is `left` everywhere; an abort is `failed` everywhere.
    nodes["n2"].close()
    nodes["n3"].abort()
    rest = [nodes[n] for n in ("n1", "n4", "n5")]

    def state_of(node: pytribe.Node, name: str) -> str:
        return next((m.state for m in node.members() if m.name == name), "unknown")

    wait_for("n2 left everywhere", lambda: all(state_of(n, "n2") == "left" for n in rest))
    wait_for("n3 failed everywhere", lambda: all(state_of(n, "n3") == "failed" for n in rest), timeout=30)
    for name in ("n1", "n4", "n5"):
        watches[name].wait("member_left n2", lambda e: isinstance(e, pytribe.MemberLeft) and e.name == "n2")
        watches[name].wait("member_failed n3", lambda e: isinstance(e, pytribe.MemberFailed) and e.name == "n3")
    wait_for("core = n1 n4 n5", lambda: all(core(n).members == ("n1", "n4", "n5") for n in rest))
    assert len({n.state_digest() for n in rest}) == 1 or wait_for(
        "same digest", lambda: len({n.state_digest() for n in rest}) == 1
    ) is None


def test_a_second_node_under_a_name_holds_it_and_the_first_says_so(cluster: Cluster) -> None:
    seed = cluster.start("seed")
    first = cluster.start("twin", [seed.addr])
    watch = Watch(first)
    wait_for("the first twin seen", lambda: any(m.name == "twin" and m.addr == first.addr for m in seed.members()))
    # Generations are start times in ms: the copy's is newer.
    time.sleep(0.05)
    second = cluster.start("twin", [seed.addr])
    wait_for("the first twin keeps out", lambda: first.name_held_by() == second.addr, timeout=30)
    watch.wait(
        "identity_claimed",
        lambda e: isinstance(e, pytribe.IdentityClaimed) and e.addr == second.addr,
    )
    assert second.name_held_by() is None
    assert next(m.addr for m in seed.members() if m.name == "twin") == second.addr
    second.abort()
    wait_for(
        "the first twin back",
        lambda: first.name_held_by() is None
        and any(m.name == "twin" and m.addr == first.addr and m.state == "alive" for m in seed.members()),
        timeout=60,
    )


def test_a_policy_guarded_with_has_does_not_fail_on_a_node_lacking_the_fact(cluster: Cluster) -> None:
    # The docs' first example: in a cluster where some nodes lack `rack`.
    node = cluster.start("no-rack")
    watch = Watch(node)
    node.add_policy("guarded", "core", 'has(facts.rack) && facts.rack == "r1"')
    node.add_policy("bare", "core", 'facts.rack == "r1"')
    watch.wait("the bare policy's failure", lambda e: isinstance(e, pytribe.PolicyFailed) and e.policy == "bare")
    failed = [e.policy for e in watch.seen + watch.events.drain() if isinstance(e, pytribe.PolicyFailed)]
    assert failed == ["bare"], failed
    assert node.tribe("core") is None


def test_a_join_through_a_silent_peer_is_given_up_at_its_timeout_or_cancel(cluster: Cluster) -> None:
    import asyncio
    import socket

    # A peer that takes connections and never answers: a join waits 10 s.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        place = "127.0.0.1:%d" % silent.getsockname()[1]
        a = cluster.start("pjt-a")
        b = cluster.start("pjt-b")
        began = time.monotonic()
        try:
            b.join_cluster(place, timeout=0.3)
            raise AssertionError("a join through a silent peer ended")
        except pytribe.JoinTimeoutError as e:
            assert isinstance(e, TimeoutError) and e.code == "timeout", e
        assert time.monotonic() - began < 3, time.monotonic() - began
        # What the join reached by its timeout counts: a live peer beside
        # the silent one.
        began = time.monotonic()
        assert b.join_cluster(place, a.addr, timeout=1.0) == 1
        assert 0.9 < time.monotonic() - began < 5, time.monotonic() - began
        # A refusal heard by the timeout is told, not hidden behind it.
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            refusing = "127.0.0.1:%d" % closed.getsockname()[1]
        try:
            b.join_cluster(place, refusing, timeout=1.0)
            raise AssertionError("a join through a silent and a refusing peer ended")
        except pytribe.TribeIOError as e:
            assert refusing in str(e) and "still under way" in str(e), e

        async def within() -> int:
            return await b.join_cluster_async(place, a.addr, timeout=1.0)

        assert asyncio.run(within()) == 1

        async def cancelled() -> None:
            task = asyncio.ensure_future(b.join_cluster_async(place))
            await asyncio.sleep(0.1)
            task.cancel()
            try:
                await task
                raise AssertionError("a cancelled join ended")
            except asyncio.CancelledError:
                pass
            try:
                await asyncio.wait_for(b.join_cluster_async(place), 0.1)
                raise AssertionError("a join past asyncio.wait_for's timeout ended")
            except asyncio.TimeoutError:
                pass

        began = time.monotonic()
        asyncio.run(cancelled())
        assert time.monotonic() - began < 3, time.monotonic() - began
        # Given-up joins leave nothing behind: many more, then a real one.
        for _ in range(20):
            try:
                b.join_cluster(place, timeout=0.02)
            except pytribe.JoinTimeoutError:
                pass

        async def joins() -> int:
            return await b.join_cluster_async(a.addr)

        assert asyncio.run(joins()) == 1
        assert b.join_cluster(a.addr, timeout=10) == 1


def test_a_node_started_alone_joins_a_running_one_later(cluster: Cluster) -> None:
    a = cluster.start("pjoin-a")
    a.create_tribe("web")
    b = cluster.start("pjoin-b")
    assert b.join_cluster(a.addr) == 1
    # The exchange has ended: b holds a's state already.
    assert "web" in [t.name for t in b.tribes()]
    wait_for(
        "both alive on both",
        lambda: all(sum(m.state == "alive" for m in n.members()) == 2 for n in (a, b)),
    )

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = "127.0.0.1:%d" % s.getsockname()[1]
    c = cluster.start("pjoin-c")
    try:
        c.join_cluster(dead)
        raise AssertionError("a join through a dead port succeeded")
    except pytribe.TribeIOError as e:
        assert dead in str(e)
    for bad in [(), ("no-port",), ("127.0.0.1:0",), (c.addr,)]:
        try:
            c.join_cluster(*bad)
            raise AssertionError(f"join_cluster{bad!r} succeeded")
        except pytribe.InvalidArgumentError:
            pass
    for wrong, kind in [(7946, "int"), (["a:1"], "list"), (b"a:1", "bytes")]:
        try:
            c.join_cluster(wrong)  # type: ignore[arg-type]
            raise AssertionError(f"a {kind} place was taken")
        except TypeError as e:
            assert f"places[0] must be str, not {kind}" in str(e), e
    c.close()
    try:
        c.join_cluster(a.addr)
        raise AssertionError("a closed node joined")
    except pytribe.ShutdownError:
        pass


def test_reap_after_forgets_a_failed_member_sooner_than_the_profile(cluster: Cluster) -> None:
    try:
        pytribe.Node.check_config("reaper", reap_after=True)
        raise AssertionError("reap_after=True was taken")
    except TypeError:
        pass
    for bad in (0, -1.0, 0.0005, 366 * 24 * 3600.0, float("nan"), float("inf"), 10**400):
        try:
            pytribe.Node.check_config("reaper", reap_after=bad)
            raise AssertionError(f"reap_after={bad} was taken")
        except pytribe.InvalidArgumentError:
            pass
    a = cluster.start("reap-a", reap_after=1.5)
    b = cluster.start("reap-b", seeds=[a.addr])
    wait_for("both alive", lambda: sum(m.state == "alive" for m in a.members()) == 2)
    b.abort()
    # Found failed within seconds, then forgotten 1.5 s later: the local
    # profile's own 5 min would keep it listed past this wait.
    wait_for("the failed member forgotten", lambda: len(a.members()) == 1, timeout=40)
