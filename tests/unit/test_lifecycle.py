"""The lifecycle tables (`worker/moves.py`) against the Lua scripts: every move a script makes
is in its table and every move in the table is made, read from the scripts' source; the Lua
copy of the tables and `docs/lifecycle.md` are in step; a move the table lacks is refused on a
real Redis, before the script writes anything."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib.resources import files
from typing import get_args

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

import worker.lua
from worker import moves
from worker.contract import FINAL_STATES, RETRY_STATES, CallState, FinalState, JobSpec, JobState
from worker.contract import S3Object as S3
from worker.flow.admission import UPSTREAM_ADMIT_KEYS, AdmitKeys, AdmitOptions, UpstreamOption
from worker.keys import PREFIX, Keys
from worker.ledger import Ledger
from worker.ledger.batches import reopen_batch, set_batch_callback, set_batch_fields

LUA = files(worker.lua)
SCRIPTS = sorted(
    p.name.removesuffix(".lua")
    for p in LUA.iterdir()
    if p.name.endswith(".lua") and not p.name.startswith("_")
)
_INCLUDE = re.compile(r'^--- @include "([\w.-]+)"\s*$', re.MULTILINE)
_FUNCTION = re.compile(r"^local function (\w+)\(.*?^end$", re.MULTILINE | re.DOTALL)
_SCRIPT = re.compile(r"^local SCRIPT = '(\w+)'", re.MULTILINE)
# The moves, as the scripts spell them (a target that is not a literal names its values in a
# `-- to: a | b` comment on its line).
_TRANSITION = re.compile(r"\btransition\(\s*[^,]+,\s*(?:'(\w+)'|(\w+))[^\n]*")
_JOURNAL_TO = re.compile(r"\bjournal_to\(\s*[^,]+,\s*'(\w+)'")
_CREATE = re.compile(r"\bcreate\(")
_JOURNAL_DROP = re.compile(r"\bjournal_drop\(")
_TO_COMMENT = re.compile(r"-- to: ([\w |]+)")
# Writes of a state that bypass the checked moves.
_RAW_STATE = re.compile(r"'H(?:M)?SET(?:NX)?'[^\n]*'state'|'DEL'[^\n]*k_call\(")
_MOVERS = {"transition", "create", "journal_to", "journal_drop"}
_COMMENT_LINE = re.compile(r"^\s*--.*$", re.MULTILINE)


def expand(text: str) -> str:
    """A script's text with its includes expanded once each (as `worker.lua.source` does)."""
    seen: set[str] = set()

    def sub(m: re.Match[str]) -> str:
        if m.group(1) in seen:
            return ""
        seen.add(m.group(1))
        return _INCLUDE.sub(sub, (LUA / f"{m.group(1)}.lua").read_text())

    return _INCLUDE.sub(sub, text)


@dataclass
class Found:
    """What a script's source shows it does to a job's state and its call journal."""

    script: str
    declared: str | None = None  # its `local SCRIPT = '...'`
    job: set[str] = field(default_factory=set)  # states it may move a job to
    call: set[str] = field(default_factory=set)  # ... its call journal to ('' = deleted)
    problems: list[str] = field(default_factory=list)


def _direct(name: str, body: str, found: Found, checked: bool) -> tuple[set[str], set[str]]:
    job: set[str] = set()
    call: set[str] = set()
    for m in _TRANSITION.finditer(body):
        if m.group(1):
            job.add(m.group(1))
        elif named := _TO_COMMENT.search(m.group(0)):
            job |= {s.strip() for s in named.group(1).split("|")}
        else:
            found.problems.append(f"{name}: transition to {m.group(2)} names no `-- to:` states")
    call |= set(_JOURNAL_TO.findall(body))
    if _CREATE.search(body):
        job.add(JobState.QUEUED)
    if _JOURNAL_DROP.search(body):
        call.add("")
    if checked and name not in _MOVERS:  # a script that moves states, through the checks
        found.problems += [
            f"{name}: writes a state directly: {w}" for w in _RAW_STATE.findall(body)
        ]
    return job, call


