"""The job: start (take the run lease) -> read the source -> call -> store, for one object.

`run.py` is the run and its outcomes; `source.py`, `call.py` and `store.py` its steps; `base.py`
what they share.
"""

from worker.job.run import UpscaleJob

__all__ = ["UpscaleJob"]
