"""The typed experiment spec: schema, loading, validation, generated reference."""

from rtdetr.config.loader import dump_yaml, load_spec, read_spec_file, spec_to_dict
from rtdetr.config.rules import TASKS
from rtdetr.config.schema import ExperimentConfig, ModelConfig

__all__ = [
    "TASKS",
    "ExperimentConfig",
    "ModelConfig",
    "dump_yaml",
    "load_spec",
    "read_spec_file",
    "spec_to_dict",
]
