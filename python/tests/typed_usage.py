"""Uses of the public types that `mypy --strict` must accept (checked by
scripts/test-python, not run by pytest)."""

from __future__ import annotations

from typing import Dict

import pytribe


def merged_facts(member: pytribe.Member) -> Dict[str, str]:
    # The docs promise `facts | {...}` and `dict(facts)` give plain dicts.
    both = member.facts | {"zone": "z1"}
    copy = dict(member.facts)
    copy.update(both)
    return copy


def checked_before_start(name: str, version: str, request: bytes, data_dir: str) -> int:
    # The checks that need no node: None or an exception, the metric count.
    pytribe.check_name(name)
    pytribe.check_version(version)
    pytribe.Node.check_config(name, data_dir=data_dir, encryption="require", key=pytribe.keygen())
    return pytribe.check_step_request(request) + pytribe.check_step_request(memoryview(request))


def what_was_missing(error: pytribe.TribeError) -> str:
    # The attributes the docs' table of errors names.
    if isinstance(error, pytribe.UnknownTribeError):
        return error.tribe
    if isinstance(error, pytribe.UnknownNodeError):
        return error.node
    if isinstance(error, pytribe.UnknownPolicyError):
        return error.policy
    if isinstance(error, pytribe.UnknownFactError):
        return error.fact
    if isinstance(error, pytribe.UnknownKeyError):
        return error.key
    if isinstance(error, (pytribe.AlreadyMemberError, pytribe.NotMemberError)):
        return f"{error.node} in {error.tribe}"
    return error.code


def what_happened(event: pytribe.AnyEvent) -> str:
    # `kind` is a literal per class: comparing it narrows the union.
    if event.kind == "member_up":
        return f"{event.name} at {event.addr}"
    if event.kind == "tribe_joined":
        return f"{event.tribe} by policy: {event.by_policy}"
    if event.kind == "task_run":
        return event.task.id
    if event.kind == "clock_skew":
        return f"{event.name} {event.offset_ms} ms"
    return event.kind


async def served_until_cancelled(name: str) -> bool:
    # `async with` gives the node back typed, and closes it with aclose().
    async with pytribe.Node(name) as node:
        reply: bytes = await node.call_async("svc", "echo", b"x", timeout=1.0)
        del reply
    return await node.aclose(timeout=2.0)
