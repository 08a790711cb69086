"""A Python node and a `tribe agent` process in one encrypted tribe."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Dict, Iterator, List

import pytest

import pytribe
from conftest import Agent, Cluster, keygen_with, wait_for


@pytest.fixture
def agent(tribe_bin: str, tmp_path: Any) -> Iterator[Dict[str, Any]]:
    key = keygen_with(tribe_bin)
    a = Agent(tribe_bin, tmp_path, "agent-1", ["--key", key])
    try:
        yield {"key": key, "gossip": a.gossip, "admin": a.admin}
    finally:
        a.stop()


def test_python_calls_the_agents_tag_and_the_agents_task_publishes_to_python(
    cluster: Cluster, agent: Dict[str, Any]
) -> None:
    py = cluster.start("py-1", seeds=[agent["gossip"]], key=agent["key"])
    wait_for("the agent and the python node", lambda: py.members_alive() == 2)
    for t in ("core", "storage", "work"):
        py.create_tribe(t)
    py.join("core")
    py.join("core", node="agent-1")
    py.join("storage")
    py.join("work", node="agent-1")

    def agent_serves(name: str) -> bool:
        return any(e.name == name for m in py.members() if m.name == "agent-1" for e in m.endpoints)

    wait_for("core = agent + python", lambda: py.tribe("core").members == ("agent-1", "py-1"))  # type: ignore[union-attr]
    wait_for("the agent's tag endpoint", lambda: agent_serves("tag"))

    # Python → the agent's built-in tag processor.
    request = {"config": {"team": "py"}, "metrics": [{"name": "load/1min", "value": 0.5, "timestamp_ms": int(time.time() * 1000)}]}
    # The agent serves calls through `core` once it knows it is in it.
    replies: List[bytes] = []

    def tag_answers() -> bool:
        try:
            replies.append(py.call("core", "tag", json.dumps(request).encode(), kind="processor", timeout=5.0))
            return True
        except pytribe.NoProviderError:
            return False

    wait_for("the agent to answer through core", tag_answers)
    reply = json.loads(replies[0])
    assert reply[0]["name"] == "load/1min" and reply[0]["value"] == 0.5
    tags = reply[0]["tags"]
    assert tags["team"] == "py" and tags["tagged_by"] == "agent-1" and tags["caller"] == "py-1"

    # The agent's task → a publisher served by Python, through `storage`.
    got: List[Dict[str, Any]] = []
    lock = threading.Lock()

    def sink(payload: bytes, info: pytribe.CallInfo) -> bytes:
        body = json.loads(payload)
        with lock:
            got.extend(body["metrics"])
        assert info.caller == "agent-1" and info.tribe == "storage"
        return str(len(body["metrics"])).encode()

    py.serve("pysink", "1", "publisher", sink)
    wait_for("storage = python", lambda: py.tribe("storage").members == ("py-1",))  # type: ignore[union-attr]
    py.add_task(
        "work",
        "load",
        {
            "schedule": {"interval": "200ms"},
            "collect": {"plugin": "proc", "metrics": ["load/*"]},
            "process": [{"plugin": "tag", "config": {"team": "ops"}}],
            "publish": [{"plugin": "pysink", "tribe": "storage"}],
        },
    )
    wait_for("the agent's metrics at the python sink", lambda: any(m.get("tags", {}).get("team") == "ops" for m in got))
    with lock:
        names = {m["name"] for m in got}
    assert names <= {"load/1min", "load/5min", "load/15min"} and names
    py.set_task_state("work", "load", "stopped")
