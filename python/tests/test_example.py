"""The example collector publishes through a tribe to an agent's file publisher."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import Agent, Cluster, keygen_with, wait_for

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "collector.py"


def test_collector_example_publishes_to_a_tribe_agent(cluster: Cluster, tribe_bin: str, tmp_path: Any) -> None:
    key = keygen_with(tribe_bin)
    out = tmp_path / "published.jsonl"
    agent = Agent(tribe_bin, tmp_path, "store", ["--key", key, "--fact", "storage_tier=true", "--publish-file", str(out)])
    try:
        admin = cluster.start("admin", seeds=[agent.gossip], key=key)
        admin.add_policy("storage", "storage", 'facts.storage_tier == "true"')
        admin.add_policy("core", "core", 'facts.os_dist == "ubuntu"')
        wait_for("the agent in storage", lambda: (admin.tribe("storage") or None) is not None
                 and admin.tribe("storage").members == ("store",))  # type: ignore[union-attr]
        run = subprocess.run(
            [sys.executable, str(EXAMPLE), "--name", "pycol", "--seed", agent.gossip, "--key", key,
             "--fact", "os_dist=ubuntu", "--count", "2", "--interval", "0.2"],
            capture_output=True, text=True, timeout=60,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert "TribeJoined(tribe='core'" in run.stdout, run.stdout
        assert run.stdout.count("published 6 metrics through storage") == 2, run.stdout
        lines = [json.loads(ln) for ln in out.read_text().splitlines()]
        mine = [m for m in lines if m.get("tags", {}).get("source") == "pycol"]
        assert {m["name"] for m in mine} >= {"load/1min", "mem/total_kb"}
    finally:
        agent.stop()
