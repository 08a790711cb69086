"""The exceptions of pytribe: one hierarchy rooted at :class:`TribeError`.

Every exception raised for a library error carries ``.code``, the stable
snake_case code of the Rust error (``tribe::Error::code()``), and
``.message``; a :class:`RemoteError` carries the *handler's* code and
message instead (its library code, ``"remote"``, is ``.error_code``).
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional, Type


class TribeError(Exception):
    """Base of every library error."""

    #: The Rust error code this class stands for (``None``: any).
    error_code: Optional[str] = None

    code: str
    message: str

    def __init__(self, message: str = "", code: Optional[str] = None, **attrs: Any) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else (type(self).error_code or "error")
        for key, value in attrs.items():
            setattr(self, key, value)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"

    def __reduce__(self) -> Any:
        extra = {k: v for k, v in self.__dict__.items() if k not in ("code", "message")}
        return (_rebuild, (type(self), self.message, self.code, extra))


def _rebuild(cls: Type[TribeError], message: str, code: str, extra: Dict[str, Any]) -> TribeError:
    return cls(message, code, **extra)


class InvalidNameError(TribeError, ValueError):
    """A node, tribe, policy, plugin, task or fact name broke the naming
    rules: ``.what`` it names (``"node name"``, ``"plugin version"``…),
    ``.name`` (cut when long) and ``.reason``, the rule it breaks
    (``"is empty"``…)."""

    error_code = "invalid_name"
    what: str = ""
    name: str = ""
    reason: str = ""


class InvalidArgumentError(TribeError, ValueError):
    """An argument other than a name was out of range or malformed."""

    error_code = "invalid_argument"


class ConfigError(TribeError, ValueError):
    """The node's configuration is inconsistent."""

    error_code = "config"


class InvalidPolicyError(TribeError, ValueError):
    """A policy's CEL expression does not compile (``.line``, ``.column`` from 1, or None)."""

    error_code = "invalid_policy"
    line: Optional[int] = None
    column: Optional[int] = None
    reason: str = ""


class UnknownTribeError(TribeError, KeyError):
    """The tribe does not exist."""

    error_code = "unknown_tribe"
    tribe: str = ""


class UnknownNodeError(TribeError, KeyError):
    """No node of that name is known."""

    error_code = "unknown_node"
    node: str = ""


class UnknownPolicyError(TribeError, KeyError):
    """The policy does not exist."""

    error_code = "unknown_policy"
    policy: str = ""


class UnknownPluginError(TribeError, KeyError):
    """The plugin entry is not in the tribe's catalog."""

    error_code = "unknown_plugin"


class UnknownTaskError(TribeError, KeyError):
    """The task does not exist in the tribe."""

    error_code = "unknown_task"


class UnknownFactError(TribeError, KeyError):
    """The fact is not a user fact of this node."""

    error_code = "unknown_fact"
    fact: str = ""


class UnknownKeyError(TribeError, KeyError):
    """No such key in the keyring."""

    error_code = "unknown_key"
    key: str = ""


class TribeExistsError(TribeError):
    """The tribe exists already."""

    error_code = "tribe_exists"
    tribe: str = ""


class AlreadyMemberError(TribeError):
    """The node is a member of the tribe by hand already."""

    error_code = "already_member"
    tribe: str = ""
    node: str = ""


class NotMemberError(TribeError):
    """The node is not a member of the tribe by hand."""

    error_code = "not_member"
    tribe: str = ""
    node: str = ""


class PolicyExistsError(TribeError):
    """A policy of that name exists already."""

    error_code = "policy_exists"
    policy: str = ""


class PluginExistsError(TribeError):
    """The plugin entry exists already in the tribe's catalog."""

    error_code = "plugin_exists"


class TaskExistsError(TribeError):
    """A task with that id exists already in the tribe."""

    error_code = "task_exists"


class KeyringError(TribeError):
    """A keyring operation was refused."""


class NoKeyringError(KeyringError):
    """A keyring operation on a node started without a key."""

    error_code = "no_keyring"


class EncryptionNotRequiredError(KeyringError):
    """Keys are spread only by nodes in ``require`` mode."""

    error_code = "encryption_not_required"


class KeyringFullError(KeyringError):
    """The keyring holds 8 keys already."""

    error_code = "keyring_full"


class PrimaryKeyError(KeyringError):
    """The primary key cannot be removed."""

    error_code = "primary_key"


class KeyNotSpreadError(KeyringError):
    """``use_key`` or ``remove_key`` would cut live members off: the key has
    not reached every live member, or some still seal with it, after 10 s
    of waiting. Nothing changed; the message names the members."""

    error_code = "key_not_spread"


class CallError(TribeError):
    """Base of the errors of a remote plugin call."""


