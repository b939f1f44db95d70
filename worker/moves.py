"""The lifecycle as data: which script moves a job, and its call journal, from which state to
which. One table each; the Lua scripts refuse any other move (`worker/lua/_contract.lua` is
generated from these tables, `transition()` and `journal_to()` in `worker/lua/_lifecycle.lua`
check against it) and `docs/lifecycle.md` draws them. After changing a table, regenerate both:

    python -m worker.moves

`tests/unit/test_lifecycle.py` fails when a script makes a move its table lacks, when a table
lists a move no script makes, or when a generated file is out of step.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Generic, Literal, TypeVar

from worker.contract import FINAL_STATES, LANES, CallState, JobState
from worker.keys import PREFIX, QUEUES

S = TypeVar("S", bound=StrEnum)

# The scripts that move a job or its call journal (each declares `local SCRIPT = '<name>'`).
Script = Literal[
    "enqueue",
    "start",
    "wait",
    "attempt_failed",
    "finish",
    "cancel",
    "call_begin",
    "call_answered",
    "call_refused",
    "call_unknown",
    "reclaim",
]


@dataclass(frozen=True)
class Move(Generic[S]):
    """`script` may move a record from any of `froms` to `to`. None: no record (a job not yet
    enqueued, a job with no call journaled) or, as `to`, the record deleted."""

    script: Script
    froms: frozenset[S | None]
    to: S | None
    why: str


Q, R, W = JobState.QUEUED, JobState.RUNNING, JobState.WAITING
# Not final: the scripts that act on a run (fenced by its lease) or on any open job accept
# each of these (their guards are the lease and "not final", not one state).
OPEN: frozenset[JobState | None] = frozenset({Q, R, W})


def _job(
    script: Script, froms: Iterable[JobState | None], to: JobState, why: str
) -> Move[JobState]:
    return Move(script, frozenset(froms), to, why)


JOB_MOVES: tuple[Move[JobState], ...] = (
    _job("enqueue", {None}, Q, "a new job: its record is created"),
    _job("enqueue", OPEN, Q, "arq's payload was gone: queued again"),
    _job(
        "enqueue",
        {JobState.FAILED, JobState.CANCELLED},
        Q,
        "`upscale retry` (requeue_failed): a failed or cancelled job runs again",
    ),
    _job("start", OPEN, R, "a run takes the lease"),
    _job("wait", OPEN, W, "handed back without using an attempt (pause, 429, budget, outage)"),
    _job("attempt_failed", OPEN, W, "a real failure, backing off"),
    _job("attempt_failed", OPEN, JobState.FAILED, "a real failure at the last attempt"),
    _job("finish", OPEN, JobState.SUCCEEDED, "the output is stored"),
    _job("finish", OPEN, JobState.FAILED, "a failure no retry mends"),
    _job("finish", OPEN, JobState.SKIPPED, "nothing to do (output exists, source gone)"),
    _job("finish", OPEN, JobState.CANCELLED, "cancelled while its paid call was in flight"),
    *(
        _job(s, OPEN, JobState.CANCELLED, "`upscale cancel` came while it held money, now gone")
        for s in ("start", "wait", "attempt_failed", "call_begin")
    ),
    _job("cancel", OPEN, JobState.CANCELLED, "`upscale cancel` of a job holding no money"),
    _job("reclaim", OPEN, Q, "its run's lease expired (a worker died or stalled)"),
)

ANY_CALL: frozenset[CallState | None] = frozenset({None, *CallState})
SENT, ANSWERED, PENDING = CallState.SENT, CallState.ANSWERED, CallState.PENDING
REFUSED, UNKNOWN = CallState.REFUSED, CallState.UNKNOWN


def _call(
    script: Script, froms: Iterable[CallState | None], to: CallState | None, why: str
) -> Move[CallState]:
    return Move(script, frozenset(froms), to, why)


CALL_MOVES: tuple[Move[CallState], ...] = (
    _call("call_begin", ANY_CALL, SENT, "journaled before the request leaves"),
    _call("call_begin", {SENT}, UNKNOWN, "a sent call of a run that died: possibly billed"),
    _call("reclaim", {SENT}, UNKNOWN, "its run's lease expired mid-call: possibly billed"),
    _call("call_unknown", {SENT, PENDING, ANSWERED, REFUSED}, UNKNOWN, "no answer came back"),
    _call("call_answered", {SENT, UNKNOWN, REFUSED}, PENDING, "an async job accepted (202)"),
    _call("call_answered", {SENT, UNKNOWN, PENDING, REFUSED}, ANSWERED, "a billed result"),
    _call("call_refused", {SENT, PENDING, UNKNOWN, ANSWERED}, REFUSED, "an error: not billed"),
    _call("finish", set(CallState), None, "the job ended (not failed): its journal goes"),
)


# -- the generated Lua table ------------------------------------------------------------------
LUA_PATH = Path(__file__).parent / "lua" / "_contract.lua"
DOC_PATH = Path(__file__).parent.parent / "docs" / "lifecycle.md"


def _lua_set(names: Iterable[str]) -> str:
    return "{" + ", ".join(f"[{_lua_str(n)}] = true" for n in sorted(names)) + "}"


def _lua_str(s: str) -> str:
    return "'" + s + "'"


def _lua_moves(name: str, moves: Iterable[Move[S]]) -> list[str]:
    """`NAME[script][to][from] = true`, '' for None."""
    table: dict[str, dict[str, set[str]]] = {}
    for m in moves:
        froms = table.setdefault(m.script, {}).setdefault(m.to or "", set())
        froms.update(f or "" for f in m.froms)
    lines = [f"local {name} = {{"]
    for script in sorted(table):
        lines.append(f"  {script} = {{")
        for to in sorted(table[script]):
            lines.append(f"    [{_lua_str(to)}] = {_lua_set(table[script][to])},")
        lines.append("  },")
    lines.append("}")
    return lines


def lua_contract() -> str:
    """`worker/lua/_contract.lua`: the contract's states, moves and lanes, for the scripts."""
    queues = {lane: QUEUES[lane].removeprefix(PREFIX) for lane in LANES}
    lines = [
        "-- GENERATED from worker/moves.py and worker/contract.py by `python -m worker.moves`:",
        "-- do not edit (tests/unit/test_lifecycle.py checks it is in step).",
        "-- FINAL: the states a job ends in (`FINAL_STATES`).",
        f"local FINAL = {_lua_set(s.value for s in FINAL_STATES)}",
        "-- JOB_MOVES[script][to][from]: the moves of a job's state each script may make",
        "-- ('' = no record yet).",
        *_lua_moves("JOB_MOVES", JOB_MOVES),
        "-- CALL_MOVES[script][to][from]: the same for the call journal ('' = none, or deleted).",
        *_lua_moves("CALL_MOVES", CALL_MOVES),
        "-- LANES: each lane's arq queue, after the prefix (`worker.keys.QUEUES`).",
        "local LANES = {" + ", ".join(f"{k} = {_lua_str(v)}" for k, v in queues.items()) + "}",
        "",
    ]
    return "\n".join(lines)


