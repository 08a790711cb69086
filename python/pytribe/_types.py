"""Snapshots and events: frozen dataclasses in the admin API's JSON schema.

Lists are tuples and mappings are read-only, so a snapshot never changes
after it was taken; equal snapshots compare equal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, Literal, NoReturn, Optional, Tuple, TypeVar, Union

_V = TypeVar("_V")


class FrozenMap(Dict[str, _V]):
    """A read-only dict: ``json.dumps`` and ``dataclasses.asdict`` take it
    as a dict, ``m | other`` gives a new plain dict, and, unlike
    ``MappingProxyType``, it hashes, pickles and copies, so the snapshots
    holding one do too. Its mutators raise ``TypeError``."""

    __slots__ = ("_hash",)
    _hash: Optional[int]

    def __new__(cls, d: Any = None) -> FrozenMap[_V]:
        # Filled here: ``__init__`` is a no-op, so calling it again cannot
        # change the contents.
        self = super().__new__(cls)
        dict.update(self, d or {})
        self._hash = None
        return self

    def __init__(self, d: Any = None) -> None:
        pass

    def __hash__(self) -> int:  # type: ignore[override]
        if self._hash is None:
            self._hash = hash(frozenset(self.items()))
        return self._hash

    def _refuse(self, *_args: object, **_kwargs: object) -> NoReturn:
        raise TypeError("a pytribe snapshot's mapping is read-only (dict(m) gives a mutable copy)")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> Tuple[Any, ...]:
        return (FrozenMap, (dict(self),))

    def __copy__(self) -> FrozenMap[_V]:
        return self

    def __deepcopy__(self, memo: Dict[int, Any]) -> FrozenMap[_V]:
        return self


def _ro(d: Optional[Dict[str, Any]]) -> FrozenMap[Any]:
    return FrozenMap(d)


@dataclass(frozen=True)
class Endpoint:
    """A plugin a member serves, with the address that serves its calls."""

    name: str
    version: str
    kind: str
    addr: str


@dataclass(frozen=True)
class Member:
    """A member as this node sees it."""

    name: str
    addr: str
    #: ``"alive"``, ``"suspect"``, ``"failed"`` or ``"left"``.
    state: str
    generation: int
    #: Read-only; ``facts | {...}`` and ``dict(facts)`` give plain dicts.
    facts: FrozenMap[str]
    #: Tribes whose live view holds it; for a failed or left member, the
    #: tribes it would be in were it up.
    tribes: Tuple[str, ...]
    endpoints: Tuple[Endpoint, ...]
    #: Whether it is the node answering.
    local: bool

    @classmethod
    def _from(cls, d: Dict[str, Any]) -> Member:
        return cls(
            name=d["name"],
            addr=d["addr"],
            state=d["state"],
            generation=d["generation"],
            facts=_ro(d["facts"]),
            tribes=tuple(d["tribes"]),
            endpoints=tuple(Endpoint(**e) for e in d["endpoints"]),
            local=d["local"],
        )


@dataclass(frozen=True)
class Plugin:
    """A plugin entry of a tribe's catalog."""

    name: str
    version: str
    #: ``"collector"``, ``"processor"`` or ``"publisher"``.
    kind: str
    #: Hex SHA-256 of the artifact, when the entry has one.
    sha256: Optional[str] = None
    size: Optional[int] = None

    @classmethod
    def _from(cls, d: Dict[str, Any]) -> Plugin:
        return cls(d["name"], d["version"], d["kind"], d.get("sha256"), d.get("size"))


@dataclass(frozen=True)
class Task:
    """A task of a tribe."""

    id: str
    #: ``"running"`` or ``"stopped"``.
    state: str
    #: The manifest, as JSON text (``.manifest_dict()`` parses it).
    manifest: str

    def manifest_dict(self) -> Dict[str, Any]:
        """The manifest as a new dict."""
        out: Dict[str, Any] = json.loads(self.manifest)
        return out

    @classmethod
    def _from(cls, d: Dict[str, Any]) -> Task:
        return cls(d["id"], d["state"], _manifest_text(d["manifest"]))