class NoProviderError(CallError):
    """No live member of the tribe serves the plugin (``.tribe``, ``.plugin``).

    ``.stopping`` names the members that served it but refused the call,
    unrun, as they stopped serving it: closing, or unserving it with the
    call still queued (empty when none did). ``.unreachable`` names the
    members listed as serving it that could not be reached; the call did not
    run there (empty when none).
    """

    error_code = "no_provider"
    tribe: str = ""
    plugin: str = ""
    stopping: tuple[str, ...] = ()
    unreachable: tuple[str, ...] = ()


class CallTimeoutError(CallError, TimeoutError):
    """The call did not complete before its deadline."""

    error_code = "timeout"


class JoinTimeoutError(TribeError, TimeoutError):
    """A join reached no address, and none answered at all, within the
    ``timeout`` given to :meth:`Node.join_cluster` or
    :meth:`Node.join_cluster_async` (one that some refused
    is a :class:`TribeIOError` naming them): the exchanges still under way were dropped
    with it (their connections closed, their addresses not kept as seeds
    unless a join exchange completed with them). Its ``.code`` is
    ``"timeout"``."""


class RemoteError(CallError):
    """The handler failed: ``.code`` and ``.message`` are the handler's."""

    error_code = "remote"

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class TooLargeError(CallError, ValueError):
    """A payload or reply over the size limit (``.size``, ``.limit``; both
    None when the host did not say them, as for a handler that failed with
    the code ``too_large`` itself)."""

    error_code = "too_large"
    size: Optional[int] = None
    limit: Optional[int] = None


class OverloadedError(CallError):
    """Too many calls in flight; try again later.

    The message says whose limit: this node's ``max_inflight`` or
    ``max_inflight_per_conn``, or the busy hosts (named).
    """

    error_code = "overloaded"


class DisconnectedError(CallError):
    """The host went away with the call in flight; it may or may not have run (``.host``)."""

    error_code = "disconnected"
    host: str = ""


class ShutdownError(TribeError):
    """The node is shutting down or has stopped."""

    error_code = "shutting_down"


class LimitReachedError(TribeError):
    """The cluster holds as many records of a kind as its limits allow (see ``limits=``)."""

    error_code = "limit_reached"


class TribeIOError(TribeError, OSError):
    """A socket or file could not be bound or used: also a call this process
    could not open a connection for (out of descriptors, socket buffers or
    memory; no member is blamed). ``errno`` and ``strerror`` are set
    when the system said why (e.g. ``errno.EADDRINUSE``, ``errno.EMFILE``)."""

    error_code = "io"

    def __init__(self, message: str = "", code: Optional[str] = None, **attrs: Any) -> None:
        super().__init__(message, code, **attrs)
        # A literal start: linear in the message, which a join makes long
        # (a reason per address).
        found = re.search(r" \(os error (\d+)\)", message)
        if found:
            self.errno = int(found.group(1))
            self.strerror = message[: found.start()].rsplit(": ", 1)[-1]


class _NotServed(Exception):
    """Raised inside pytribe when a queued call's handler is gone (it was
    unserved, or its node dropped): the call is refused as by a stopping
    host, and the caller moves it to another member."""


class HandlerError(Exception):
    """Raise from a handler to fail a call with an explicit code.

    The caller gets :class:`RemoteError` with this ``code`` and ``message``
    (a message that is not a ``str`` is turned into one with ``str()``).
    The code ``"timeout"`` is reserved: the caller gets :class:`CallTimeoutError`
    (without the message), as when a handler overran its budget. An empty
    code reaches the caller as ``"error"``, as in C and Go.
    """

    def __init__(self, code: str, message: str = "") -> None:
        if not isinstance(code, str):
            raise TypeError(f"HandlerError code must be a str, not {type(code).__name__}")
        if not isinstance(message, str):
            message = str(message)
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def _classes() -> Dict[str, Type[TribeError]]:
    out: Dict[str, Type[TribeError]] = {}
    todo = list(TribeError.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls.error_code:
            out[cls.error_code] = cls
        todo.extend(cls.__subclasses__())
    return out


_BY_CODE = _classes()


def _from_native(kind: str, code: str, message: str, attrs: Dict[str, Any]) -> TribeError:
    """Builds the exception for a Rust error (called by the native module)."""
    if kind == "remote" and code == "too_large":
        # The host's own refusal of a reply over its limit: the same error
        # as a payload over it, with the sizes when the message has them.
        found = re.search(r"has (\d+) bytes, over the limit of (\d+)", message)
        if found:
            attrs = dict(attrs, size=int(found.group(1)), limit=int(found.group(2)))
        return TooLargeError(message, "too_large", **attrs)
    cls = _BY_CODE.get(kind, TribeError)
    return cls(message, code, **attrs)
