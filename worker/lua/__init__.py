"""The Lua scripts: one file per script, each with its KEYS/ARGV documented at the top.

A line `--- @include "_name"` pulls in a shared piece (`_name.lua`) once, like BullMQ's
`src/commands/`. ARGV[1] is always the key prefix (`worker.keys.PREFIX`): scripts derive per-job
and per-batch keys from it, so no key name is typed in Lua.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

_INCLUDE = re.compile(r'^--- @include "([\w.-]+)"\s*$', re.MULTILINE)


@cache
def source(name: str) -> str:
    """The script `name` (without `.lua`) with its includes expanded, each at most once."""
    seen: set[str] = set()

    def expand(script: str) -> str:
        text = (files(__package__) / f"{script}.lua").read_text()

        def sub(m: re.Match[str]) -> str:
            inc = m.group(1)
            if inc in seen:
                return ""
            seen.add(inc)
            return expand(inc)

        return _INCLUDE.sub(sub, text)

    return expand(name)


def register(redis: Redis, name: str) -> AsyncScript:
    """The script `name`, ready to call (redis-py loads it again after a Redis restart)."""
    return redis.register_script(source(name))
