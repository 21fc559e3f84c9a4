"""The automl task: `rtdetr automl -e spec.yaml`: a search over the spec's automl_enabled fields,
each trial a `rtdetr train` (rtdetr.automl); trials.csv, best_spec.yaml and plots at the end."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from optuna.trial import TrialState

from rtdetr.automl.pbt import PopulationSearch
from rtdetr.automl.report import BEST_SPEC, TRIALS_CSV, write_best_spec, write_plots, write_trials_csv
from rtdetr.automl.search import STUDY_DB, Search, best_trial, counts
from rtdetr.automl.trials import train_command
from rtdetr.common.status import StatusLogger
from rtdetr.config import ExperimentConfig, spec_to_dict
from rtdetr.tasks.files import TaskFiles


def files(cfg: ExperimentConfig) -> TaskFiles:
    inputs = {}
    for i, source in enumerate(cfg.dataset.train_data_sources):
        inputs[f"dataset.train_data_sources[{i}].json_file"] = source.json_file
    inputs["dataset.val_data_sources.json_file"] = cfg.dataset.val_data_sources.json_file
    return TaskFiles(
        inputs=inputs,
        owned=(TRIALS_CSV, BEST_SPEC, "plots", "trial_[0-9]*", STUDY_DB, f"{STUDY_DB}-*", "member_[0-9]*"),
    )


def run(cfg: ExperimentConfig, results_dir: Path, status: StatusLogger) -> dict:
    return search(spec_to_dict(cfg), results_dir, status)


def search(spec: dict, results_dir: Path, status: StatusLogger, command: Callable[[Path], list[str]] = train_command,
           poll: float = 0.5) -> dict:  # fmt: skip
    """Run the search of ``spec`` (a full spec as data) and write its results; ``command(spec_file)``
    is a trial's command line."""
    kind = PopulationSearch if spec["automl"]["algorithm"] == "pbt" else Search
    searcher = kind(spec, results_dir, status, command=command, poll=poll)
    study = searcher.run()
    metric = searcher.settings.metric
    rows = write_trials_csv(study, searcher.dims, metric, results_dir / TRIALS_CSV)
    best_spec = write_best_spec(study, results_dir)
    plots = write_plots(study, results_dir / "plots", metric)
    best = best_trial(study)
    n = counts(study)
    summary = {
        "trials": rows, "complete": n[TrialState.COMPLETE.name], "pruned": n[TrialState.PRUNED.name],
        "failed": n[TrialState.FAIL.name], "best_trial": best.number if best else None,
        "best_value": best.value if best else None, "best_params": dict(best.params) if best else {},
    }  # fmt: skip
    kpi = {f"best_{metric}": best.value} if best else None
    status.write(
        "RUNNING",
        f"AutoML: {summary['complete']} complete, {summary['pruned']} pruned, {summary['failed']} failed trials"
        + (f"; the best is trial {best.number} ({metric} {best.value:.4f})" if best else "; none complete"),
        kpi=kpi,
    )
    print(f"trials: {results_dir / TRIALS_CSV} ({rows} trials)")
    if best_spec is not None:
        print(f"best: trial {best.number}, {metric} {best.value:.4f}; its spec: {best_spec}")
        for path, value in best.params.items():
            print(f"  {path} = {value}")
    for plot in plots:
        print(f"plot: {plot}")
    return summary
