"""Multi-seed sweeps on Ray (``smfp sweep``) and their aggregate statistics (``smfp aggregate``).

``grid``: the runs and their configs; ``runner``: Ray tasks, resume, progress, ``sweep.json``;
``stats``: IQM, probability of improvement and performance profiles (rliable), per-task bootstrap CIs;
``aggregate``: tables, learning curves and profiles.
Ray is imported only when a sweep starts (extra ``smfp[sweep]``).
"""

from smfp.sweep.grid import RunSpec, SweepError, build_grid, parse_list, parse_seeds
from smfp.sweep.stats import bootstrap_ci, iqm_and_mean, normalise, performance_profile, probability_of_improvement

__all__ = ["RunSpec", "SweepError", "build_grid", "parse_list", "parse_seeds", "bootstrap_ci", "iqm_and_mean",
           "normalise", "performance_profile", "probability_of_improvement"]
