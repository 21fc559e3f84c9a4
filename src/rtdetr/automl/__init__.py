"""AutoML: the search over the spec's automl_enabled fields behind `rtdetr automl` (Optuna).

- ``space``: the search space from the spec schema's field metadata, and sampled values set into a spec.
- ``trials``: one trial: a `rtdetr train` process watched through its status.json, pruned at once.
- ``search``: the study, its samplers and pruners (bayesian, bohb, hyperband, asha), resume.
- ``pbt``: population-based training on the same study.
- ``report``: trials.csv, best_spec.yaml and the plots.
"""
