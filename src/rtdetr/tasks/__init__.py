"""The tasks of the `rtdetr` command: thin wiring around the library.

Each implemented task is a module here with ``run(cfg, results_dir, status)`` and ``files(cfg)``
(what it reads and writes, see rtdetr.tasks.files); the table below
maps task names to those modules so that the CLI imports only what it runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

from rtdetr.config.rules import TASKS
from rtdetr.errors import NotImplementedTask

TASK_MODULES: dict[str, str] = {
    "train": "rtdetr.tasks.train",
    "distill": "rtdetr.tasks.distill",
    "evaluate": "rtdetr.tasks.evaluate",
    "inference": "rtdetr.tasks.inference",
    "export": "rtdetr.tasks.export",
    "gen_trt_engine": "rtdetr.tasks.gen_trt_engine",
    "quantize": "rtdetr.tasks.quantize",
    "automl": "rtdetr.tasks.automl",
}


def task_module(task: str) -> ModuleType:
    """The module of a task (its ``run`` and ``files``); NotImplementedTask for a task not built yet."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}")
    module = TASK_MODULES.get(task)
    if module is None:
        raise NotImplementedTask(f"the {task} task is not implemented yet in this version of rtdetr")
    return importlib.import_module(module)


def get_runner(task: str) -> Callable:
    """The ``run`` function of a task; NotImplementedTask for a task not built yet."""
    return task_module(task).run