def _manifest_text(m: Any) -> str:
    return m if isinstance(m, str) else json.dumps(m, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Tribe:
    """A tribe with its live view and catalog."""

    name: str
    #: Live members (by hand or by policy, and up), sorted.
    members: Tuple[str, ...]
    #: Members by hand, up or not.
    explicit_members: Tuple[str, ...]
    plugins: Tuple[Plugin, ...]
    tasks: Tuple[Task, ...]

    @classmethod
    def _from(cls, d: Dict[str, Any]) -> Tribe:
        return cls(
            name=d["name"],
            members=tuple(d["members"]),
            explicit_members=tuple(d["explicit_members"]),
            plugins=tuple(Plugin._from(p) for p in d["plugins"]),
            tasks=tuple(Task._from(t) for t in d["tasks"]),
        )


@dataclass(frozen=True)
class Policy:
    """A policy: nodes whose facts make ``when`` hold are in ``tribe``."""

    name: str
    tribe: str
    when: str


@dataclass(frozen=True)
class Status:
    """This node at a glance, as the admin API's ``GET /v1/status``."""

    name: str
    addr: str
    #: Members alive, this node included.
    members_alive: int
    #: Equal on converged nodes.
    state_digest: str
    #: Tribes that exist.
    tribes: int
    #: Gossip messages waiting to be sent.
    broadcast_backlog: int
    #: The library's version.
    version: str
    #: ``"off"`` without a keyring, else the mode (``accept``, ``send``, ``require``).
    encryption: str
    #: The primary key's id; None without a keyring.
    primary_key: Optional[str]
    #: See ``Node.name_held_by()``.
    name_held_by: Optional[str]
    #: See ``Node.key_refused_by()``.
    key_refused_by: Optional[str]

    @classmethod
    def _from(cls, d: Dict[str, Any]) -> Status:
        return cls(
            name=d["name"],
            addr=d["addr"],
            members_alive=d["members_alive"],
            state_digest=d["state_digest"],
            tribes=d["tribes"],
            broadcast_backlog=d["broadcast_backlog"],
            version=d["version"],
            encryption=d["encryption"],
            primary_key=d.get("primary_key"),
            name_held_by=d.get("name_held_by"),
            key_refused_by=d.get("key_refused_by"),
        )


@dataclass(frozen=True)
class KeyHolding:
    """One key across the live members (ids only, never keys)."""

    id: str
    installed_on: Tuple[str, ...]
    primary_on: Tuple[str, ...]


@dataclass(frozen=True)
class Keys:
    """Which live nodes hold which keys."""

    #: This node's mode (``accept``, ``send``, ``require``), None without a key.
    encryption: Optional[str]
    #: This node's primary key id.
    primary: Optional[str]
    #: Live members counted, this node included.
    members: int
    keys: Tuple[KeyHolding, ...]

    @classmethod
    def _from(cls, d: Dict[str, Any]) -> Keys:
        return cls(
            encryption=d["encryption"],
            primary=d["primary"],
            members=d["members"],
            keys=tuple(
                KeyHolding(k["id"], tuple(k["installed_on"]), tuple(k["primary_on"]))
                for k in d["keys"]
            ),
        )


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class Event:
    """Base of every event; ``kind`` names the kind."""

    kind: ClassVar[str] = "event"


@dataclass(frozen=True)
class Joined(Event):
    """This node joined a cluster (it has a live peer)."""

    kind: ClassVar[Literal["joined"]] = "joined"


@dataclass(frozen=True)
class Isolated(Event):
    """This node lost every peer; it keeps trying its seeds."""

    kind: ClassVar[Literal["isolated"]] = "isolated"


@dataclass(frozen=True)
class MemberUp(Event):
    """A node became alive."""

    kind: ClassVar[Literal["member_up"]] = "member_up"
    name: str
    addr: str


@dataclass(frozen=True)
class MemberUpdated(Event):
    """A node's record (facts, endpoints) changed."""

    kind: ClassVar[Literal["member_updated"]] = "member_updated"
    name: str


@dataclass(frozen=True)
class MemberLeft(Event):
    """A node left on purpose."""

    kind: ClassVar[Literal["member_left"]] = "member_left"
    name: str


@dataclass(frozen=True)
class MemberFailed(Event):
    """A node stopped answering and was declared failed."""

    kind: ClassVar[Literal["member_failed"]] = "member_failed"
    name: str


@dataclass(frozen=True)
class MemberReaped(Event):
    """A failed or left node was forgotten."""

    kind: ClassVar[Literal["member_reaped"]] = "member_reaped"
    name: str


@dataclass(frozen=True)
class TribeCreated(Event):
    """A tribe came into existence."""

    kind: ClassVar[Literal["tribe_created"]] = "tribe_created"
    tribe: str


@dataclass(frozen=True)
class TribeDeleted(Event):
    """A tribe was deleted."""

    kind: ClassVar[Literal["tribe_deleted"]] = "tribe_deleted"
    tribe: str


@dataclass(frozen=True)
class TribeJoined(Event):
    """This node is now in a tribe (by hand, by policy, or both)."""

    kind: ClassVar[Literal["tribe_joined"]] = "tribe_joined"
    tribe: str
    by_hand: bool
    by_policy: bool


@dataclass(frozen=True)
class TribeLeft(Event):
    """This node is no longer in a tribe."""

    kind: ClassVar[Literal["tribe_left"]] = "tribe_left"
    tribe: str


@dataclass(frozen=True)
class PluginLoad(Event):
    """Load this plugin: it is in the catalog of a tribe this node is in."""

    kind: ClassVar[Literal["plugin_load"]] = "plugin_load"
    tribe: str
    plugin: Plugin


@dataclass(frozen=True)
class PluginUnload(Event):
    """Unload this plugin."""

    kind: ClassVar[Literal["plugin_unload"]] = "plugin_unload"
    tribe: str
    plugin: Plugin


@dataclass(frozen=True)
class TaskRun(Event):
    """Run this task (new, started, or its manifest changed)."""

    kind: ClassVar[Literal["task_run"]] = "task_run"
    tribe: str
    task: Task


@dataclass(frozen=True)
class TaskStop(Event):
    """Stop this task (stopped, removed, or this node left its tribe)."""

    kind: ClassVar[Literal["task_stop"]] = "task_stop"
    tribe: str
    task: Task


@dataclass(frozen=True)
class ArtifactCorrupt(Event):
    """A holder sent artifact bytes that do not match the hash; another is tried."""

    kind: ClassVar[Literal["artifact_corrupt"]] = "artifact_corrupt"
    tribe: str
    plugin: Plugin
    holder: str


@dataclass(frozen=True)
class ArtifactUnavailable(Event):
    """A plugin's artifact could not be fetched and verified from any holder."""

    kind: ClassVar[Literal["artifact_unavailable"]] = "artifact_unavailable"
    tribe: str
    plugin: Plugin
    reason: str


@dataclass(frozen=True)
class PolicyFailed(Event):
    """A policy could not be evaluated for this node (counts as not holding)."""

    kind: ClassVar[Literal["policy_error"]] = "policy_error"
    policy: str
    message: str


@dataclass(frozen=True)
class IdentityClaimed(Event):
    """Another identity uses this node's name: a second node started under it, or a forgery.

    The one with the newer generation holds the name; the other keeps out
    of the cluster until the holder goes (see the README's Membership).
    """

    kind: ClassVar[Literal["identity_claimed"]] = "identity_claimed"
    addr: str
    generation: int


@dataclass(frozen=True)
class ClockSkew(Event):
    """A peer's clock is off this node's by ``offset_ms`` (its clock minus ours)."""

    kind: ClassVar[Literal["clock_skew"]] = "clock_skew"
    name: str
    offset_ms: int


@dataclass(frozen=True)
class UnknownEvent(Event):
    """An event of a kind this version of pytribe does not know."""

    kind: ClassVar[Literal["unknown"]] = "unknown"
    text: str


#: Any of the event classes: what ``Events`` and ``AsyncEvents`` give.
AnyEvent = Union[
    Joined,
    Isolated,
    MemberUp,
    MemberUpdated,
    MemberLeft,
    MemberFailed,
    MemberReaped,
    TribeCreated,
    TribeDeleted,
    TribeJoined,
    TribeLeft,
    PluginLoad,
    PluginUnload,
    TaskRun,
    TaskStop,
    ArtifactCorrupt,
    ArtifactUnavailable,
    PolicyFailed,
    IdentityClaimed,
    ClockSkew,
    UnknownEvent,
]


def _event(d: Dict[str, Any]) -> AnyEvent:
    kind = d.pop("kind_")
    if kind in ("plugin_load", "plugin_unload"):
        cls = PluginLoad if kind == "plugin_load" else PluginUnload
        return cls(tribe=d["tribe"], plugin=Plugin._from(d))
    if kind in ("task_run", "task_stop"):
        tcls = TaskRun if kind == "task_run" else TaskStop
        return tcls(tribe=d["tribe"], task=Task._from(d))
    if kind == "artifact_corrupt":
        p = d["plugin"]
        return ArtifactCorrupt(tribe=p["tribe"], plugin=Plugin._from(p), holder=d["holder"])
    if kind == "artifact_unavailable":
        p = d["plugin"]
        return ArtifactUnavailable(tribe=p["tribe"], plugin=Plugin._from(p), reason=d["reason"])
    cls2 = _SIMPLE.get(kind)
    if cls2 is None:
        return UnknownEvent(text=repr(d))
    return cls2(**d)


_SIMPLE: Dict[str, Callable[..., AnyEvent]] = {
    c.kind: c
    for c in (
        Joined,
        Isolated,
        MemberUp,
        MemberUpdated,
        MemberLeft,
        MemberFailed,
        MemberReaped,
        TribeCreated,
        TribeDeleted,
        TribeJoined,
        TribeLeft,
        PolicyFailed,
        IdentityClaimed,
        ClockSkew,
        UnknownEvent,
    )
}
