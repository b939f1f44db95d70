"""upscale-queue worker: everything that runs a job (arq entry point: `worker.app.WorkerSettings`)."""
