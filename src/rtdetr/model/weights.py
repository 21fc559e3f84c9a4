"""Reading weight files safely: torch's weights-only loading (no code in a file runs) with one-line
errors, and telling an ONNX file apart from a checkpoint.

Training frameworks also pickle their settings into checkpoints (TAO's and Lightning's hold OmegaConf
specs and their own classes), which torch's weights-only loader refuses. Such a file is read again
with every object of a known settings library (``INERT_MODULES``) replaced by an inert placeholder
that keeps nothing and runs nothing; the tensors load as usual. Objects of any other module (``os``,
``builtins``' functions, ...) still refuse the whole file.
"""

from __future__ import annotations

import _compat_pickle
import collections
import os
import pickle
import types
from pathlib import Path
from typing import Any

import torch
from torch._weights_only_unpickler import _get_allowed_globals

from rtdetr.errors import UserError, abbreviate


def torch_load_weights(path: str | os.PathLike, field: str) -> Any:
    """``torch.load`` of a weights file in torch's weights-only mode (no code in the file runs); a
    missing, folder, corrupt or unsafe file is one UserError naming ``field``. torch's advice to
    load with ``weights_only=False`` is left out: it would run code from an untrusted file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{field}: {path}: file not found")
    if path.is_dir():
        raise UserError(f"{field}: {path}: is a folder, expected a weights file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a bad file
        if isinstance(exc, pickle.UnpicklingError) and "GLOBAL" in str(exc):
            # a pickled object of some class: the settings of a training framework?
            try:
                return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_INERT_PICKLE)
            except Exception:  # an object of another module: refused as unsafe, with torch's reason
                pass
        if looks_like_onnx(path):
            raise UserError(
                f"{field}: {path}: an ONNX model, not a checkpoint: run it as evaluate.trt_engine / "
                "inference.trt_engine, or with Detector.from_file"
            ) from exc
        raise UserError(f"{field}: {path}: {load_error_reason(exc)}") from exc


# modules whose pickled objects are settings, not weights: they load as inert placeholders
INERT_MODULES = frozenset(
    {"omegaconf", "typing", "enum", "argparse", "pathlib", "numpy", "nvidia_tao_pytorch", "lightning",
     "pytorch_lightning", "lightning_fabric", "hydra"}
)  # fmt: skip


class Inert:
    """Stands in for a pickled object of INERT_MODULES: accepts any arguments and state, keeps none."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Inert:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass


# plain types that settings refer to (an OmegaConf node records the type of its value)
_PLAIN_TYPES = {
    f"builtins.{t.__name__}": t
    for t in (dict, list, tuple, set, frozenset, int, float, complex, str, bytes, bool, object, slice)
}


class _InertUnpickler(pickle.Unpickler):
    """torch's weights-only globals and plain types as they are; those of INERT_MODULES as Inert;
    nothing else."""

    allowed = {**_get_allowed_globals(), **_PLAIN_TYPES, "collections.defaultdict": collections.defaultdict}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2's names (pickle protocol 2)
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        else:
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = self.allowed.get(f"{module}.{name}")
        if found is not None:
            return found
        if module.split(".")[0] in INERT_MODULES:
            return Inert
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name}")


# what torch.load's pickle_module needs: an Unpickler class (torch subclasses it) and load()
_INERT_PICKLE = types.SimpleNamespace(
    Unpickler=_InertUnpickler, load=lambda fh, **kw: _InertUnpickler(fh, **kw).load(), __name__="inert_pickle"
)


def load_error_reason(exc: BaseException) -> str:
    """Why torch could not load a file, in one short clause without torch's unsafe advice."""
    text = str(exc).strip()
    if "Weights only load failed" in text:
        lines = [line.strip() for line in text.splitlines()]
        unsafe = next((line for line in lines if "GLOBAL" in line), None)
        if unsafe is not None:  # a class or function to import: code that would run
            return (
                "holds Python objects besides tensors, which rtdetr does not load (they could run code): "
                + abbreviate(unsafe, 120)
            )
        detail = next((line for line in lines if line.startswith("Unsupported")), "")
        return "not a readable checkpoint (corrupt, or not a torch file)" + (
            f": {abbreviate(detail, 80)}" if detail else ""
        )
    first = text.splitlines()[0].split(". ")[0] if text else type(exc).__name__
    return f"not a readable checkpoint (corrupt or truncated): {abbreviate(first, 160)}"


def looks_like_onnx(path: str | os.PathLike) -> bool:
    """Whether ``path`` parses as an ONNX model with a graph (whatever its suffix)."""
    try:
        import onnx  # only for a file that is no torch checkpoint: onnx is slow to import

        return len(onnx.load(str(path), load_external_data=False).graph.node) > 0
    except Exception:  # protobuf's DecodeError and friends: not ONNX
        return False
