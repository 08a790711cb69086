"""pytribe: Python nodes of libtribe tribes.

Join a SWIM gossip cluster split into named tribes; publish facts; place
nodes with CEL policies; inherit each tribe's plugin and task catalogs;
serve plugins and call the plugins other members serve; all traffic sealed
with a rotating keyring. A thin, typed face over the Rust library::

    import time, pytribe
    with pytribe.Node(name="py-1", seeds=["127.0.0.1:7946"], facts={"rack": "r1"},
                      key=key) as node:
        node.add_policy("core", "core", 'has(facts.rack) && facts.rack == "r1"')
        node.serve("upper", "1", "processor", lambda payload, info: payload.upper())
        while node.tribe("core") is None:  # policies apply in the background
            time.sleep(0.05)
        print(node.call("core", "upper", b"hi", kind="processor"))
        for event in node.events(timeout=1.0):
            print(event)

Every blocking method releases the GIL and wakes at least every 50 ms to
check for signals, so Ctrl-C interrupts it with ``KeyboardInterrupt``.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import inspect
import json
import logging
import os
import sys
import threading
import time
import weakref
# ClassVar, Literal and Type too: the public classes of _types and _errors
# say they live here, so typing.get_type_hints resolves their annotations
# here.
from typing import (  # noqa: F401
    Any,
    Callable,
    ClassVar,
    Dict,
    Iterable,
    List,
    Literal,
    Mapping,
    NoReturn,
    Optional,
    Set,
    Tuple,
    Type,
    TypeVar,
    Union,
)


def _in_subinterpreter() -> bool:
    """Whether this is not the main interpreter, as CPython's private module
    of interpreters says (renamed in 3.13; none: take it as the main one)."""
    for name in ("_interpreters", "_xxsubinterpreters"):
        try:
            mod = __import__(name)
            current, main = mod.get_current(), mod.get_main()
        except Exception:
            continue
        # 3.13 gives (id, how it was made), earlier versions the id alone.
        if isinstance(current, tuple):
            current, main = current[0], main[0]
        return int(current) != int(main)
    return False


# The runtime's threads and the handler pools call into one interpreter,
# the one that imported the native module first: refused elsewhere, before
# anything starts (a sub-interpreter could abort the process at its end).
if _in_subinterpreter():
    raise ImportError("pytribe runs in the main interpreter only, not in a sub-interpreter")

from . import _native
from ._errors import (
    _NotServed,
    AlreadyMemberError,
    CallError,
    CallTimeoutError,
    ConfigError,
    DisconnectedError,
    EncryptionNotRequiredError,
    HandlerError,
    InvalidArgumentError,
    InvalidNameError,
    InvalidPolicyError,
    JoinTimeoutError,
    KeyringError,
    KeyringFullError,
    LimitReachedError,
    NoKeyringError,
    NoProviderError,
    NotMemberError,
    OverloadedError,
    PluginExistsError,
    PolicyExistsError,
    PrimaryKeyError,
    KeyNotSpreadError,
    RemoteError,
    ShutdownError,
    TaskExistsError,
    TooLargeError,
    TribeError,
    TribeExistsError,
    TribeIOError,
    UnknownFactError,
    UnknownKeyError,
    UnknownNodeError,
    UnknownPluginError,
    UnknownPolicyError,
    UnknownTaskError,
    UnknownTribeError,
)
from ._native import CallInfo
from ._types import (
    AnyEvent,
    ArtifactCorrupt,
    ArtifactUnavailable,
    Endpoint,
    FrozenMap,
    Event,
    ClockSkew,
    IdentityClaimed,
    Isolated,
    Joined,
    KeyHolding,
    Keys,
    Member,
    MemberFailed,
    MemberLeft,
    MemberReaped,
    MemberUp,
    MemberUpdated,
    Plugin,
    PluginLoad,
    PluginUnload,
    Policy,
    PolicyFailed,
    Status,
    Task,
    TaskRun,
    TaskStop,
    Tribe,
    TribeCreated,
    TribeDeleted,
    TribeJoined,
    TribeLeft,
    UnknownEvent,
    _event,
)

__version__: str = _native.__version__

__all__ = [
    "AlreadyMemberError",
    "AnyEvent",
    "ArtifactCorrupt",
    "ArtifactUnavailable",
    "AsyncEvents",
    "Bytes",
    "CallError",
    "CallInfo",
    "CallTimeoutError",
    "ClockSkew",
    "ConfigError",
    "DisconnectedError",
    "EncryptionNotRequiredError",
    "Endpoint",
    "Event",
    "Events",
    "FrozenMap",
    "Handler",
    "HandlerError",
    "IdentityClaimed",
    "InvalidArgumentError",
    "InvalidNameError",
    "InvalidPolicyError",
    "JoinTimeoutError",
    "Isolated",
    "Joined",
    "KeyHolding",
    "KeyringError",
    "KeyringFullError",
    "LimitReachedError",
    "Keys",
    "Member",
    "MemberFailed",
    "MemberLeft",
    "MemberReaped",
    "MemberUp",
    "MemberUpdated",
    "NoKeyringError",
    "NoProviderError",
    "Node",
    "NotMemberError",
    "OverloadedError",
    "Plugin",
    "PluginExistsError",
    "PluginLoad",
    "PluginUnload",
    "Policy",
    "PolicyExistsError",
    "PolicyFailed",
    "PrimaryKeyError",
    "KeyNotSpreadError",
    "RemoteError",
    "ShutdownError",
    "Status",
    "Task",
    "TaskExistsError",
    "TaskRun",
    "TaskStop",
    "TooLargeError",
    "Tribe",
    "TribeCreated",
    "TribeDeleted",
    "TribeError",
    "TribeExistsError",
    "TribeIOError",
    "TribeJoined",
    "TribeLeft",
    "UnknownEvent",
    "UnknownFactError",
    "UnknownKeyError",
    "UnknownNodeError",
    "UnknownPluginError",
    "UnknownPolicyError",
    "UnknownTaskError",
    "UnknownTribeError",
    "check_name",
    "check_step_request",
    "check_version",
    "key_id",
    "keygen",
    "set_log_level",
]

#: A handler: ``handler(payload, info) -> bytes | bytearray | memoryview``.
Handler = Callable[[bytes, CallInfo], Union[bytes, bytearray, memoryview]]

#: What a payload, a reply or an artifact may be given as.
Bytes = Union[bytes, bytearray, memoryview]

_logger = logging.getLogger("pytribe")


class _NoCopy:
    """Base of handles to native state: a copy would share that state (and
    a collected copy of a node would shut the original down), and a pickle
    cannot carry it."""

    __slots__ = ()

    def _refuse(self) -> NoReturn:
        raise TypeError(f"pytribe.{type(self).__name__} cannot be copied or pickled")

    def __copy__(self) -> NoReturn:
        self._refuse()

    def __deepcopy__(self, memo: object) -> NoReturn:
        self._refuse()

    def __reduce__(self) -> NoReturn:
        self._refuse()


# The annotations whose wrong types the native module reports without
# naming the argument, and how an error names what they want.
_WANTS: Dict[str, Tuple[Tuple[type, ...], str]] = {
    "str": ((str,), "str"),
    "Optional[str]": ((str, type(None)), "str or None"),
    "bool": ((bool,), "bool"),
}


def _unencodable(value: object) -> bool:
    """Whether ``value`` holds text UTF-8 cannot encode (a lone surrogate),
    itself or in a list, tuple or mapping."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, Mapping):
        return any(_unencodable(k) or _unencodable(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_unencodable(v) for v in value)
    return False


def _named_error(where: str, sig: inspect.Signature, args: Any, kwargs: Any) -> Optional[Exception]:
    """The error naming the first bad argument of a call, if one is."""
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError:
        return None
    given: list[tuple[str, Any, str]] = []
    for name, value in bound.arguments.items():
        param = sig.parameters[name]
        annotation = str(param.annotation)
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            # `*places: str`: each one is a str, the tuple is no argument.
            given.extend((f"{name}[{i}]", v, annotation) for i, v in enumerate(value))
        else:
            given.append((name, value, annotation))
    for name, value, annotation in given:
        want = _WANTS.get(annotation)
        if want is not None and not isinstance(value, want[0]):
            return TypeError(f"{where}: {name} must be {want[1]}, not {type(value).__name__}")
    for name, value, annotation in given:
        # Text only where text is wanted (a str payload is a wrong type); a
        # path may hold surrogates standing for bytes, as os.fsencode takes.
        if "str" in annotation and "PathLike" not in annotation and _unencodable(value):
            return InvalidArgumentError(
                f"{where}: {name} holds text that UTF-8 cannot encode (a lone surrogate)"
            )
    return None


def _placed(where: str, e: BaseException) -> Optional[BaseException]:
    """A wrong type or an out-of-range int found by the checks below a
    method (``payload must be bytes ...``, ``int too big to convert``),
    raised again naming the method, as the argument checks above do.
    Python's own complaints about the call (``call() missing 1 required
    positional argument``) and messages that name it already stay."""
    text = str(e)
    if type(e) not in (TypeError, OverflowError) or text.startswith(f"{where}:") or "()" in text:
        return None
    return type(e)(f"{where}: {text}")


_F = TypeVar("_F", bound=Callable[..., Any])


def _names_arguments(fn: _F, named: Optional[str] = None) -> _F:
    """Makes a wrong type or text that UTF-8 cannot encode raise naming the
    argument (``set_fact: value must be str, not int``; the latter as
    :class:`InvalidArgumentError`), where the native module's errors name
    neither. The arguments are looked at only once the call failed, so a
    good call pays nothing for it. ``named`` names the function in
    messages (by default its class for a constructor, else its own name)."""
    sig = inspect.signature(fn)
    if named is not None:
        where = named
    else:
        where = fn.__qualname__.split(".")[0] if fn.__name__ == "__init__" else fn.__name__

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def checked_async(*args: Any, **kwargs: Any) -> Any:
            try:
                return await fn(*args, **kwargs)
            except (TypeError, UnicodeError, OverflowError) as e:
                named = _named_error(where, sig, args, kwargs) or _placed(where, e)
                if named is None:
                    raise
                raise named from None

        return checked_async  # type: ignore[return-value]

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (TypeError, UnicodeError, OverflowError) as e:
            named = _named_error(where, sig, args, kwargs) or _placed(where, e)
            if named is None:
                raise
            raise named from None

    return checked  # type: ignore[return-value]


_C = TypeVar("_C", bound=type)


def _names_arguments_of(cls: _C) -> _C:
    """:func:`_names_arguments` for every public method of ``cls`` and its
    constructor; a static method is named with its class
    (``Node.check_config: ...``)."""
    for name, fn in list(vars(cls).items()):
        if inspect.isfunction(fn) and (name == "__init__" or not name.startswith("_")):
            setattr(cls, name, _names_arguments(fn))
        elif isinstance(fn, staticmethod) and not name.startswith("_"):
            where = f"{cls.__name__}.{name}"
            setattr(cls, name, staticmethod(_names_arguments(fn.__func__, where)))
    return cls


def keygen() -> str:
    """A new random key: base64 of 32 bytes, as ``tribe keygen`` prints it."""
    return _native.keygen()


@_names_arguments
def key_id(key: str) -> str:
    """The public id (8 hex digits) of a base64 key."""
    return _native.key_id(key)


@_names_arguments
def set_log_level(level: str) -> None:
    """Sets the least severe level of the library's records forwarded to the
    ``pytribe`` logger: ``"debug"``, ``"info"`` (the default), ``"warning"``
    or ``"error"``."""
    if not isinstance(level, str):
        raise TypeError(f"level must be a str, not {type(level).__name__}")
    _native.set_log_level(level)


@_names_arguments
def check_name(name: str) -> None:
    """Checks ``name`` against the naming rules of nodes, tribes, policies
    and plugins (as C's ``tribe_name_check``): 1 to 64 bytes, an ASCII
    letter or digit first, then ASCII letters, digits and ``_ - . : @``.
    Returns None, or raises :class:`InvalidNameError` saying which rule it
    breaks (``.reason``), so a program can refuse a bad name in its own
    configuration before anything uses it. Needs no node; does not block."""
    _native.check_name(name)


@_names_arguments
def check_version(version: str) -> None:
    """Checks a plugin version against its rules (as C's
    ``tribe_version_check``): those of names (:func:`check_name`), up to 32
    bytes. Returns None, or raises :class:`InvalidNameError` saying which
    rule it breaks. Needs no node; does not block."""
    _native.check_version(version)


@_names_arguments
def check_step_request(payload: Bytes) -> int:
    """Checks a step request, the payload a publisher or processor of a
    task receives (``{"config": {...}, "metrics": [...]}``), as the agent's
    publishers check it (as C's ``tribe_step_request_check``): returns the
    number of its metrics (what a publisher answers, as text), or raises
    :class:`InvalidArgumentError` saying what is wrong (not JSON, trailing
    text, a metric without a name, a control character, over the batch
    limits). Needs no node; does not block (the payload is decoded with the
    GIL released)."""
    return _native.check_step_request(payload)


# ------------------------------------------------------------------ logs

_log_stop = threading.Event()
_log_thread: Optional[threading.Thread] = None
_log_lock = threading.Lock()


def _pump_logs() -> None:
    while not _log_stop.is_set():
        try:
            rec = _native.next_log(0.05)
        except BaseException:  # pragma: no cover - interpreter going down
            return
        if rec is not None:
            level, target, node, message = rec
            try:
                _logger.log(
                    level, "%s", message, extra={"tribe_target": target, "tribe_node": node}
                )
            except BaseException:
                # A filter or handler of the program's that raises (even
                # SystemExit, which would end this thread) loses this record,
                # not the forwarding of every later one.
                pass


def _start_log_thread() -> None:
    global _log_thread
    with _log_lock:
        if _log_thread is None or not _log_thread.is_alive():
            _log_stop.clear()
            t = threading.Thread(target=_pump_logs, name="pytribe-log", daemon=True)
            # Kept once started: one that could not start (the thread limit)
            # is not joined at exit.
            t.start()
            _log_thread = t


# ------------------------------------------------------------------ exit

_live: "weakref.WeakSet[Node]" = weakref.WeakSet()


# The process whose exit has run (`_at_exit` runs once per process).
_exited_pid: Optional[int] = None


def _at_exit() -> None:
    """Closes every live node (gracefully, in parallel, 2 s at most), stops
    their handler pools (a handler still running is abandoned) and the log
    thread; from then on no runtime thread calls into Python."""
    global _exited_pid
    if _exited_pid == os.getpid():
        return
    _exited_pid = os.getpid()
    nodes = list(_live)
    for node in nodes:
        try:
            node._native.stop_background(True)
        except BaseException:
            pass
    deadline = time.monotonic() + 2.0
    for node in nodes:
        try:
            node._native.wait_stopped(max(0.0, deadline - time.monotonic()))
        except BaseException:
            pass
    # Every pool is told to stop first, then all get one 0.2 s grace
    # together: exit does not grow with the number of nodes.
    workers: List[threading.Thread] = []
    for node in nodes:
        try:
            workers.extend(node._stop_workers_nowait())
        except BaseException:
            pass
    grace = time.monotonic() + 0.2
    me = threading.current_thread()
    for w in workers:
        if w is not me:
            w.join(max(0.0, grace - time.monotonic()))
    _native._set_exiting()
    _log_stop.set()
    t = _log_thread
    if t is not None:
        t.join(0.5)


# A plain atexit hook: it runs once the threads that are not daemons have
# ended, so such a thread may go on using nodes after the main thread
# returns (the process lives until it ends, as Python's threads do).
atexit.register(_at_exit)

# The process that registered `_at_exit` with multiprocessing.
_mp_watched_pid: Optional[int] = None


def _watch_multiprocessing_exit() -> None:
    """In a multiprocessing child (fork or forkserver start), which ends
    with `os._exit` and so runs no atexit hook, has multiprocessing's own
    exit close the nodes: its finalizers run as the child's target returns."""
    global _mp_watched_pid
    mp = sys.modules.get("multiprocessing")
    if _mp_watched_pid == os.getpid() or mp is None or mp.parent_process() is None:
        return
    import multiprocessing.util

    multiprocessing.util.Finalize(None, _at_multiprocessing_exit, exitpriority=100)
    _mp_watched_pid = os.getpid()


def _at_multiprocessing_exit() -> None:
    """`_at_exit` where multiprocessing ends a child: its finalizers run
    before the threads that are not daemons are waited for, so they are
    waited for here first, as they are before an atexit hook."""
    me = threading.current_thread()
    for t in threading.enumerate():
        if t is not me and not t.daemon:
            t.join()
    _at_exit()


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    """``fn(*args)`` on ``loop``, from another thread; nothing once the loop
    has closed (its task is gone with it)."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass


def _grace(until: Optional[float]) -> float:
    """How long to wait for pool threads to leave: 1 s, or what is left of
    the caller's timeout."""
    if until is None:
        return 1.0
    return max(0.0, min(1.0, until - time.monotonic()))


def _serve_calls(native: Any) -> None:
    """Body of a pool thread: runs the handlers of queued calls until the
    node closes. The loop is Python's, so that no native frame is on the
    thread's stack while a handler runs: an interpreter exiting meanwhile
    then ends the (daemon) thread cleanly."""
    take = native.take_call
    me = threading.current_thread()
    while True:
        taken = take()
        if taken is None:
            return
        handler, payload, info, call = taken
        _busy.add(me)
        try:
            out = handler(payload, info)
        except BaseException as e:  # every exception is the caller's answer
            call.fail(e)
        else:
            call.reply(out)
        finally:
            _busy.discard(me)
        del taken, handler, payload, info, call


# The pool threads running a handler now: abort() and an interrupted
# close() do not wait for them (a set's add and discard are atomic).
_busy: Set[threading.Thread] = set()


class _Dispatch:
    """What the native side holds for a served handler. It refers to its
    node only weakly: a handler that refers to the node (a closure over it,
    a bound method of an object that owns it) then makes a cycle Python's
    collector sees and frees, and a node dropped while open is still
    aborted."""

    __slots__ = ("_node", "_key")

    def __init__(self, node: "Node", key: Tuple[str, str]) -> None:
        self._node = weakref.ref(node)
        self._key = key

    def __call__(self, payload: bytes, info: CallInfo) -> Any:
        node = self._node()
        handler = None if node is None else node._handlers.get(self._key)
        # Not held while the handler runs: a node dropped meanwhile is
        # aborted at once, not when its handlers return.
        del node
        if handler is None:
            raise _NotServed("unserved, or its node was dropped")
        return handler(payload, info)

    def __repr__(self) -> str:
        node = self._node()
        handler = None if node is None else node._handlers.get(self._key)
        return repr(handler)


class _ForkedNative:
    """Stands in, in a forked child, for a node of the parent process: its
    threads and sockets belong to the parent, so every use raises
    :class:`ShutdownError` and nothing touches the parent's streams."""

    closed = True

    def __init__(self, name: str, addr: str) -> None:
        self.name = name
        self.addr = addr

    def __getattr__(self, attr: str) -> Any:
        def refuse(*_args: object, **_kwargs: object) -> Any:
            if attr in ("shutdown", "abort", "wait_stopped"):
                return True
            if attr in ("stop_background", "stop_workers", "take_call"):
                return None
            raise ShutdownError(
                f"node {self.name!r} belongs to the parent process; start nodes after fork()"
            )

        return refuse


# The parent's native nodes, kept so that nothing of theirs is dropped (and
# no socket of the parent's is touched) in a forked child.
_forked_natives: List[Any] = []


# Forks so far (in this process's line): a subscriber made before a fork
# has no runtime behind it in the child and ends there.
_fork_generation = 0


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1
    """In a child of fork(): the parent's nodes are closed here without a
    goodbye of their own (they live on in the parent), and the next node
    starts a new runtime."""
    _native._after_fork_in_child()
    for node in list(_live):
        native = node._native
        _forked_natives.append(native)
        node._native = _ForkedNative(native.name, native.addr)  # type: ignore[assignment]
        node._workers = []
    _live.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_native._before_fork,
        after_in_parent=_native._after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


# ---------------------------------------------------------------- events


class Events(_NoCopy):
    """A subscriber to a node's events (from :meth:`Node.events`).

    Iterating yields events until ``timeout`` seconds pass without one (or
    forever when ``timeout`` is None) or the node stops; iterating the same
    object again resumes with the events that came since. :meth:`close` (or
    leaving a ``with`` block) ends it early and frees its queue.

    One thread reads a subscriber at a time (two threads reading one may
    each be handed the same events): each thread that reads events makes
    its own with :meth:`Node.events`.
    """

    def __init__(self, native: _native.NativeEvents, timeout: Optional[float], node: str = "") -> None:
        self._native: Optional[_native.NativeEvents] = native
        self._node = node
        self._timeout = timeout
        self._generation = _fork_generation
        #: Whether it has ended (closed, or its node stopped).
        self.closed = False
        # The number of the last event handed out: an event whose read a
        # signal handler interrupted (raising as the read returned) is not
        # counted, and the next read gets it again.
        self._got = 0
        # Events a drain() took before it was interrupted.
        self._backlog: List[AnyEvent] = []
        self._missed = 0

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<pytribe.Events of {self._node!r} timeout={self._timeout} {state}>"

    @property
    def missed(self) -> int:
        """How many events this subscriber has lost by falling more than
        65,536 behind (while another thread reads it: as of that read's
        start). When it grows, what it showed is incomplete: read the
        snapshots (:meth:`Node.members`, :meth:`Node.tribes`) again."""
        native = self._native
        if native is not None and self._generation == _fork_generation:
            self._missed = native.missed()
        return self._missed

    def __enter__(self) -> Events:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Ends this subscriber: reads return None, iteration stops, and
        the events queued for it are dropped. A read under way in another
        thread still ends as it would have. Idempotent."""
        self._missed = self.missed  # kept: the count stays readable
        self.closed = True
        self._native = None
        self._backlog = []

    def __iter__(self) -> Events:
        return self

    def __next__(self) -> AnyEvent:
        event = self.get(self._timeout)
        if event is None:
            raise StopIteration
        return event

    def get(self, timeout: Optional[float] = None) -> Optional[AnyEvent]:
        """The next event, or None after ``timeout`` seconds without one
        (None: wait as long as it takes) or once the subscriber has ended."""
        _check_timeout("Events.get", timeout, allow_none=True)
        native = self._native
        if native is None or self._generation != _fork_generation:
            self.closed = True
            return None
        if self._backlog:
            # No call between taking it and returning it: Python checks
            # for signals after calls.
            event = self._backlog[0]
            del self._backlog[0]
            return event
        got = native.next(timeout, self._got)
        if got is False:
            self.close()
            return None
        if not isinstance(got, tuple):
            return None
        number, fields = got
        event = _event(fields)
        self._got = number
        return event

    def drain(self) -> List[AnyEvent]:
        """The events already queued, without waiting."""
        out, self._backlog = self._backlog, []
        native = self._native
        if native is None or self._generation != _fork_generation:
            return out
        try:
            while True:
                got = native.try_next(self._got)
                if got is None:
                    return out
                number, fields = got
                event = _event(fields)
                self._got = number
                out.append(event)
        except BaseException:
            # Interrupted (a signal handler raised): what was taken is
            # handed out first by the next read.
            self._backlog = out
            raise


class AsyncEvents(_NoCopy):
    """An asyncio subscriber to a node's events (from :meth:`Node.aevents`);
    ends when the node stops or it is closed (:meth:`close`, or leaving an
    ``async with`` block). Cancelling a pending ``__anext__`` loses no
    event, and the subscriber may be used from one event loop after another."""

    def __init__(self, native: _native.NativeEvents, node: str = "") -> None:
        self._native: Optional[_native.NativeEvents] = native
        self._node = node
        self._generation = _fork_generation
        self._got = 0  # as in Events
        self._missed = 0

    @property
    def missed(self) -> int:
        """How many events this subscriber has lost by falling more than
        65,536 behind, as :attr:`Events.missed`."""
        native = self._native
        if native is not None and self._generation == _fork_generation:
            self._missed = native.missed()
        return self._missed

    @property
    def closed(self) -> bool:
        """Whether it has been closed (or its node stopped and that was seen)."""
        return self._native is None or self._generation != _fork_generation

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<pytribe.AsyncEvents of {self._node!r} {state}>"

    async def __aenter__(self) -> AsyncEvents:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Ends this subscriber: iteration stops and the events queued for
        it are dropped (a ``__anext__`` already waiting ends at the next
        event or when the node stops). Idempotent."""
        self._missed = self.missed  # kept: the count stays readable
        self._native = None

    def __aiter__(self) -> AsyncEvents:
        return self

    async def __anext__(self) -> AnyEvent:
        loop = asyncio.get_running_loop()
        while True:
            native = self._native
            if native is None or self._generation != _fork_generation:
                raise StopAsyncIteration
            got = native.try_next(self._got)
            if got is not None:
                number, fields = got
                event = _event(fields)
                self._got = number
                return event
            # True once an event waits for try_next: the event itself stays
            # with the subscriber, not in a future of this loop.
            if await native.anext(loop) is False:
                self.close()
                raise StopAsyncIteration


# ------------------------------------------------------------------ node


def _check_timeout(method: str, timeout: Optional[float], allow_none: bool = False) -> None:
    if timeout is None and allow_none:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{method}: timeout must be a number of seconds, not {type(timeout).__name__}")
    # Compared as given: a huge int must not overflow a float conversion.
    if not 0 <= timeout <= 1e9:
        raise InvalidArgumentError(
            f"{method}: timeout must be a finite number of seconds, from 0 to 1e9, not {timeout}"
        )


def _str_list(what: str, items: Iterable[str]) -> List[str]:
    if isinstance(items, (str, bytes)):
        raise TypeError(f"{what} must be a list of strings, not a single {type(items).__name__}")
    try:
        out = list(items)
    except TypeError:
        raise TypeError(f"{what} must be a list of strings, not {type(items).__name__}") from None
    for item in out:
        if not isinstance(item, str):
            raise TypeError(f"{what} must hold strings, not {type(item).__name__}")
    return out


def _places(method: str, places: Tuple[str, ...]) -> List[str]:
    for place in places:
        if not isinstance(place, str):
            raise TypeError(f"{method}: places must be str, not {type(place).__name__}")
    return list(places)


def _path(what: str, value: object) -> str:
    """A path given as str, bytes or os.PathLike, as text (bytes that are
    not UTF-8 kept as surrogates, as os.fsdecode does)."""
    if not isinstance(value, (str, bytes, os.PathLike)):
        raise TypeError(f"{what} must be a str, bytes or os.PathLike, not {type(value).__name__}")
    path = os.fsdecode(value)
    if "\0" in path:
        # As os.makedirs refuses it, and before any file is touched.
        raise InvalidArgumentError(f"{what} holds a NUL byte, which no path can")
    return path


def _node_args(
    where: str,
    name: str,
    bind: str,
    seeds: Iterable[str],
    facts: Optional[Mapping[str, str]],
    key: Optional[str],
    profile: str,
    label: Optional[str],
    encryption: Optional[str],
    data_dir: Union[str, bytes, "os.PathLike[str]", None],
    advertise: Optional[str],
    collect_facts: bool,
    max_payload: Optional[int],
    limits: Optional[Mapping[str, int]],
    handler_threads: int,
    key_file: Union[str, bytes, "os.PathLike[str]", None],
    extra_keys: Iterable[str],
    reap_after: Optional[float],
) -> Tuple[Any, ...]:
    """The arguments of ``NativeConfig(...)`` for those of :class:`Node`,
    after the checks made here: one conversion
    for the start and for :meth:`Node.check_config`, so that both refuse
    the same values with the same errors. ``where`` names the caller in
    messages."""
    if isinstance(handler_threads, bool) or not isinstance(handler_threads, int):
        raise TypeError(f"handler_threads must be an int, not {type(handler_threads).__name__}")
    if not 1 <= handler_threads <= 256:
        raise InvalidArgumentError(f"handler_threads must be 1..256, not {handler_threads}")
    if facts is not None and not isinstance(facts, Mapping):
        raise TypeError(f"facts must be a mapping of str to str, not {type(facts).__name__}")
    fact_dict: Dict[str, str] = dict(facts or {})
    for k, v in fact_dict.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"facts must map str to str, not {type(k).__name__} to {type(v).__name__}")
    if max_payload is not None:
        if isinstance(max_payload, bool) or not isinstance(max_payload, int):
            raise TypeError(f"max_payload must be an int, not {type(max_payload).__name__}")
        if max_payload <= 0:
            raise InvalidArgumentError(f"max_payload must be a positive int, not {max_payload}")
    if reap_after is not None:
        if isinstance(reap_after, bool) or not isinstance(reap_after, (int, float)):
            raise TypeError(f"reap_after must be a number of seconds, not {type(reap_after).__name__}")
        # Compared as given: a huge int must not overflow a float conversion.
        if not 0.001 <= reap_after <= 365 * 24 * 3600:
            raise InvalidArgumentError(f"reap_after must be 0.001 s to 365 days, not {reap_after}")
    if limits is not None and not isinstance(limits, Mapping):
        raise TypeError(f"limits must be a mapping of str to int, not {type(limits).__name__}")
    limit_dict: Dict[str, int] = dict(limits or {})
    for limit_name, limit in limit_dict.items():
        if not isinstance(limit_name, str):
            raise TypeError(f"limits must map str to int, not {type(limit_name).__name__}")
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"limit {limit_name!r} must be an int, not {type(limit).__name__}")
        if limit <= 0:
            raise InvalidArgumentError(f"limit {limit_name!r} must be a positive int, not {limit}")
    return (
        name,
        bind,
        _str_list(f"{where}: seeds", seeds),
        fact_dict,
        key,
        profile,
        label,
        encryption,
        _path("data_dir", data_dir) if data_dir is not None else None,
        advertise,
        collect_facts,
        max_payload,
        limit_dict,
        _path("key_file", key_file) if key_file is not None else None,
        _str_list(f"{where}: extra_keys", extra_keys),
        reap_after,
    )


