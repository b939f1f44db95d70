"""Results: the answer's data for each route (signed URLs to stored files, or b64), and the
signed, expiring download of a stored file (optionally slowed or truncated). Links expire and
files are dropped on the simulator's clock (`clock.py`)."""

from __future__ import annotations

import asyncio
import base64
import random
import time
from typing import Any

from aiohttp import web

from infra.simulator import faults
from infra.simulator.calls import Call
from infra.simulator.protocol import IDEOGRAM, STATE
from infra.simulator.state import SimState, sign


def result_body(
    request: web.Request,
    state: SimState,
    call: Call,
    out: bytes,
    size_in: tuple[int, int],
    size_out: tuple[int, int],
    unsafe: bool,
) -> dict[str, Any]:
    base = f"{request.scheme}://{request.host}"
    if call.route == IDEOGRAM:
        url = "" if unsafe else base + state.signed_path(state.store(out))
        item = image_item(url, call.knobs or {}, size_in, size_out, unsafe)
        return {
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "data": [item] * call.n,
        }
    if call.response_format == "b64_json":
        data = [{"b64_json": base64.b64encode(out).decode()}] * call.n
    else:
        data = [{"url": base + state.signed_path(state.store(out))} for _ in range(call.n)]
    return {"created": int(time.time()), "data": data}


def image_item(
    url: str,
    knobs: dict[str, Any],
    size_in: tuple[int, int],
    size_out: tuple[int, int],
    unsafe: bool,
) -> dict[str, Any]:
    """One Ideogram result (an unsafe one is billed, with an empty url)."""
    return {
        "url": url,
        "resolution": f"{size_in[0]}x{size_in[1]}",
        "upscaled_resolution": f"{size_out[0]}x{size_out[1]}",
        "seed": knobs.get("seed", random.randint(0, 2**31 - 1)),
        "prompt": knobs.get("prompt", ""),
        "is_image_safe": not unsafe,
    }


async def download(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    cfg = state.config
    file_id = request.match_info["file_id"]
    try:
        exp = int(request.query.get("exp", "0"))
    except ValueError:
        exp = 0
    if request.query.get("sig") != sign(file_id, exp):
        return web.Response(status=403, text="bad signature")
    if exp < state.now():
        return web.Response(status=403, text="link expired")
    data = state.files.get(file_id) if state.file_kept(file_id) else None
    if data is None:
        return web.Response(status=404, text="no such file")
    state.downloads += 1
    truncate = faults.truncate_download(cfg)
    resp = web.StreamResponse(
        headers={"Content-Type": "image/png", "Content-Length": str(len(data))}
    )
    await resp.prepare(request)
    end = len(data) // 2 if truncate else len(data)
    chunk = 64 * 1024
    for i in range(0, end, chunk):
        await resp.write(data[i : min(i + chunk, end)])
        if cfg.download_delay_ms:
            await asyncio.sleep(cfg.download_delay_ms / 1000)
    if truncate:
        # Close mid-body: the client sees fewer bytes than Content-Length promised.
        if request.transport is not None:
            request.transport.close()
        return resp
    await resp.write_eof()
    return resp