def read_moves(script: str, text: str | None = None) -> Found:
    """The moves script `script` makes, read from its source (`text`: a copy of it): those of
    its own code and of every function of its includes it calls, transitively."""
    own = text if text is not None else (LUA / f"{script}.lua").read_text()
    found = Found(script)
    if declared := _SCRIPT.search(own.split("--- @include", 1)[0]):
        found.declared = declared.group(1)
    source = _COMMENT_LINE.sub("", expand(own))
    checked = "local function check_move(" in source
    bodies: dict[str, str] = {}
    for m in _FUNCTION.finditer(source):
        bodies[m.group(1)] = m.group(0).split("\n", 1)[1]  # without its own definition line
    top = _FUNCTION.sub("", source)
    calls = {
        n: {c for c in bodies if c != n and re.search(rf"\b{c}\(", b)} for n, b in bodies.items()
    }
    direct = {n: _direct(n, b, found, checked) for n, b in bodies.items()}
    job, call = _direct(f"{script}.lua", top, found, checked)
    todo = [c for c in bodies if re.search(rf"\b{c}\(", top)]
    reached: set[str] = set()
    while todo:
        n = todo.pop()
        if n not in reached:
            reached.add(n)
            todo += calls[n]
    for n in reached:
        job |= direct[n][0]
        call |= direct[n][1]
    if (job or call) and found.declared != script:
        found.problems.append(
            f"{script}.lua moves states: it must declare `local SCRIPT = '{script}'` before its"
            f" includes (found {found.declared!r})"
        )
    found.job, found.call = job, call
    return found


def _table(script: str) -> tuple[set[str], set[str]]:
    job = {str(m.to) for m in moves.JOB_MOVES if m.script == script}
    call = {m.to.value if m.to else "" for m in moves.CALL_MOVES if m.script == script}
    return job, call


def mismatches(found: Found) -> list[str]:
    """How a script's moves and its rows of the tables differ (empty: in step)."""
    job, call = _table(found.script)
    out = list(found.problems)
    for what, made, listed in (("job", found.job, job), ("call journal", found.call, call)):
        out += [
            f"{found.script}: {what} -> {s or '(deleted)'} is not in worker/moves.py"
            for s in sorted(made - listed)
        ]
        out += [
            f"{found.script}: worker/moves.py lists {what} -> {s or '(deleted)'}, the script makes no such move"
            for s in sorted(listed - made)
        ]
    return out


# -- the tables and the scripts ----------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_move_of_a_script_is_in_its_table_and_back(script: str) -> None:
    assert mismatches(read_moves(script)) == []


def test_every_script_in_the_tables_exists() -> None:
    named = set(get_args(moves.Script))
    used = {m.script for m in moves.JOB_MOVES} | {m.script for m in moves.CALL_MOVES}
    assert used == named
    assert named <= set(SCRIPTS)


def test_a_script_with_a_move_the_table_lacks_fails_the_check() -> None:
    text = (LUA / "finish.lua").read_text()
    anchor = "if FINAL[cur] then return 'final' end\n"
    mutated = text.replace(anchor, anchor + "transition(job_id, 'queued', now_ms())\n")
    assert mutated != text
    assert mismatches(read_moves("finish", mutated)) == [
        "finish: job -> queued is not in worker/moves.py"
    ]
    # ... and a state written around the table
    raw = text.replace(anchor, anchor + "redis.call('HSET', KEYS[1], 'state', 'queued')\n")
    assert any("writes a state directly" in p for p in mismatches(read_moves("finish", raw)))
    # ... and a move in a script that does not say which script it is
    anonymous = text.replace("local SCRIPT = 'finish'", "local NAME = 'finish'")
    assert any("must declare" in p for p in mismatches(read_moves("finish", anonymous)))


def test_the_lua_tables_and_the_doc_are_generated_from_the_python_ones() -> None:
    assert moves.LUA_PATH.read_text() == moves.lua_contract(), "run: python -m worker.moves"
    doc = moves.DOC_PATH.read_text()
    assert moves.doc_with_generated(doc) == doc, "run: python -m worker.moves"


def test_one_vocabulary_for_final_and_retried_states() -> None:
    assert FINAL_STATES == set(get_args(FinalState)) == {s for s in JobState if s.final}
    # `upscale retry` runs again exactly the final states enqueue may move back to queued
    enqueue_froms = {f for m in moves.JOB_MOVES if m.script == "enqueue" for f in m.froms}
    assert set(RETRY_STATES) == {s for s in enqueue_froms if s is not None and s.final}
    # a final state moves on only by enqueue (`upscale retry`)
    assert {m.script for m in moves.JOB_MOVES if m.froms & FINAL_STATES} == {"enqueue"}
    assert {m.to for m in moves.CALL_MOVES} - {None} == set(CallState)