@_names_arguments_of
class Node(_NoCopy):
    """A running node of a tribe cluster.

    ``Node(...)`` binds its sockets (UDP gossip and TCP streams on one port;
    port 0 picks a free one; an unspecified address such as ``0.0.0.0``
    needs ``advertise``, else :class:`ConfigError`), starts and joins
    through ``seeds`` (``host:port``; a name is looked up by the node at
    start and again while it is alone). Use it as a
    context manager, or call :meth:`close` (graceful: peers record *left*) or
    :meth:`abort` (peers record *failed*). A node still open and referenced
    at interpreter exit is closed then; one garbage-collected while open
    (a local of a function that returned) is aborted.

    ``key`` (base64, from :func:`keygen`) seals all traffic, or
    ``key_file``, a file holding it (as ``tribe keygen > FILE`` writes it;
    not both, :class:`ConfigError`); ``extra_keys`` also open it (a node
    started in the middle of a rotation), and need one of them.
    ``encryption`` is ``"require"`` (default with a key), ``"send"`` or
    ``"accept"``.
    ``profile`` is ``"lan"``, ``"wan"`` or ``"local"``; ``reap_after``
    (seconds) is how long a failed or left member stays listed before it
    is forgotten, over the profile's (24 h; 5 min with ``"local"``): a reap
    deletes its record and memberships by hand for the whole tribe, so the
    shortest one in a tribe decides; keep it alike everywhere, as the
    agents' ``--reap-after``, and longer than any pause a member may come
    back from (hours, not seconds).
    ``label`` keeps
    clusters apart. ``data_dir`` keeps peers, memberships by hand and the
    keyring across restarts. ``handler_threads`` bounds the Python threads
    that run this node's handlers. ``limits`` sets caps by name: of the
    replicated state, ``nodes``, ``tribes``, ``members``, ``policies``,
    ``plugins``, ``tasks`` (keep them equal cluster-wide; a command past one
    raises :class:`LimitReachedError`), and the call bounds ``max_streams``
    (inbound call streams served at once), ``max_inflight_per_conn`` (calls
    in flight on one stream between a caller and a host, 256; both sides'
    apply), ``max_inflight`` and
    ``max_serving``; an unknown name raises
    :class:`InvalidArgumentError`.
    """

    def __init__(
        self,
        name: str,
        bind: str = "127.0.0.1:0",
        seeds: Iterable[str] = (),
        facts: Optional[Mapping[str, str]] = None,
        key: Optional[str] = None,
        profile: str = "lan",
        label: Optional[str] = None,
        encryption: Optional[str] = None,
        data_dir: Union[str, bytes, "os.PathLike[str]", None] = None,
        *,
        advertise: Optional[str] = None,
        collect_facts: bool = True,
        max_payload: Optional[int] = None,
        limits: Optional[Mapping[str, int]] = None,
        handler_threads: int = 4,
        key_file: Union[str, bytes, "os.PathLike[str]", None] = None,
        extra_keys: Iterable[str] = (),
        reap_after: Optional[float] = None,
    ) -> None:
        args = _node_args(
            "Node", name, bind, seeds, facts, key, profile, label, encryption, data_dir,
            advertise, collect_facts, max_payload, limits, handler_threads, key_file, extra_keys,
            reap_after,
        )
        self._handler_threads = handler_threads
        self._workers: List[threading.Thread] = []
        self._lock = threading.Lock()
        self._handlers: Dict[Tuple[str, str], Handler] = {}
        _start_log_thread()
        self._native = _native.NativeNode(_native.NativeConfig(*args))
        _live.add(self)
        _watch_multiprocessing_exit()

    @staticmethod
    def check_config(
        name: str,
        bind: str = "127.0.0.1:0",
        seeds: Iterable[str] = (),
        facts: Optional[Mapping[str, str]] = None,
        key: Optional[str] = None,
        profile: str = "lan",
        label: Optional[str] = None,
        encryption: Optional[str] = None,
        data_dir: Union[str, bytes, "os.PathLike[str]", None] = None,
        *,
        advertise: Optional[str] = None,
        collect_facts: bool = True,
        max_payload: Optional[int] = None,
        limits: Optional[Mapping[str, int]] = None,
        handler_threads: int = 4,
        key_file: Union[str, bytes, "os.PathLike[str]", None] = None,
        extra_keys: Iterable[str] = (),
        reap_after: Optional[float] = None,
    ) -> None:
        """Checks the arguments of a :class:`Node` without starting it, as
        C's ``tribe_config_check``: returns None when ``Node(...)`` with
        them would start but for what only the machine can say (a port in
        use, a data dir another running node holds, one that cannot be
        created or read, no thread to be had), else raises what the start
        would raise: :class:`InvalidArgumentError` or ``TypeError`` for a
        bad value (a ``bind`` that is not ``host:port``, a bad key),
        :class:`InvalidNameError` for a bad ``name``, :class:`ConfigError`
        for options that do not hold together (an unspecified ``bind``
        without ``advertise``, an ``encryption`` mode without a key, more
        than 256 facts, a ``max_payload`` too large) and for an existing
        ``data_dir`` the start would refuse (writable by every user, owned
        by another user, holding another node's state, its state or keyring
        file not a file), :class:`TribeIOError` for a ``key_file`` that
        cannot be read.

        Needs no node, binds no socket, and creates or changes nothing (a
        missing ``data_dir`` passes: the start would create it). Does not
        block on the network, except to look up a host name given as
        ``bind`` or ``advertise``, as the start does; files (``key_file``,
        the data dir) are read with the GIL released. For a program that
        checks its configuration before it starts its node (a daemon's
        ``--check``)."""
        args = _node_args(
            "Node.check_config", name, bind, seeds, facts, key, profile, label, encryption,
            data_dir, advertise, collect_facts, max_payload, limits, handler_threads, key_file,
            extra_keys, reap_after,
        )
        # A warning of the check (a data dir its group may write) reaches
        # the `pytribe` logger.
        _start_log_thread()
        _native.NativeConfig(*args).check()

    # ----------------------------------------------------------- basics

    @property
    def name(self) -> str:
        """This node's name."""
        return self._native.name

    @property
    def addr(self) -> str:
        """The advertised address, ``host:port`` (the bound port when bound to 0)."""
        return self._native.addr

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` or :meth:`abort` was called."""
        return self._native.closed

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<pytribe.Node {self.name!r} {self.addr} {state}>"

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Node:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self, timeout: Optional[float] = None) -> bool:
        """:meth:`close` for a coroutine: it runs on a thread of its own,
        so the running loop goes on meanwhile, and handlers that hand their
        work to that loop (``asyncio.run_coroutine_threadsafe``) answer
        within the close's grace instead of waiting for a loop it blocks.
        Not the loop's default executor, whose threads may all be waiting
        for this very node. Cancelling the awaiting task does not stop the
        close: it goes on to its end. ``async with Node(...)`` closes
        with it."""
        _check_timeout("aclose", timeout, allow_none=True)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()

        def settle(result: Optional[bool], error: Optional[BaseException]) -> None:
            if done.done():
                return  # the awaiting task was cancelled
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(bool(result))

        def run() -> None:
            try:
                result = self.close(timeout)
            except BaseException as e:  # handed to the awaiting task
                _call_soon(loop, settle, None, e)
            else:
                _call_soon(loop, settle, result, None)

        threading.Thread(target=run, name="pytribe-aclose", daemon=True).start()
        return await done

    def __del__(self) -> None:
        native = getattr(self, "_native", None)
        if native is not None and not native.closed:
            try:
                native.stop_background(False)
                native.stop_workers(len(self._workers))
                # An abort takes milliseconds: once `del node` returns, its
                # port and data dir are free, as after abort().
                native.wait_stopped(1.0)
            except BaseException:
                pass

    def close(self, timeout: Optional[float] = None) -> bool:
        """Leaves gracefully (peers record *left*) and stops; waits at most
        ``timeout`` seconds (None: until done). Handlers still running get
        up to 2 s to answer, and their replies are sent before it returns,
        so a program may exit right after. Idempotent. Returns whether the
        node has stopped. Raises :class:`TribeIOError` when the node
        stopped but its ``data_dir`` did not take its last state (a full
        disk; a hung one, waited for 5 s): a restart from it comes back with
        what it last saved. Only the close that sees the stop end raises
        it."""
        _check_timeout("close", timeout, allow_none=True)
        until = None if timeout is None else time.monotonic() + timeout
        try:
            stopped = self._native.shutdown(timeout)
        except TribeIOError:
            # Stopped, without its last state kept: the replies go out first.
            self._stop_workers(_grace(until), wait_busy=False)
            raise
        except BaseException:
            # Interrupted (KeyboardInterrupt): the pool is told to stop,
            # and the interruption goes up at once.
            self._stop_workers(0.0, wait_busy=False)
            raise
        # Replies of handlers that answered in time are sent: one still at
        # work past them is not waited for (its thread ends on its own).
        self._stop_workers(_grace(until), wait_busy=False)
        return stopped

    def abort(self, timeout: Optional[float] = None) -> bool:
        """Stops at once without a goodbye, as a crash would (peers record
        *failed*); also cuts short a :meth:`close` under way. Idempotent."""
        _check_timeout("abort", timeout, allow_none=True)
        until = None if timeout is None else time.monotonic() + timeout
        try:
            return self._native.abort(timeout)
        finally:
            # Idle pool threads leave at once; those still in a handler
            # are not waited for (their answers go nowhere).
            self._stop_workers(_grace(until), wait_busy=False)

    def _stop_workers_nowait(self) -> List[threading.Thread]:
        """Tells this node's pool threads to stop; returns them to join."""
        with self._lock:
            workers, self._workers = self._workers, []
        if workers:
            self._native.stop_workers(len(workers))
        return workers

    def _stop_workers(self, grace: float, wait_busy: bool = True) -> None:
        """Stops the pool, waiting up to ``grace`` seconds for its threads
        to leave (only for the idle ones unless ``wait_busy``)."""
        workers = self._stop_workers_nowait()
        if not workers:
            return
        deadline = time.monotonic() + grace
        me = threading.current_thread()
        for w in workers:
            if w is me:
                continue
            # In slices: a thread that took a call just before it was told
            # to stop is seen busy within 10 ms.
            while w.is_alive() and (wait_busy or w not in _busy):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                w.join(min(left, 0.01))

    # -------------------------------------------------------- snapshots

    def members(self) -> List[Member]:
        """Every known member, this node included."""
        return [Member._from(m) for m in self._native.members()]

    def member(self, name: str) -> Optional[Member]:
        """One member (this node too), or None when this node knows none
        by that name."""
        if not isinstance(name, str):
            raise TypeError(f"member: name must be str, not {type(name).__name__}")
        # Refused as every other method's text is, not looked for.
        if _unencodable(name):
            raise InvalidArgumentError(
                "member: name holds text that UTF-8 cannot encode (a lone surrogate)"
            )
        return next((m for m in self.members() if m.name == name), None)

    def members_alive(self) -> int:
        """How many members are alive, this node included."""
        return self._native.members_alive()

    def tribes(self) -> List[Tribe]:
        """Every tribe with its live view and catalog."""
        return [Tribe._from(t) for t in self._native.tribes()]

    def tribe(self, name: str) -> Optional[Tribe]:
        """One tribe, or None when it does not exist."""
        t = self._native.tribe(name)
        return None if t is None else Tribe._from(t)

    def policies(self) -> List[Policy]:
        """Every policy."""
        return [Policy(**p) for p in self._native.policies()]

    def state_digest(self) -> str:
        """Digest of the replicated state: equal on converged nodes."""
        return self._native.state_digest()

    def status(self) -> Status:
        """This node at a glance: name, address, members alive, state
        digest, tribes, gossip backlog, version, encryption and primary key,
        and the two alarms (``name_held_by``, ``key_refused_by``)."""
        return Status._from(self._native.status())

    def name_held_by(self) -> Optional[str]:
        """While another live node runs under this node's name with a newer
        generation (a copied configuration), the address it runs at: this
        node keeps out of the cluster until that node goes, then takes its
        name back. None while this node holds its name."""
        return self._native.name_held_by()

    def key_refused_by(self) -> Optional[str]:
        """A peer that refused this node's key in the last minute (until an
        exchange with it succeeds), as ``host:port``: the tribe may have
        rotated its keys without this node, which then lives on alone or
        with others left behind. ``install_key`` of the tribe's current key
        on this node brings it back. None otherwise."""
        return self._native.key_refused_by()

    def keys(self) -> Keys:
        """Which live nodes hold which keys (ids only)."""
        return Keys._from(self._native.keys())

    def rpc_stats(self) -> Dict[str, int]:
        """Counters of the call path since start, named as the ``calls``
        object of C's ``tribe_node_counters_json`` (Go's ``Counters()``);
        also after close."""
        return dict(self._native.rpc_stats())

    def counters(self) -> Dict[str, Dict[str, int]]:
        """Every counter, with the names of C's ``tribe_node_counters_json``
        and Go's ``Counters()``: ``{"engine": {...}, "calls": {...}}``; also
        after close. The agent's ``/metrics`` exports most of them under
        names of their own (``docs/operating.md`` lists them)."""
        return self._native.counters()

    # --------------------------------------------------------- commands

    def create_tribe(self, tribe: str) -> None:
        """Creates an empty tribe."""
        self._native.create_tribe(tribe)

    def delete_tribe(self, tribe: str) -> None:
        """Deletes a tribe, its catalog, its memberships and its policies."""
        self._native.delete_tribe(tribe)

    def join(self, tribe: str, node: Optional[str] = None) -> None:
        """Adds ``node`` (this node by default) to ``tribe`` by hand."""
        self._native.join(tribe, self.name if node is None else node)

    def leave(self, tribe: str, node: Optional[str] = None) -> None:
        """Removes the membership by hand of ``node`` (this node by default)."""
        self._native.leave(tribe, self.name if node is None else node)

    def add_policy(self, name: str, tribe: str, when: str) -> None:
        """Adds a policy: nodes whose facts make the CEL expression ``when``
        hold are in ``tribe`` (created when a node first matches; policies
        apply in the background, so the tribe may appear a moment after this
        returns). A bad expression raises
        :class:`InvalidPolicyError` with ``.line`` and ``.column``."""
        self._native.add_policy(name, tribe, when)

    def remove_policy(self, name: str) -> None:
        """Removes a policy."""
        self._native.remove_policy(name)

    def set_fact(self, key: str, value: str) -> None:
        """Sets a user fact of this node (policies are evaluated again)."""
        self._native.set_fact(key, value)

    def remove_fact(self, key: str) -> None:
        """Removes a user fact of this node."""
        self._native.remove_fact(key)

    def load_plugin(
        self,
        tribe: str,
        name: str,
        version: str,
        kind: str,
        artifact: Optional[Bytes] = None,
    ) -> Optional[str]:
        """Adds a plugin entry to a tribe's catalog; every member gets a
        ``plugin_load`` event. With ``artifact`` bytes, this node holds them
        and members fetch and verify them first; returns their hex SHA-256."""
        return self._native.load_plugin(tribe, name, version, kind, artifact)

    def unload_plugin(self, tribe: str, name: str, version: str) -> None:
        """Removes a plugin entry from a tribe's catalog."""
        self._native.unload_plugin(tribe, name, version)

    def artifact(self, sha256: str) -> Optional[bytes]:
        """The verified bytes of a plugin artifact this node holds; None when
        it holds none of that hash (C and Go: ``unknown_artifact``)."""
        return self._native.artifact(sha256)

    def add_task(
        self,
        tribe: str,
        id: str,
        manifest: Union[Mapping[str, Any], str],
        state: str = "running",
    ) -> None:
        """Adds a task (a manifest dict or JSON object text) to a tribe."""
        if isinstance(manifest, Mapping):
            text = json.dumps(dict(manifest))
        elif isinstance(manifest, str):
            text = manifest
        else:
            raise TypeError(f"manifest must be a dict or JSON text, not {type(manifest).__name__}")
        self._native.add_task(tribe, id, text, state)

    def remove_task(self, tribe: str, id: str) -> None:
        """Removes a task."""
        self._native.remove_task(tribe, id)

    def set_task_state(self, tribe: str, id: str, state: str) -> None:
        """Sets a task's desired state: ``"running"`` or ``"stopped"``."""
        self._native.set_task_state(tribe, id, state)

    def install_key(self, key: str) -> str:
        """Adds a key to every node's keyring; returns its id."""
        return self._native.install_key(key)

    def use_key(self, key: str) -> str:
        """Makes an installed key (or key id) the primary of every node; returns its id.

        A key installed through another node a moment ago is waited for (up
        to 3 s until some member is heard to hold it, else
        :class:`UnknownKeyError`). Then waits (up to 10 s) until every live
        member, this one included, holds the key; raises
        :class:`KeyNotSpreadError` (nothing changed) if one does not.
        """
        return self._native.use_key(key)

    def remove_key(self, key: str) -> str:
        """Removes a key (or key id) from every node's keyring; returns its id.

        This node's own primary is refused (:class:`PrimaryKeyError`) after
        up to 3 s, unless a switch made through another node is heard of by
        then. First waits (up to 10 s) until no live member, this one
        included, seals with the key any more; raises
        :class:`KeyNotSpreadError` (nothing changed) otherwise. Returns once
        this node dropped the key; the removal reaches the other members by
        gossip (:meth:`keys` lists it on them until then, well under a
        second on a LAN).
        """
        return self._native.remove_key(key)

    def join_cluster(self, *places: str, timeout: Optional[float] = None) -> int:
        """Joins the cluster through ``places`` (``"host:port"``: addresses,
        or names looked up, as ``seeds`` takes), also while this node is in
        a cluster already (two clusters then merge; their records merge as
        every record does, the later write winning: a tribe or policy
        deleted on one side within the tombstone grace deletes one of that
        name on the other when the deletion is the later write); returns
        how many addresses completed their join exchange.

        Each place gets an exchange: this node sends its view and takes the
        peer's, so on return it knows the peer's members, tribes and
        catalogs. The addresses become seeds too, those that did not answer
        also (a node alone, or one that loses every peer later, tries them
        again). Waits for every exchange: up to 5 s for the lookups plus
        12 s for the exchanges (those still under way then are given up;
        the ones that completed count); a node runs 16 joins at once, the
        others wait their turn (the GIL is released; Ctrl-C interrupts it;
        a close ends it at once). With ``timeout`` (seconds, in all), a join
        still under way then is given up: its exchanges still under way are
        dropped (their addresses not kept as seeds unless a join exchange
        completed with them), those that completed keep what they merged
        and count (as memberlist's ``Join`` succeeds when any address
        answered); when none had, :class:`JoinTimeoutError` is raised if no
        address had answered at all, else :class:`TribeIOError` naming each
        and why (another key, refused, still under way at the timeout). An
        exchange given up may already have reached its peer, which then
        knows this node: a join that timed out may still take effect.
        ``timeout=0`` reaches nothing.

        Raises :class:`InvalidArgumentError` (no place, more than 256, one
        not ``host:port``, only this node's own address),
        :class:`TribeIOError` when no address completed its exchange (the
        message names each and why: refused, no answer, another key, a name
        that does not resolve, this node itself), :class:`JoinTimeoutError`,
        :class:`ShutdownError`.
        """
        _check_timeout("join_cluster", timeout, allow_none=True)
        joined = self._native.join_cluster(_places("join_cluster", places), timeout)
        if joined is None:
            raise JoinTimeoutError(f"the join reached no address within {timeout} s", "timeout")
        return joined

    async def join_cluster_async(self, *places: str, timeout: Optional[float] = None) -> int:
        """:meth:`join_cluster` for asyncio, with the same ``timeout`` (what
        was reached by then counts); cancelling the awaiting task (or
        ``asyncio.wait_for``'s timeout, which counts nothing) gives the
        join up, ending its exchanges still under way."""
        _check_timeout("join_cluster_async", timeout, allow_none=True)
        loop = asyncio.get_running_loop()
        joined: Optional[int] = await self._native.join_cluster_async(
            loop, _places("join_cluster_async", places), timeout
        )
        if joined is None:
            raise JoinTimeoutError(f"the join reached no address within {timeout} s", "timeout")
        return joined

    def set_encryption(self, mode: str) -> None:
        """Changes this node's encryption mode: accept, send or require."""
        self._native.set_encryption(mode)

    # ------------------------------------------------------------ calls

    def serve(self, name: str, version: str, kind: str, handler: Handler) -> None:
        """Serves a plugin: ``handler(payload: bytes, info: CallInfo)``
        returns bytes, bytearray or memoryview. It runs on a thread of this
        node's pool (``handler_threads``). An exception reaches the caller as
        :class:`RemoteError` (code = its class name, or the code of a
        :class:`HandlerError`) and is logged here. Serving the same name and
        version again replaces the handler, and its kind."""
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)
        ):
            raise TypeError(
                "handler must be a plain function (it runs on a pool thread); "
                "an async def handler would never be awaited"
            )
        # The pool first: a node that cannot run handlers (at the process's
        # thread limit) serves nothing, rather than take calls that time out.
        self._start_workers()
        key = (name, version)
        old = self._handlers.get(key)
        self._handlers[key] = handler
        try:
            self._native.serve(name, version, kind, _Dispatch(self, key))
        except BaseException:
            if old is None:
                self._handlers.pop(key, None)
            else:
                self._handlers[key] = old
            raise

    def unserve(self, name: str, version: str) -> None:
        """Stops serving a plugin and withdraws its endpoint."""
        self._native.unserve(name, version)
        self._handlers.pop((name, version), None)

    def _start_workers(self) -> None:
        with self._lock:
            if self._native.closed:
                return
            # Those missing: a start that failed part way is taken up again.
            while len(self._workers) < self._handler_threads:
                t = threading.Thread(
                    target=_serve_calls,
                    args=(self._native,),
                    name=f"pytribe-handler-{self.name}-{len(self._workers)}",
                    daemon=True,
                )
                t.start()
                self._workers.append(t)

    def call(
        self,
        tribe: str,
        plugin: str,
        payload: Bytes,
        kind: str = "processor",
        version: Optional[str] = None,
        timeout: float = 2.0,
    ) -> bytes:
        """Calls a plugin served by a live member of ``tribe`` (this node
        first when it serves it) and returns the reply. Raises
        :class:`NoProviderError`, :class:`CallTimeoutError`,
        :class:`RemoteError`, :class:`TooLargeError`,
        :class:`OverloadedError`, :class:`DisconnectedError`,
        :class:`ShutdownError`, or :class:`TribeIOError` when this process
        could not open a connection (out of descriptors, buffers or
        memory; no member is blamed)."""
        _check_timeout("call", timeout)
        return self._native.call(tribe, plugin, payload, kind, version, timeout)

    async def call_async(
        self,
        tribe: str,
        plugin: str,
        payload: Bytes,
        kind: str = "processor",
        version: Optional[str] = None,
        timeout: float = 2.0,
    ) -> bytes:
        """:meth:`call` for asyncio; cancelling the awaiting task abandons the call."""
        _check_timeout("call_async", timeout)
        loop = asyncio.get_running_loop()
        reply: bytes = await self._native.call_async(loop, tribe, plugin, payload, kind, version, timeout)
        return reply

    # ----------------------------------------------------------- events

    def events(self, timeout: Optional[float] = None) -> Events:
        """A new subscriber to this node's events (the first one of a node
        also gets the events since start). Iterating it stops after
        ``timeout`` seconds without an event (None: never) or when the node
        stops; one made after :meth:`close` ends once it has handed out what
        was queued (the events since start, for a node's first)."""
        _check_timeout("events", timeout, allow_none=True)
        return Events(self._native.events(), timeout, self.name)

    def aevents(self) -> AsyncEvents:
        """A new asyncio subscriber to this node's events."""
        return AsyncEvents(self._native.events(), self.name)


# Tracebacks and reprs name the public classes as users import them
# (`pytribe.CallTimeoutError`); pickles find them there too.
for _public in __all__:
    _obj = globals()[_public]
    if isinstance(_obj, type) and _obj.__module__ in ("pytribe._errors", "pytribe._types"):
        _obj.__module__ = __name__
del _public, _obj
