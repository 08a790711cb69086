"""The checks that need no node (C's tribe_name_check, tribe_version_check,
tribe_step_request_check and tribe_config_check): pytribe.check_name,
check_version, check_step_request and Node.check_config."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Type

import pytest

import pytribe

from conftest import start

# As the agent's publishers receive it (C's misuse.c checks the same one).
TWO_METRICS = json.dumps(
    {
        "config": {"path": "/tmp/out"},
        "metrics": [
            {"name": "load/1min", "value": 0.5, "tags": {"host": "n1"}, "timestamp_ms": 1},
            {"name": "load/5min", "value": 0.25, "timestamp_ms": 2},
        ],
    }
).encode()


# ------------------------------------------------------------------ names


@pytest.mark.parametrize("name", ["a", "node-1", "9lives", "a_b.c:d@e", "x" * 64])
def test_check_name_passes_good_names(name: str) -> None:
    assert pytribe.check_name(name) is None


@pytest.mark.parametrize(
    "name, reason",
    [
        ("", "is empty"),
        ("x" * 65, "is longer than 64 bytes"),
        ("-lead", "must start with an ASCII letter or digit"),
        ("_lead", "must start with an ASCII letter or digit"),
        ("a b", "may hold only ASCII letters, digits and _ - . : @"),
        ("a/b", "may hold only ASCII letters, digits and _ - . : @"),
        ("nœud", "may hold only ASCII letters, digits and _ - . : @"),
    ],
)
def test_check_name_says_which_rule_a_bad_name_breaks(name: str, reason: str) -> None:
    with pytest.raises(pytribe.InvalidNameError) as e:
        pytribe.check_name(name)
    assert e.value.code == "invalid_name"
    assert e.value.reason == reason
    assert e.value.what == "name"
    assert reason in str(e.value)
    assert isinstance(e.value, ValueError)


def test_check_name_refuses_what_is_not_text() -> None:
    with pytest.raises(TypeError, match="check_name: name must be str, not int"):
        pytribe.check_name(5)  # type: ignore[arg-type]
    with pytest.raises(pytribe.InvalidArgumentError, match="check_name: name holds text"):
        pytribe.check_name("a\udcff")


def test_check_name_agrees_with_what_a_node_refuses() -> None:
    # The same rules as a command's: a tribe name it refuses is refused here.
    with start("names") as node:
        with pytest.raises(pytribe.InvalidNameError):
            node.create_tribe("-bad")
    with pytest.raises(pytribe.InvalidNameError):
        pytribe.check_name("-bad")


# --------------------------------------------------------------- versions


@pytest.mark.parametrize("version", ["1", "1.2.3-rc1", "v2@x", "9" * 32])
def test_check_version_passes_good_versions(version: str) -> None:
    assert pytribe.check_version(version) is None


@pytest.mark.parametrize(
    "version, reason",
    [
        ("9" * 33, "is longer than 32 bytes"),
        ("", "is empty"),
        ("1 2", "may hold only ASCII letters, digits and _ - . : @"),
        (".1", "must start with an ASCII letter or digit"),
    ],
)
def test_check_version_says_which_rule_a_bad_version_breaks(version: str, reason: str) -> None:
    with pytest.raises(pytribe.InvalidNameError) as e:
        pytribe.check_version(version)
    assert e.value.reason == reason
    assert e.value.what == "plugin version" and e.value.name == version
    assert "plugin version" in str(e.value)


# ---------------------------------------------------------- step requests


def test_check_step_request_counts_the_metrics_of_a_good_batch() -> None:
    assert pytribe.check_step_request(TWO_METRICS) == 2
    assert pytribe.check_step_request(bytearray(TWO_METRICS)) == 2
    assert pytribe.check_step_request(memoryview(TWO_METRICS)) == 2
    assert pytribe.check_step_request(b'{"metrics": []}') == 0


@pytest.mark.parametrize(
    "payload, why",
    [
        (b"", "EOF while parsing"),
        (b"not json", "expected"),
        (b'{"metrics": []} xyz', "trailing characters"),
        (b'{"metrics": [{"value": 1, "timestamp_ms": 1}]}', "missing field `name`"),
        (b'{"metrics": [{}]}', "missing field `name`"),
        (b'{"config": {}}', "missing field `metrics`"),
        (b"[]", "step request"),
    ],
)
def test_check_step_request_says_what_is_wrong(payload: bytes, why: str) -> None:
    with pytest.raises(pytribe.InvalidArgumentError) as e:
        pytribe.check_step_request(payload)
    assert e.value.code == "invalid_argument"
    assert why in str(e.value), e.value


def test_check_step_request_wants_bytes() -> None:
    with pytest.raises(TypeError, match="check_step_request: payload must be bytes, bytearray or memoryview, not str"):
        pytribe.check_step_request(TWO_METRICS.decode())  # type: ignore[arg-type]


# ---------------------------------------------------------------- configs


def test_check_config_passes_a_good_config(tmp_path: Path) -> None:
    key = pytribe.keygen()
    assert pytribe.Node.check_config("checked") is None
    assert (
        pytribe.Node.check_config(
            "checked",
            bind="0.0.0.0:0",
            seeds=["127.0.0.1:7946", "seed.example:7946"],
            facts={"rack": "r1"},
            key=key,
            profile="wan",
            label="prod",
            encryption="send",
            data_dir=tmp_path / "kept",
            advertise="127.0.0.1:0",
            collect_facts=False,
            max_payload=1 << 20,
            limits={"tribes": 10, "max_streams": 8},
            handler_threads=2,
            extra_keys=[pytribe.keygen()],
        )
        is None
    )


def test_check_config_creates_no_data_dir(tmp_path: Path) -> None:
    missing = tmp_path / "a" / "b"
    pytribe.Node.check_config("checked", data_dir=missing)
    assert not missing.exists() and not (tmp_path / "a").exists()
    # An existing one is left as it was.
    existing = tmp_path / "existing"
    existing.mkdir(mode=0o700)
    pytribe.Node.check_config("checked", data_dir=existing)
    assert list(existing.iterdir()) == []


def test_check_config_binds_no_socket() -> None:
    # Checked twice on one fixed port, then the port is still free to bind.
    with start("port-owner") as node:
        port = int(node.addr.rsplit(":", 1)[1])
    pytribe.Node.check_config("a", bind=f"127.0.0.1:{port}")
    pytribe.Node.check_config("b", bind=f"127.0.0.1:{port}")
    with start("port-user", bind=f"127.0.0.1:{port}") as again:
        assert again.addr.endswith(f":{port}")


def _world_writable(tmp_path: Path) -> Dict[str, Any]:
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o777)
    return {"data_dir": str(d)}


BAD_CONFIGS = [
    ("bad bind", lambda _: {"bind": "no-port"}, pytribe.InvalidArgumentError, "no port"),
    ("bad bind port", lambda _: {"bind": "127.0.0.1:99999"}, pytribe.InvalidArgumentError, "port"),
    (
        "unspecified bind",
        lambda _: {"bind": "0.0.0.0:0"},
        pytribe.ConfigError,
        "needs an advertise address",
    ),
    ("bad name", lambda _: {"name": "-node"}, pytribe.InvalidNameError, "must start with"),
    ("bad name chars", lambda _: {"name": "my node"}, pytribe.InvalidNameError, "may hold only"),
    ("encryption without key", lambda _: {"encryption": "require"}, pytribe.ConfigError, "needs a key"),
    ("key and key_file", lambda p: {"key": pytribe.keygen(), "key_file": str(p / "k")}, pytribe.ConfigError, "both"),
    ("bad key", lambda _: {"key": "zz"}, pytribe.InvalidArgumentError, ""),
    ("unknown profile", lambda _: {"profile": "moon"}, pytribe.InvalidArgumentError, "moon"),
    ("payload too large", lambda _: {"max_payload": 1 << 31}, pytribe.ConfigError, "max payload"),
    ("unknown limit", lambda _: {"limits": {"planets": 1}}, pytribe.InvalidArgumentError, "planets"),
    ("world-writable data dir", _world_writable, pytribe.ConfigError, "writable by every user"),
]


@pytest.mark.parametrize(
    "make, error, why", [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS]
)
def test_check_config_raises_what_the_start_raises(
    tmp_path: Path, make: Any, error: Type[pytribe.TribeError], why: str
) -> None:
    kwargs: Dict[str, Any] = {"name": "checked", "profile": "local", "collect_facts": False}
    kwargs.update(make(tmp_path))
    with pytest.raises(error) as checked:
        pytribe.Node.check_config(**kwargs)
    assert type(checked.value) is error
    assert why in str(checked.value), checked.value
    # The start refuses it alike, with the same class and message.
    with pytest.raises(error) as started:
        pytribe.Node(**kwargs)
    assert type(started.value) is error
    assert str(started.value) == str(checked.value)


def test_check_config_refuses_another_nodes_data_dir_but_not_a_running_owner(tmp_path: Path) -> None:
    kept = tmp_path / "kept"
    start("owner", data_dir=kept).close()  # its state is kept at the close
    pytribe.Node.check_config("owner", data_dir=kept)
    with pytest.raises(pytribe.ConfigError, match='belongs to node "owner"'):
        pytribe.Node.check_config("intruder", data_dir=kept)
    with start("owner", data_dir=kept):
        # Its owner runs (and holds the dir's lock): a daemon's check made
        # meanwhile passes, another name is still refused.
        pytribe.Node.check_config("owner", data_dir=kept)
        with pytest.raises(pytribe.ConfigError, match='belongs to node "owner"'):
            pytribe.Node.check_config("intruder", data_dir=kept)


def test_check_config_reads_a_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "current.key"
    key_file.write_text(pytribe.keygen() + "\n")
    pytribe.Node.check_config("keyed", key_file=key_file, encryption="require")
    with pytest.raises(pytribe.TribeIOError, match="cannot read key file"):
        pytribe.Node.check_config("keyed", key_file=tmp_path / "missing.key")
    # A FIFO without a writer, or a device, is refused at once (not waited on).
    fifo = tmp_path / "fifo.key"
    os.mkfifo(fifo)
    for odd in (fifo, Path("/dev/zero")):
        with pytest.raises(pytribe.ConfigError, match="not a regular file"):
            pytribe.Node.check_config("keyed", key_file=odd)
        with pytest.raises(pytribe.ConfigError, match="not a regular file"):
            pytribe.Node("keyed", key_file=odd)


def test_check_config_names_itself_in_type_errors() -> None:
    with pytest.raises(TypeError, match="Node.check_config: seeds must be a list of strings"):
        pytribe.Node.check_config("typed", seeds="127.0.0.1:7946")
    with pytest.raises(TypeError, match="Node.check_config: name must be str, not int"):
        pytribe.Node.check_config(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Node.check_config: handler_threads must be an int"):
        pytribe.Node.check_config("typed", handler_threads="4")  # type: ignore[arg-type]
    with pytest.raises(pytribe.InvalidArgumentError, match="handler_threads must be 1..256"):
        pytribe.Node.check_config("typed", handler_threads=0)


def test_the_checks_are_exported() -> None:
    for name in ("check_name", "check_version", "check_step_request"):
        assert name in pytribe.__all__
        assert callable(getattr(pytribe, name))
        assert getattr(pytribe, name).__doc__
    assert pytribe.Node.check_config.__doc__
    assert "needs no node" in pytribe.check_name.__doc__.lower()  # type: ignore[union-attr]
