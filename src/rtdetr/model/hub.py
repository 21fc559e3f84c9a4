"""Published weights by name, through the Hugging Face Hub (``huggingface_hub``: its cache, revisions,
offline mode, ``HF_ENDPOINT`` for mirrors).

A name is ``hf://ORG/REPO`` or ``hf://ORG/REPO@REVISION``; anything else is a path. Wherever a spec
or the API takes a weights file it takes a name:

- an RT-DETR in transformers' format (``hf://PekingU/rtdetr_r50vd``): downloaded, converted once with
  ``rtdetr.model.convert.convert_hf`` and kept as our checkpoint in ``<hub cache>/rtdetr/``;
- timm's backbone weights (``hf://timm/resnet50.a1_in1k``): the repository's weights file, which the
  backbone loaders read as they read a local one.

With ``HF_HUB_OFFLINE=1`` (or no network) a name is served from the cache; one that is not there is
a one-line error that says how to fill the cache (`rtdetr download NAME` on a connected machine, then
copy the cache folder).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from rtdetr.errors import UserError, abbreviate
from rtdetr.model.convert import convert_hf

PREFIX = "hf://"
PATTERNS = ["config.json", "preprocessor_config.json", "model.safetensors", "pytorch_model.bin"]
RTDETR_TYPES = ("rt_detr",)


def is_hub_name(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def parse_name(name: str) -> tuple[str, str | None]:
    """``hf://ORG/REPO[@REVISION]`` -> (repo id, revision or None); UserError for another form."""
    body = name.removeprefix(PREFIX)
    repo, _, revision = body.partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts) or any(p in (".", "..") for p in parts):
        raise UserError(f"'{abbreviate(name, 120)}': a hub name is hf://ORG/REPO or hf://ORG/REPO@REVISION")
    return repo, revision or None


def cache_dir() -> Path:
    return Path(constants.HF_HUB_CACHE)


def fetch(name: str, field: str) -> Path:
    """The local snapshot folder of a hub name (downloaded unless cached); one-line UserError."""
    repo, revision = parse_name(name)
    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=PATTERNS))
    except LocalEntryNotFoundError as exc:
        raise UserError(
            f"{field}: {name} is not in the Hugging Face cache ({cache_dir()}) and the hub cannot be reached"
            f"{' (HF_HUB_OFFLINE is set)' if constants.HF_HUB_OFFLINE else ''}; run `rtdetr download {name}` "
            "on a machine with a network and copy its cache folder here (or set HF_HUB_CACHE to it)"
        ) from exc
    except RevisionNotFoundError as exc:
        raise UserError(f"{field}: {name}: the repository has no revision '{revision}'") from exc
    except RepositoryNotFoundError as exc:
        raise UserError(f"{field}: {name}: no such repository on the hub (or it is private)") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise UserError(f"{field}: {name}: cannot download: {abbreviate(exc, 200)}") from exc


def _config(folder: Path) -> dict:
    try:
        data = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def resolve(name: str, field: str) -> Path:
    """The local weights file a hub name stands for (rules in the module docstring)."""
    folder = fetch(name, field)
    config = _config(folder)
    kind = str(config.get("model_type", ""))
    if kind.startswith("rt_detr") and kind not in RTDETR_TYPES:
        raise UserError(
            f"{field}: {name} is a {kind} model; rtdetr holds RT-DETR (v1) models ({', '.join(RTDETR_TYPES)})"
        )
    if kind in RTDETR_TYPES:
        repo, _ = parse_name(name)
        target = cache_dir() / "rtdetr" / f"{repo.replace('/', '--')}--{folder.name}.pth"
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".pth", dir=target.parent)
            os.close(fd)
            try:
                convert_hf(folder, tmp)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return target
    for weights in ("model.safetensors", "pytorch_model.bin"):
        if (folder / weights).is_file():
            return folder / weights
    raise UserError(f"{field}: {name}: neither an RT-DETR model in transformers' format nor a weights file")


def local_path(value: str | os.PathLike, field: str) -> str | os.PathLike:
    """``value`` itself, or the local file of a hub name."""
    return str(resolve(value, field)) if is_hub_name(value) else value
