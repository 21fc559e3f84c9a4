"""The AutoML search: an Optuna study over the spec's automl_enabled fields, each trial a
`rtdetr train` of its own.

Algorithms (``automl.algorithm``) and what runs them:

=========  ===============================================================================
bayesian   Optuna's Gaussian-process sampler (random for its first trials), no pruning
bohb       multivariate TPE sampler + Hyperband pruner (BOHB's pairing)
hyperband  random sampler + Hyperband pruner
asha       random sampler + successive-halving pruner (asynchronous: no trial waits)
pbt        a population trained in rounds; see rtdetr.automl.pbt
=========  ===============================================================================

A trial trains for ``automl.max_epochs`` epochs (or the sampled ``train.num_epochs``, at most that),
validating every epoch; its epoch metrics go to the pruner as they come. The study lives in SQLite in
the results folder (or ``automl.storage``, any SQLAlchemy URL, so that several machines work on one
study): a search started again goes on with the trials it lacks. With the folder's own database,
trials a killed search left running are marked failed and their parameters run again first; with a
shared database a trial whose machine stopped is failed (and run again) once its heartbeat is two
minutes old.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryFailedTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from rtdetr.automl.trials import TrialOutcome, run_trial, thread_share, train_command
from rtdetr.common.dotted import set_path
from rtdetr.common.files import atomic_write_text
from rtdetr.common.status import StatusLogger
from rtdetr.config import dump_yaml, load_spec
from rtdetr.config.space import Dimension, apply_params, search_space
from rtdetr.errors import SpecError, UserError

log = logging.getLogger(__name__)

ALGORITHMS = ("bayesian", "bohb", "hyperband", "asha", "pbt")
MAXIMIZE = ("val_mAP50", "val_mAP")
MINIMIZE = ("val_loss", "train_loss")
STUDY_DB = "automl.db"
TRIAL_SPEC = "spec.yaml"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class TrialFailed(Exception):
    """A trial's process failed or its spec did not validate (the search goes on)."""


@dataclass
class SearchSettings:
    """The ``automl`` section, resolved."""

    algorithm: str
    metric: str
    max_trials: int
    max_concurrent: int
    max_epochs: int
    reduction_factor: int
    seed: int | None
    parameters: Sequence[str]
    ranges: Sequence[Mapping]
    storage: str | None
    study_name: str
    population_size: int
    eval_interval: int

    @classmethod
    def from_spec(cls, spec: Mapping) -> SearchSettings:
        a = spec["automl"]
        return cls(
            algorithm=a["algorithm"], metric=a["metric"], max_trials=a["max_trials"],
            max_concurrent=a["max_concurrent"], max_epochs=a["max_epochs"],
            reduction_factor=a["reduction_factor"], seed=a["seed"], parameters=list(a["parameters"]),
            ranges=[dict(r) for r in a["ranges"]], storage=a["storage"], study_name=a["study_name"],
            population_size=a["population_size"], eval_interval=a["eval_interval"],
        )  # fmt: skip

    @property
    def direction(self) -> str:
        return "minimize" if self.metric in MINIMIZE else "maximize"


def make_sampler(algorithm: str, seed: int | None) -> optuna.samplers.BaseSampler:
    if algorithm == "bayesian":
        return optuna.samplers.GPSampler(seed=seed)
    if algorithm == "bohb":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(algorithm: str, max_epochs: int, reduction_factor: int) -> optuna.pruners.BasePruner:
    if algorithm in ("bohb", "hyperband"):
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=max_epochs, reduction_factor=reduction_factor
        )
    if algorithm == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=reduction_factor)
    return optuna.pruners.NopPruner()


