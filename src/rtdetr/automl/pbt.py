"""Population-based training: ``population_size`` members trained side by side in rounds.

Each member has a folder (``member_NN``) where `rtdetr train` runs once per round with
``train.num_epochs`` raised by ``eval_interval``: the train task goes on from the member's latest
checkpoint with the spec's (possibly changed) optimizer settings. After a round the members are
ranked by their latest metric; the worst quarter (at least one) each take a member of the best
quarter's checkpoint and settings (exploit), then multiply each searched float setting of the
optimizer, the augmentation and the EMA by 1.2 or 1/1.2, kept in range (explore). Settings that
change the model's shape or the batch are sampled once and travel with the weights.

Every member's round is a trial of the study (its parameters, its value: the round's last metric),
so trials.csv, the plots and the database are those of the other algorithms. A search started
again goes on from the first round not every member finished.
"""

from __future__ import annotations

import math
import random
import shutil
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from rtdetr.automl.search import Search, open_study
from rtdetr.automl.trials import run_trial, thread_share
from rtdetr.config.space import Dimension
from rtdetr.errors import SpecError, UserError

EXPLORED_PREFIXES = ("train.optim.", "dataset.augmentation.", "train.ema.")
FACTOR = 1.2
LATEST = "rtdetr_model_latest.pth"


def distribution(d: Dimension) -> optuna.distributions.BaseDistribution:
    if d.kind == "categorical":
        return CategoricalDistribution(list(d.choices))
    if d.kind == "int":
        return IntDistribution(int(d.low), int(d.high), log=d.log)
    return FloatDistribution(float(d.low), float(d.high), log=d.log)


def draw(d: Dimension, rng: random.Random) -> Any:
    """A value of ``d``, uniform (log-uniform on a log scale)."""
    if d.kind == "categorical":
        return rng.choice(list(d.choices))
    if d.log:
        value = math.exp(rng.uniform(math.log(d.low), math.log(d.high)))
    else:
        value = rng.uniform(d.low, d.high)
    return min(max(round(value), int(d.low)), int(d.high)) if d.kind == "int" else value


def explored(d: Dimension) -> bool:
    return d.kind == "float" and d.path.startswith(EXPLORED_PREFIXES)


def perturb(params: Mapping[str, Any], dims: list[Dimension], rng: random.Random) -> dict[str, Any]:
    """Each explored setting times 1.2 or 1/1.2, kept in its range."""
    out = dict(params)
    for d in dims:
        if explored(d) and d.path in out:
            value = out[d.path] * (FACTOR if rng.random() < 0.5 else 1 / FACTOR)
            out[d.path] = min(max(value, d.low), d.high)
    return out


