"""`python -m infra.stack`: start the local stack, print its environment as `export K=V` lines,
and run until Ctrl-C (or SIGTERM)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

from infra.stack.local import LocalStack


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(
        prog="python -m infra.stack",
        description="Start the local stack (redis-server, SeaweedFS S3, the gateway simulator) "
        "on free loopback ports, print its environment as `export K=V` lines (eval them in "
        "another shell) and run until Ctrl-C or SIGTERM.",
    ).parse_args(argv)  # --help prints this and exits; anything else is a usage error
    t0 = time.monotonic()
    with LocalStack() as stack:
        for k, v in stack.env().items():
            print(f"export {k}={json.dumps(v) if v.startswith('[') else v}")
        sample = _sample(stack)
        print(
            f"# local stack up in {time.monotonic() - t0:.1f}s (dir {stack.dir}); {sample} "
            "ready for the README's examples; Ctrl-C stops it",
            file=sys.stderr,
            flush=True,
        )
        stop = signal.sigwait if hasattr(signal, "sigwait") else None
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        if stop:
            stop({signal.SIGINT, signal.SIGTERM})
    print("# local stack stopped", file=sys.stderr)


def _sample(stack: LocalStack) -> str:
    """The README's first example works as written: `s3://photos/cat.jpg` and the default
    destination's bucket exist (a generated image, not a cat)."""
    import io

    from PIL import Image

    from infra.stack.seaweedfs import ensure_buckets

    s3 = stack.s3_client()
    ensure_buckets(s3, "photos", "photos-upscaled")
    buf = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").resize((320, 240)).save(buf, "JPEG")
    s3.put_object(Bucket="photos", Key="cat.jpg", Body=buf.getvalue(), ContentType="image/jpeg")
    return "s3://photos/cat.jpg"


if __name__ == "__main__":
    main()