# -- the generated documentation --------------------------------------------------------------
BEGIN, END = "<!-- BEGIN GENERATED (python -m worker.moves) -->", "<!-- END GENERATED -->"


def _names(states: Iterable[S | None], none: str) -> str:
    return ", ".join(sorted(f"`{s.value}`" if s else none for s in states))


def _table(moves: Iterable[Move[S]], none_from: str, none_to: str) -> list[str]:
    rows = ["| script | from | to | why |", "|---|---|---|---|"]
    for m in moves:
        froms = "any open state" if m.froms == OPEN else _names(m.froms, none_from)
        to = f"`{m.to.value}`" if m.to else none_to
        rows.append(f"| `{m.script}` | {froms} | {to} | {m.why} |")
    return rows


def _diagram(moves: Iterable[Move[S]], group: str | None = None) -> list[str]:
    """A mermaid state diagram: one edge per (from, to), labelled with the scripts; a move
    out of every open state starts at the `open` composite state (a move into one, from each:
    an edge from a composite state into its own state does not lay out); staying put is not
    drawn."""
    edges: dict[tuple[str, str], list[str]] = {}
    for m in moves:
        to = m.to.value if m.to else "[*]"
        froms: list[str] = []
        rest = set(m.froms)
        if group and rest >= OPEN and m.to not in OPEN:
            froms.append(group)
            rest -= OPEN
        froms += sorted(f.value if f else "[*]" for f in rest)
        for f in froms:
            if f != to:
                scripts = edges.setdefault((f, to), [])
                if m.script not in scripts:
                    scripts.append(m.script)
    lines = ["```mermaid", "stateDiagram-v2"]
    if group:
        lines.append(f"    state {group} {{")
        lines += [f"        {s.value}" for s in JobState if s in OPEN]
        lines.append("    }")
    lines += [f"    {f} --> {t} : {', '.join(s)}" for (f, t), s in edges.items()]
    lines.append("```")
    return lines


def lifecycle_doc() -> str:
    """The generated part of `docs/lifecycle.md`."""
    return "\n".join(
        [
            BEGIN,
            "",
            "### The job",
            "",
            *_diagram(JOB_MOVES, group="open"),
            "",
            *_table(JOB_MOVES, "(no record)", "(deleted)"),
            "",
            "### The call journal",
            "",
            *_diagram(CALL_MOVES),
            "",
            *_table(CALL_MOVES, "(none)", "(deleted)"),
            "",
            END,
        ]
    )


def doc_with_generated(doc: str) -> str:
    """`doc` with its generated part replaced by the tables' current one."""
    head, _, rest = doc.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return head + lifecycle_doc() + tail


def main() -> None:
    LUA_PATH.write_text(lua_contract())
    DOC_PATH.write_text(doc_with_generated(DOC_PATH.read_text()))
    print(f"wrote {LUA_PATH} and the generated part of {DOC_PATH}", file=sys.stderr)


if __name__ == "__main__":
    main()
