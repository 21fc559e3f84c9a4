"""AutoML: the search over the spec's automl_enabled fields behind `rtdetr automl` (Optuna); its
search space is rtdetr.config.space (``rtdetr validate`` checks it).

- ``trials``: one trial: a `rtdetr train` process watched through its status.json, pruned at once.
- ``search``: the study, its samplers and pruners (bayesian, bohb, hyperband, asha), resume.
- ``pbt``: population-based training on the same study.
- ``report``: trials.csv, best_spec.yaml and the plots.
"""