def open_study(settings: SearchSettings, results: Path, sampler=None, pruner=None, rerun: bool = True
               ) -> optuna.Study:  # fmt: skip
    """The search's study, created or loaded; the folder's own database unless ``storage`` is set."""
    url = settings.storage or f"sqlite:///{results / STUDY_DB}"
    shared = settings.storage is not None
    try:
        storage = RDBStorage(
            url,
            heartbeat_interval=30 if shared else None,
            grace_period=120 if shared else None,
            failed_trial_callback=RetryFailedTrialCallback(max_retry=1) if shared else None,
        )
        study = optuna.create_study(
            storage=storage, study_name=settings.study_name, direction=settings.direction,
            sampler=sampler, pruner=pruner, load_if_exists=True,
        )  # fmt: skip
    except (ValueError, ImportError, optuna.exceptions.OptunaError) as exc:
        raise UserError(f"automl.storage: cannot open the study at {url}: {exc}") from exc
    except Exception as exc:  # the database driver's own errors (sqlalchemy.exc.*)
        raise UserError(
            f"automl.storage: cannot open the study at {url}: {type(exc).__name__}: {exc}"
        ) from exc
    if study.direction.name.lower() != settings.direction:
        raise UserError(
            f"automl.metric: the study {settings.study_name} in {url} is to {study.direction.name.lower()}, "
            f"{settings.metric} is to {settings.direction}; use another study_name"
        )
    if not shared:
        requeue_interrupted(study, rerun)
    return study


