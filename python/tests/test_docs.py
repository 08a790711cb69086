"""The Python snippets of the README and docs/python.md, run as written
(only the seed's address and the key are this test's) against a tribe that
already has `core`, as the demo's has."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

import pytribe

from conftest import Cluster

ROOT = Path(__file__).resolve().parents[2]


def snippet(doc: str, marker: str) -> str:
    """The first ```python block of `doc` that holds `marker`."""
    text = (ROOT / doc).read_text()
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        if marker in block:
            return block
    raise AssertionError(f"{doc}: no python block holds {marker!r}")


@pytest.mark.parametrize("doc", ["README.md", "docs/python.md"])
def test_the_few_lines_call_through_a_tribe_made_by_a_peer(cluster: Cluster, doc: str) -> None:
    key = pytribe.keygen()
    seed = cluster.start("seed", key=key)
    seed.create_tribe("core")
    code = snippet(doc, 'node.call("core", "upper"')
    code = code.replace('["127.0.0.1:7946"]', repr([seed.addr]))
    code = code.replace('open("current.key").read().strip()', repr(key))
    # Run twice: the second run finds the policy the first one left.
    for _ in range(2):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, doc, "exec"), {"key": key})
        assert out.getvalue().strip() == "b'HELLO'"