class PopulationSearch(Search):
    """`automl.algorithm: pbt` (rules in the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.dims = [d for d in self.dims if d.path != "train.num_epochs"]  # the rounds set the epochs

    def member_dir(self, member: int) -> Path:
        return self.results / f"member_{member:02d}"

    def run(self) -> optuna.Study:
        s = self.settings
        study = open_study(s, self.results, optuna.samplers.RandomSampler(seed=s.seed), rerun=False)
        rounds = math.ceil(s.max_epochs / s.eval_interval)
        rng = random.Random(s.seed)
        members = self._initial_params(study, rng)
        done = self._finished_rounds(study)
        self.status.write(
            "RUNNING", f"AutoML (pbt, {s.metric}): {s.population_size} members, {rounds} rounds of "
            f"{s.eval_interval} epochs; {len(done)} rounds done",
        )  # fmt: skip
        for r in range(rounds):
            epochs = min(s.max_epochs, (r + 1) * s.eval_interval)
            if r in done:
                members = done[r]["params"]
                continue
            values = self._round(study, r, epochs, members)
            members = self._exploit_explore(study, r, values, members, rng)
        return study

    def _initial_params(self, study: optuna.Study, rng: random.Random) -> list[dict[str, Any]]:
        """The members' first settings, drawn once with the seed and kept in the study."""
        saved = study.user_attrs.get("pbt_initial")
        if saved:
            return [dict(p) for p in saved]
        out = [{d.path: draw(d, rng) for d in self.dims} for _ in range(self.settings.population_size)]
        study.set_user_attr("pbt_initial", out)
        return out

    def _finished_rounds(self, study: optuna.Study) -> dict[int, dict]:
        """round -> the parameters members carried out of it, for rounds every member finished and
        whose exploit step was made (kept in the study's attributes)."""
        out = {}
        for key, value in study.user_attrs.items():
            if key.startswith("pbt_round_"):
                out[int(key.removeprefix("pbt_round_"))] = value
        return out

    def _round(self, study: optuna.Study, r: int, epochs: int, members: list[dict]) -> list[float | None]:
        s = self.settings
        values: list[float | None] = [None] * len(members)
        dists = {d.path: distribution(d) for d in self.dims}
        lock = threading.Lock()

        def one(m: int) -> None:
            with lock:
                study.enqueue_trial(members[m], user_attrs={"member": m, "round": r})
                trial = study.ask(dists)
            folder = self.member_dir(m)
            try:
                spec_file = self.prepare(
                    trial, members[m], folder, epochs, checkpoint_interval=s.eval_interval
                )
            except SpecError:
                study.tell(trial, state=TrialState.FAIL)
                return
            outcome = run_trial(self.command(spec_file), folder, s.metric, lambda e, v: False, self.poll, self.grace,
                                thread_share(s.max_concurrent))  # fmt: skip
            trial.set_user_attr("values", outcome.values)
            if outcome.exit_code != 0 or not outcome.values:
                trial.set_user_attr("error", outcome.message or f"exit status {outcome.exit_code}")
                study.tell(trial, state=TrialState.FAIL)
                self._finish(trial, "FAIL", None, outcome.values, trial.user_attrs["error"])
                return
            values[m] = outcome.values[-1]
            study.tell(trial, values[m])
            self._finish(trial, "COMPLETE", values[m], outcome.values, f"member {m}, round {r}")

        with ThreadPoolExecutor(max_workers=s.max_concurrent) as pool:
            list(pool.map(one, range(len(members))))
        if all(v is None for v in values):
            raise UserError(f"automl (pbt): every member failed in round {r}; see member_*/trial.log")
        return values

    def _exploit_explore(self, study: optuna.Study, r: int, values: list[float | None], members: list[dict],
                         rng: random.Random) -> list[dict]:  # fmt: skip
        s = self.settings
        worst_first = -math.inf if s.direction == "maximize" else math.inf
        order = sorted(range(len(members)), key=lambda m: worst_first if values[m] is None else values[m])
        if s.direction == "minimize":
            order.reverse()  # worst (highest) first
        quarter = max(1, len(members) // 4)
        bottom, top = order[:quarter], order[-quarter:]
        out = [dict(p) for p in members]
        for loser in bottom:
            winner = rng.choice(top)
            if winner == loser:
                continue
            self._copy_weights(winner, loser)
            out[loser] = perturb(members[winner], self.dims, rng)
        self.status.write("RUNNING", f"PBT round {r}: members {bottom} took the weights of {top}")
        study.set_user_attr(f"pbt_round_{r}", {"params": out})
        return out

    def _copy_weights(self, source: int, target: int) -> None:
        """The source member's latest checkpoint (and its EMA twin) in place of the target's."""
        src, dst = self.member_dir(source) / "train", self.member_dir(target) / "train"
        latest = (src / LATEST).resolve() if (src / LATEST).exists() else None
        if latest is None:
            return
        for path in [latest, latest.with_name(latest.stem + "-EMA.pth")]:
            if path.is_file():
                tmp = dst / f".{path.name}.copy"
                shutil.copyfile(path, tmp)
                tmp.replace(dst / path.name)
        link = dst / LATEST
        tmp_link = dst / f".{LATEST}.link"
        tmp_link.unlink(missing_ok=True)
        tmp_link.symlink_to(latest.name)
        tmp_link.replace(link)