def test_admit_takes_its_keys_and_options_by_name() -> None:
    text = (LUA / "admit.lua").read_text()

    def lua_list(name: str) -> list[str]:
        m = re.search(rf"local {name} = \{{(.*?)\}}", text, re.DOTALL)
        assert m, name
        return re.findall(r"'(\w+)'", m.group(1))

    assert lua_list("FLEET_KEYS") == list(AdmitKeys._fields)
    assert lua_list("UPSTREAM_KEYS") == list(UPSTREAM_ADMIT_KEYS)
    assert set(re.findall(r"\bo\.(\w+)", text)) == set(AdmitOptions.__annotations__)
    assert set(re.findall(r"\bu\.(\w+)", text)) | {"name"} == set(UpstreamOption.__annotations__)
    assert "ARGV[3]" not in text and not re.search(r"KEYS\[\d", text)


# -- on a real Redis ---------------------------------------------------------------------------
def _spec() -> JobSpec:
    return JobSpec(source=S3.parse("s3://photos/a.png"), dest=S3.parse("s3://photos-up/a.png"))


async def test_a_move_the_table_lacks_is_refused_before_anything_is_written(r: Redis) -> None:
    ledger = Ledger(r)
    (res,) = await ledger.enqueue([_spec()])
    job = res.job_id
    await ledger.start(job, "run", 20_000)
    with pytest.raises(ResponseError, match=r"illegal job move by finish: running -> queued"):
        await ledger.finish(job, "run", JobState.QUEUED)  # type: ignore[arg-type]  # the point
    rec = await ledger.get(job)
    assert rec is not None and rec.state == JobState.RUNNING
    token = await r.hget(Keys.job(job), "run_token")  # type: ignore[misc]  # redis-py's stubs
    assert token == b"run"  # its lease untouched
    assert await ledger.start(job, "run", 20_000)  # and the run carries on


async def test_a_script_copy_with_an_extra_move_is_refused_on_redis(r: Redis) -> None:
    ledger = Ledger(r)
    (res,) = await ledger.enqueue([_spec()])
    job = res.job_id
    await ledger.start(job, "run", 20_000)
    anchor = "if FINAL[cur] then return 'final' end\n"
    text = (LUA / "finish.lua").read_text()
    mutated = r.register_script(
        expand(text.replace(anchor, anchor + "transition(job_id, 'queued', now_ms())\n"))
    )
    with pytest.raises(ResponseError, match=r"illegal job move by finish: running -> queued"):
        await mutated(keys=[Keys.job(job)], args=[PREFIX, job, "run", "succeeded", "", 0, 0])
    assert (await ledger.get(job)).state == JobState.RUNNING  # type: ignore[union-attr]


async def test_the_call_journal_refuses_a_move_its_table_lacks(r: Redis) -> None:
    ledger = Ledger(r)
    (res,) = await ledger.enqueue([_spec()])
    job = res.job_id
    await ledger.start(job, "run", 20_000)
    await ledger.call_begin(job, "run", "default/s1", 60_000)
    # an extra move in a copy of call_refused: sent -> answered is not call_refused's
    text = (LUA / "call_refused.lua").read_text()
    mutated = text.replace("add_request_id(job_id, ARGV[4])", "journal_to(job_id, 'answered')")
    assert mismatches(read_moves("call_refused", mutated)) == [
        "call_refused: call journal -> answered is not in worker/moves.py"
    ]
    script = r.register_script(expand(mutated))
    with pytest.raises(
        ResponseError, match=r"illegal call journal move by call_refused: sent -> answered"
    ):
        await script(
            keys=[Keys.job(job), Keys.call(job)], args=[PREFIX, job, "default/s1", "", "0"]
        )
    journal = await ledger.journal(job)
    assert journal is not None and journal.state == CallState.SENT


async def test_a_batchs_operator_fields_go_through_their_script_and_only_they(r: Redis) -> None:
    await set_batch_callback(r, "b1", "https://hooks.example/done")
    await set_batch_fields(r, "b1", cancelled_at="1700000000000")
    assert await r.hgetall(Keys.batch("b1")) == {  # type: ignore[misc]  # redis-py's stubs
        b"callback_url": b"https://hooks.example/done",
        b"cancelled_at": b"1700000000000",
    }
    await reopen_batch(r, "b1")
    with pytest.raises(ResponseError, match="total is not an operator field"):
        await set_batch_fields(r, "b1", total="0", callback_url="")
    assert await r.hgetall(Keys.batch("b1")) == {b"callback_url": b"https://hooks.example/done"}  # type: ignore[misc]
