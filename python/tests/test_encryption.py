"""Nodes with the same key form a tribe; a wrong key or none learns nothing."""

from __future__ import annotations

import os
import time

import pytest

import pytribe
from conftest import Cluster, wait_for


def test_same_key_forms_a_tribe_wrong_key_or_none_learns_no_member(cluster: Cluster) -> None:
    key = pytribe.keygen()
    a = cluster.start("sealed-a", key=key)
    b = cluster.start("sealed-b", seeds=[a.addr], key=key)
    wait_for("two sealed members", lambda: a.members_alive() == 2 and b.members_alive() == 2)
    a.create_tribe("secure")
    wait_for("the tribe on b", lambda: b.tribe("secure") is not None)
    a.join("secure")
    b.join("secure")
    wait_for("both in the tribe", lambda: a.tribe("secure").members == ("sealed-a", "sealed-b"))  # type: ignore[union-attr]
    keys = a.keys()
    assert keys.encryption == "require" and keys.primary == pytribe.key_id(key)
    assert keys.keys[0].installed_on == ("sealed-a", "sealed-b")
    status = a.status()
    assert (status.encryption, status.primary_key, status.members_alive) == ("require", pytribe.key_id(key), 2)
    with pytest.raises(pytribe.InvalidArgumentError, match="^invalid argument: expected a key"):
        a.use_key("xyz")

    wrong = cluster.start("wrong-key", seeds=[a.addr], key=pytribe.keygen())
    plain = cluster.start("no-key", seeds=[a.addr])
    time.sleep(3)
    for outsider in (wrong, plain):
        assert [m.name for m in outsider.members()] == [outsider.name]
        assert outsider.tribes() == []
    assert sorted(m.name for m in a.members()) == ["sealed-a", "sealed-b"]


def test_a_key_file_and_extra_keys_open_traffic_sealed_with_either(cluster: Cluster, tmp_path: "os.PathLike[str]") -> None:
    old, new = pytribe.keygen(), pytribe.keygen()
    # Started in the middle of a rotation: each seals with one key and opens both.
    a = cluster.start("ring-a", key=old, extra_keys=[new])
    key_file = os.path.join(os.fspath(tmp_path), "new.key")
    with open(key_file, "w") as f:
        f.write(new + "\n")
    b = cluster.start("ring-b", seeds=[a.addr], key_file=key_file, extra_keys=[old])
    wait_for("two members", lambda: a.members_alive() == 2 and b.members_alive() == 2)
    assert (a.keys().primary, b.keys().primary) == (pytribe.key_id(old), pytribe.key_id(new))
    assert sorted(k.id for k in b.keys().keys) == sorted(map(pytribe.key_id, (old, new)))
    with pytest.raises(pytribe.ConfigError, match="both"):
        pytribe.Node("ring-c", key=old, key_file=key_file)
    with pytest.raises(pytribe.ConfigError, match="extra_keys need a key"):
        pytribe.Node("ring-c", extra_keys=[old])
    with pytest.raises(pytribe.TribeIOError, match="cannot read key file"):
        pytribe.Node("ring-c", key_file=key_file + ".missing")


def test_key_rotation_through_python(cluster: Cluster) -> None:
    k1, k2 = pytribe.keygen(), pytribe.keygen()
    a = cluster.start("rot-a", key=k1)
    b = cluster.start("rot-b", seeds=[a.addr], key=k1)
    wait_for("two members", lambda: a.members_alive() == 2)
    assert a.install_key(k2) == pytribe.key_id(k2)
    wait_for("k2 everywhere", lambda: any(k.id == pytribe.key_id(k2) and len(k.installed_on) == 2 for k in b.keys().keys))
    b.use_key(pytribe.key_id(k2))
    wait_for("k2 primary everywhere", lambda: any(k.id == pytribe.key_id(k2) and len(k.primary_on) == 2 for k in a.keys().keys))
    try:
        a.remove_key(k2)
    except pytribe.PrimaryKeyError as e:
        assert e.code == "primary_key"
    else:  # pragma: no cover
        raise AssertionError("removing the primary must fail")
    a.remove_key(k1)
    wait_for("only k2", lambda: [k.id for k in a.keys().keys] == [pytribe.key_id(k2)])


def test_a_node_left_behind_by_a_rotation_says_so_and_comes_back_with_the_key(cluster: Cluster) -> None:
    current = pytribe.keygen()
    a = cluster.start("behind-a", key=current)
    stale = cluster.start("behind-stale", seeds=[a.addr], key=pytribe.keygen())
    wait_for("the refusal shown", lambda: stale.key_refused_by() == a.addr)
    assert a.key_refused_by() is None and stale.members_alive() == 1
    stale.install_key(current)
    wait_for("back in the tribe", lambda: stale.members_alive() == 2 and stale.key_refused_by() is None)
