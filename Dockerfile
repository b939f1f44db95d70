# upscale-queue: one image for every role (worker, webhook, sqs, dashboard, simulator).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY producers ./producers
COPY infra ./infra
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home /app upscale
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER 10001
WORKDIR /app
# Few malloc arenas: boto3/Pillow work runs in threads; without this, freed buffers stay mapped
# per thread arena and RSS creeps up on large results.
ENV UPSCALE_LOG_FORMAT=json PYTHONUNBUFFERED=1 MALLOC_ARENA_MAX=2
EXPOSE 8080 8090 9100
ENTRYPOINT ["upscale"]
CMD ["worker"]
