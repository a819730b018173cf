"""Sweeps: a recipe applied over a prompt set as small deterministic units, each keyed, stored as
Parquet and scheduled by an engine (`local`, in-process, or `ray`), so a sweep resumes after a kill
and scales out over GPUs and machines. The recipes' own unit code lives in
`interventions.sweep_recipes` (traces) and `interventions.sweep_locogen`; this package knows nothing
of what a unit computes."""

from interp.sweeps.driver import SweepStats, run_units
from interp.sweeps.engines import Engine, LocalEngine, make_engine
from interp.sweeps.keys import model_fingerprint, unit_key
from interp.sweeps.store import SweepStore
from interp.sweeps.task import Outcome, Task, UnitSpec, Worker

__all__ = ["Engine", "LocalEngine", "Outcome", "SweepStats", "SweepStore", "Task", "UnitSpec", "Worker",
           "make_engine", "model_fingerprint", "run_units", "unit_key"]
