"""asyncio: events as an async iterator, calls awaited on the running loop."""

from __future__ import annotations

import asyncio
import threading

import pytribe
from conftest import Cluster, start, wait_for


def test_aevents_follow_the_node_and_a_cancelled_wait_loses_nothing(cluster: Cluster) -> None:
    a = cluster.start("aio-a")

    async def main() -> None:
        events = a.aevents()
        # A wait that is cancelled leaves the subscriber intact.
        pending = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0.05)
        pending.cancel()
        try:
            await pending
        except asyncio.CancelledError:
            pass
        a.create_tribe("async")
        a.join("async")
        seen = []
        async for event in events:
            seen.append(event)
            if isinstance(event, pytribe.TribeJoined):
                break
        assert pytribe.TribeCreated(tribe="async") in seen
        assert seen[-1] == pytribe.TribeJoined(tribe="async", by_hand=True, by_policy=False)

        # Other coroutines run while a call is in flight.
        a.serve("echo", "1", "processor", lambda p, i: bytes(p))
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            for _ in range(5):
                ticks += 1
                await asyncio.sleep(0.01)

        reply, _ = await asyncio.gather(a.call_async("async", "echo", b"ping", timeout=5.0), tick())
        assert reply == b"ping" and ticks == 5

        # The iterator ends when the node stops.
        b = cluster.start("aio-b")
        tail = b.aevents()
        b.close()
        rest = [e async for e in tail]
        assert all(isinstance(e, pytribe.Event) for e in rest)

    wait_for("a alone", lambda: a.members_alive() == 1)
    asyncio.run(main())


def test_cancelled_anext_loses_no_event() -> None:
    node = start("anext-cancel")
    count = 2000

    async def main() -> int:
        events = node.aevents()
        producer = threading.Thread(target=lambda: [node.create_tribe(f"x{i}") for i in range(count)])
        producer.start()
        got = set()
        while producer.is_alive():
            try:
                e = await asyncio.wait_for(events.__anext__(), 0.0005)
                got.add(getattr(e, "tribe", None))
            except asyncio.TimeoutError:
                pass
        # The rest, until every one came or none for a long while (the
        # producer is done: a lost event never comes).
        xs = {t for t in got if t and t.startswith("x")}
        while len(xs) < count:
            try:
                e = await asyncio.wait_for(events.__anext__(), 10.0)
            except asyncio.TimeoutError:
                break
            t = getattr(e, "tribe", None)
            if t and t.startswith("x"):
                xs.add(t)
        return len(xs)

    assert asyncio.run(main()) == count
    node.close()


def test_a_subscriber_outlives_its_event_loop() -> None:
    """A wait left pending when its loop ends (a timeout, a test's loop
    closed) must not take the next event into that dead loop."""
    node = start("aio-loops")
    events = node.aevents()

    async def first() -> None:
        # Times out: the take it started is still waiting when the loop ends.
        try:
            await asyncio.wait_for(events.__anext__(), 0.2)
        except asyncio.TimeoutError:
            pass
        # Drain what start queued, so the next event is the tribe's.
        while True:
            try:
                await asyncio.wait_for(events.__anext__(), 0.3)
            except asyncio.TimeoutError:
                return

    async def second() -> pytribe.AnyEvent:
        node.create_tribe("after-loop")
        return await asyncio.wait_for(events.__anext__(), 5.0)

    asyncio.run(first())
    loop = asyncio.new_event_loop()
    # A loop closed under a pending wait, without cancelling it.
    stale = loop.create_task(events.__anext__())
    loop.run_until_complete(asyncio.sleep(0.05))
    loop.close()
    del stale
    assert asyncio.run(second()) == pytribe.TribeCreated(tribe="after-loop")
    node.close()
