# syntax=docker/dockerfile:1
# upscale-queue: one image for every role (worker, webhook, sqs, dashboard, simulator).
#
# Layer order: the pinned dependencies are built and installed from pyproject.toml +
# requirements.lock alone, so a code change reuses those layers and only rebuilds our own small
# wheel. requirements.lock pins every package (runtime and dev; regenerate it with the command
# in its header); the image installs the runtime subset at exactly those versions.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS deps
WORKDIR /src
COPY pyproject.toml requirements.lock ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
      > requirements.txt \
 && pip wheel --wheel-dir /wheels -r requirements.txt -c requirements.lock

FROM ${PYTHON_IMAGE} AS app
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY producers ./producers
COPY infra ./infra
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --no-deps --wheel-dir /dist .

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 upscale \
 && useradd --system --uid 10001 --gid 10001 --home /app upscale
# Dependencies first (cached until pyproject.toml or the lock changes), then our package.
RUN --mount=type=bind,from=deps,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index /wheels/*.whl
RUN --mount=type=bind,from=app,source=/dist,target=/dist \
    pip install --no-cache-dir --no-index --no-deps /dist/*.whl
USER 10001:10001
WORKDIR /app
# Few malloc arenas: boto3/Pillow work runs in threads; without this, freed buffers stay mapped
# per thread arena and RSS creeps up on large results.
ENV UPSCALE_LOG_FORMAT=json PYTHONUNBUFFERED=1 MALLOC_ARENA_MAX=2
EXPOSE 8080 8090 9100
ENTRYPOINT ["upscale"]
CMD ["worker"]
