"""Multi-seed sweeps on Ray (``smfp sweep``) and their aggregate statistics (``smfp aggregate``).

``grid``: the runs and their configs; ``runner``: Ray tasks, resume, progress, ``sweep.json``;
``stats``: IQM and (stratified) bootstrap CIs; ``aggregate``: tables and learning curves.
Ray is imported only when a sweep starts (extra ``smfp[sweep]``).
"""

from smfp.sweep.grid import RunSpec, SweepError, build_grid, parse_list, parse_seeds
from smfp.sweep.stats import bootstrap_ci, iqm, normalise, stratified_bootstrap_ci

__all__ = ["RunSpec", "SweepError", "build_grid", "parse_list", "parse_seeds", "bootstrap_ci", "iqm",
           "normalise", "stratified_bootstrap_ci"]
