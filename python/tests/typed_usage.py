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
