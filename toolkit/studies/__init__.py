"""Studies: many bundle runs and the tables they make.

- ``runs``: a bundle trained or evaluated as a subprocess, its log and progress
- ``compare``: `cit compare`, several bundles trained / evaluated on one split, a run reused while its
  command, configs and toolkit code (``recipe_digest``) are unchanged
- ``compare_table``: ``comparison.md`` / ``.csv`` / ``.json`` of `cit compare`
- ``experiments``: the experiments of ``configs/experiments/`` (pretraining, label fractions x seeds x
  arms, each a `cit compare` run; time to accuracy), run by ``scripts/reproduce_results.py``
- ``results_doc``: the tables of ``docs/results.md`` from the experiment summaries

Import the sub-modules directly; this package imports nothing itself.
"""
