"""How upscale-queue runs: the local stack, the gateway simulator, `make run`."""
