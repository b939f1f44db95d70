"""The job as one pipeline: `run_job` (`pipeline.py`) reads top to bottom, from pick-up to
stored output; each step is a module of this package."""

from worker.job.pipeline import run_job

__all__ = ["run_job"]
