"""What a search leaves in its results folder: trials.csv, best_spec.yaml and plots.

- ``trials.csv``: one row per trial: number, state, value (the metric of its best epoch), duration,
  the sampled value of every searched field, the metric of each epoch, its folder and, for a
  failed trial, why.
- ``best_spec.yaml``: the full spec of the best complete trial, with ``results_dir`` set to
  ``<automl results>/best``: `rtdetr train -e best_spec.yaml` trains it again.
- ``plots/``: the metric by trial (with the best so far), the fields' importances (fANOVA, once
  two trials are complete) and a parallel-coordinate plot of the complete trials, as PNG.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import warnings
from pathlib import Path

import matplotlib
import optuna
import yaml

from rtdetr.automl.search import TRIAL_SPEC, best_trial
from rtdetr.common.dotted import set_path
from rtdetr.common.files import atomic_write_text
from rtdetr.config import dump_yaml
from rtdetr.config.space import Dimension

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from optuna.visualization import matplotlib as views  # noqa: E402

log = logging.getLogger(__name__)

TRIALS_CSV = "trials.csv"
BEST_SPEC = "best_spec.yaml"


def write_trials_csv(study: optuna.Study, dims: list[Dimension], metric: str, path: Path) -> int:
    """trials.csv (columns in the module docstring); returns the number of rows."""
    names = [d.path for d in dims]
    trials = study.get_trials(deepcopy=False)
    population = ["member", "round"] if any("member" in t.user_attrs for t in trials) else []
    columns = ["number", "state", metric, "duration_s", *population, *names, f"{metric}_per_epoch", "folder",
               "error"]  # fmt: skip
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for t in trials:
        values = t.user_attrs.get("values") or [
            t.intermediate_values[k] for k in sorted(t.intermediate_values)
        ]
        writer.writerow([
            t.number, t.state.name, "" if t.value is None else t.value, t.user_attrs.get("duration_s", ""),
            *[t.user_attrs.get(k, "") for k in population], *[t.params.get(n, "") for n in names],
            json.dumps(values), t.user_attrs.get("folder", ""), t.user_attrs.get("error", ""),
        ])  # fmt: skip
    atomic_write_text(path, out.getvalue())
    return len(trials)


def write_best_spec(study: optuna.Study, results: Path) -> Path | None:
    """best_spec.yaml from the best complete trial's own spec; None without a complete trial."""
    best = best_trial(study)
    if best is None:
        return None
    spec = yaml.safe_load((results / best.user_attrs["folder"] / TRIAL_SPEC).read_text())
    set_path(spec, "results_dir", str(results / "best"))
    header = f"# AutoML's best trial: {best.user_attrs['folder']}, value {best.value:.6g}\n"
    atomic_write_text(results / BEST_SPEC, header + dump_yaml(spec))
    return results / BEST_SPEC


def write_plots(study: optuna.Study, folder: Path, metric: str) -> list[Path]:
    """The search's plots as PNG; each is skipped (and logged) when the trials do not allow it."""
    folder.mkdir(parents=True, exist_ok=True)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    plans = [("metric_by_trial.png", views.plot_optimization_history, 1)]
    plans += [("importances.png", views.plot_param_importances, 2)]
    plans += [("parallel_coordinate.png", views.plot_parallel_coordinate, 2)]
    written = []
    for name, plot, needed in plans:
        if len(complete) < needed:
            log.info("automl: %s needs %d complete trials, there are %d", name, needed, len(complete))
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna's "experimental" notes
                axes = plot(study, target_name=metric)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            figure.set_size_inches(9, 5)
            figure.tight_layout()
            tmp = folder / f".{name}.tmp.png"
            figure.savefig(tmp, dpi=100)
            tmp.replace(folder / name)
            written.append(folder / name)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. importances of constant values
            log.warning("automl: %s not drawn: %s", name, exc)
        finally:
            plt.close("all")
    return written