def requeue_interrupted(study: optuna.Study, rerun: bool = True) -> int:
    """Trials a killed search left running: failed, and (``rerun``) their parameters queued to run
    first."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        if rerun and trial.params:
            study.enqueue_trial(dict(trial.params), user_attrs={"rerun_of": trial.number})
    if stale:
        log.info("automl: %d trials of an interrupted search run again", len(stale))
    return len(stale)


def counts(study: optuna.Study) -> dict[str, int]:
    out = {state.name: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        out[trial.state.name] += 1
    return out


def trial_spec(base: Mapping, params: Mapping[str, Any], trial_dir: Path, max_epochs: int,
               checkpoint_interval: int | None = None) -> dict:  # fmt: skip
    """The spec of one trial: ``base`` with the sampled values, the trial's own folder, every epoch
    validated, ``max_epochs`` (or the sampled num_epochs, at most that) epochs."""
    spec = apply_params(base, params)
    spec.pop("automl", None)
    epochs = min(int(params.get("train.num_epochs", max_epochs)), max_epochs)
    set_path(spec, "results_dir", str(trial_dir))
    for section in ("train", "evaluate", "inference", "export", "gen_trt_engine", "quantize"):
        if isinstance(spec.get(section), dict):
            spec[section]["results_dir"] = None
    set_path(spec, "train.num_epochs", epochs)
    set_path(spec, "train.validation_interval", 1)
    set_path(spec, "train.checkpoint_interval", checkpoint_interval or epochs)
    set_path(spec, "train.resume_training_checkpoint_path", None)
    set_path(spec, "train.is_dry_run", False)
    return spec


class Search:
    """One `rtdetr automl` run. ``command(spec_file)`` is a trial's command line (train by default);
    ``poll``: seconds between two looks at a trial's status.json."""

    def __init__(self, spec: Mapping, results: Path, status: StatusLogger,
                 command: Callable[[Path], list[str]] = train_command, poll: float = 0.5, grace: float = 30.0):  # fmt: skip
        self.spec = dict(spec)
        self.results = Path(results)
        self.status = status
        self.command, self.poll, self.grace = command, poll, grace
        self.settings = SearchSettings.from_spec(spec)
        self.dims: list[Dimension] = search_space(
            self.settings.parameters, self.settings.ranges, self.settings.max_epochs
        )
        self._lock = threading.Lock()

    def trial_dir(self, number: int) -> Path:
        return self.results / f"trial_{number:03d}"

    def run(self) -> optuna.Study:
        s = self.settings
        study = open_study(s, self.results, make_sampler(s.algorithm, s.seed),
                           make_pruner(s.algorithm, s.max_epochs, s.reduction_factor))  # fmt: skip
        done = sum(1 for t in study.get_trials(deepcopy=False, states=FINISHED))
        self.status.write(
            "RUNNING",
            f"AutoML ({s.algorithm}, {s.metric}): {done} of {s.max_trials} trials done; "
            f"searching {len(self.dims)} fields",
        )
        failed_before = counts(study)["FAIL"]
        while (left := s.max_trials - sum(1 for _ in study.get_trials(deepcopy=False, states=FINISHED))) > 0:
            failed = counts(study)["FAIL"] - failed_before
            if failed >= max(3, s.max_trials):  # a spec whose trials cannot run: stop, say why
                last = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))[-1]
                raise UserError(
                    f"automl: {failed} trials failed; the last ({last.user_attrs.get('folder', '')}): "
                    f"{last.user_attrs.get('error', 'see its trial.log')}"
                )
            study.optimize(
                self.objective, n_trials=left, n_jobs=s.max_concurrent, catch=(TrialFailed,),
                callbacks=[MaxTrialsCallback(s.max_trials, states=FINISHED)], gc_after_trial=False,
            )  # fmt: skip
        return study

    def prepare(self, trial: optuna.Trial, params: Mapping[str, Any], folder: Path, epochs: int,
                checkpoint_interval: int | None = None) -> Path:  # fmt: skip
        """Write the trial's spec into ``folder``; SpecError (kept on the trial) when it does not
        validate as a train spec."""
        folder.mkdir(parents=True, exist_ok=True)
        spec = trial_spec(self.spec, params, folder, epochs, checkpoint_interval)
        spec_file = folder / TRIAL_SPEC
        atomic_write_text(spec_file, dump_yaml(spec))
        trial.set_user_attr("folder", folder.name)
        try:
            load_spec(spec, action="train")
        except SpecError as exc:
            trial.set_user_attr("error", "; ".join(exc.problems))
            raise
        return spec_file

    def objective(self, trial: optuna.Trial) -> float:
        s = self.settings
        params = {d.path: d.suggest(trial) for d in self.dims}
        trial_dir = self.trial_dir(trial.number)
        try:
            spec_file = self.prepare(trial, params, trial_dir, s.max_epochs)
        except SpecError as exc:
            self._finish(trial, "FAIL", None, [], "; ".join(exc.problems))
            raise TrialFailed("; ".join(exc.problems)) from exc
        start = time.monotonic()

        def report(epoch: int, value: float) -> bool:
            trial.report(value, epoch + 1)  # the resource: epochs trained
            return trial.should_prune()

        outcome: TrialOutcome = run_trial(
            self.command(spec_file), trial_dir, s.metric, report, self.poll, self.grace,
            thread_share(s.max_concurrent),
        )  # fmt: skip
        trial.set_user_attr("duration_s", round(time.monotonic() - start, 3))
        trial.set_user_attr("values", outcome.values)
        if outcome.pruned:
            self._finish(trial, "PRUNED", outcome.values[-1] if outcome.values else None, outcome.values,
                         outcome.message)  # fmt: skip
            raise optuna.TrialPruned(outcome.message)
        if outcome.exit_code != 0 or not outcome.values:
            reason = outcome.message or f"exit status {outcome.exit_code}"
            trial.set_user_attr("error", reason)
            self._finish(trial, "FAIL", None, outcome.values, reason)
            raise TrialFailed(reason)
        value = min(outcome.values) if s.direction == "minimize" else max(outcome.values)
        self._finish(trial, "COMPLETE", value, outcome.values, "")
        return value

    def _finish(
        self, trial: optuna.Trial, state: str, value: float | None, values: list[float], why: str
    ) -> None:
        s = self.settings
        shown = f"{s.metric} {value:.4f}" if value is not None else "no value"
        message = f"Trial {trial.number} {state.lower()}: {shown}" + (f" ({why})" if why else "")
        with self._lock:
            self.status.write(
                "RUNNING", message, kpi={s.metric: value} if value is not None else None,
                trial=trial.number, trial_state=state, epochs=len(values), params=dict(trial.params),
            )  # fmt: skip
        log.info("automl: %s", message)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    key = (lambda t: t.value) if study.direction.name == "MINIMIZE" else (lambda t: -t.value)
    return sorted(complete, key=lambda t: (key(t), t.number))[0]
