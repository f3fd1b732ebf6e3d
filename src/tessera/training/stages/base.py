"""What a stage hands the generic trainer: the ``Stage`` description.

The trainer never names a model and models never import the trainer (DESIGN rule 4): each
module of ``tessera.training.stages`` binds one model to the trainer by building one of these,
and :func:`tessera.training.stages.get_stage` looks stages up by name.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from tessera.config.base import Config
from tessera.config.training import TrainConfig
from tessera.training.data import BatchStream
from tessera.training.distributed import DistContext
from tessera.training.trainer import Objective


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Which data a run reads: a source spec for ``tessera.data.open_source``, a seed, and the
    frozen checkpoints that turn it into model inputs (stage 2: the dVAE and the text
    tokenizer; the unCLIP decoder: the tokenizer and the CLIP that embeds each image)."""

    source: str = "shapes"
    seed: int = 0
    vae: str | None = None
    tokenizer: str | None = None
    clip: str | None = None


@dataclasses.dataclass(frozen=True)
class Stage:
    """A trainable stage.

    model_config_cls: the stage's model config class (its ``kind`` names checkpoints).
    presets: name -> () -> (model config, train config); a ``tiny`` preset is required.
    build_model: model config -> ``nn.Module``.
    objective: model config -> objective function (schedules may depend on the config).
    make_batches: (model config, train config, data, ctx) -> resumable batch stream.
    sample_hook: (model config, data) -> hook(model, step, out_dir) writing samples, or None.
    export: (model with EMA weights, model config, out_dir, data) -> release checkpoint dir.
    prepare: (model, model config, data) -> None, run once on the freshly built model before
      the trainer copies it (e.g. the AR prior fits its PCA codebook from data); it must be
      deterministic, since a resumed run prepares again before loading its checkpoint.
    needs: DataSpec fields the stage requires (e.g. ``("vae", "tokenizer")``).
    fit_inputs: (model config, data, names the user set) -> the model config fitted to the
      frozen inputs (e.g. the CLIP's embedding width), leaving the user's settings alone.
    """

    name: str
    model_config_cls: type[Config]
    presets: dict[str, Callable[[], tuple[Config, TrainConfig]]]
    build_model: Callable[[Any], nn.Module]
    objective: Callable[[Any], Objective]
    make_batches: Callable[[Any, TrainConfig, DataSpec, DistContext], BatchStream]
    sample_hook: Callable[[Any, DataSpec], Callable[[nn.Module, int, Path], None]] | None = None
    export: Callable[[nn.Module, Any, Path, DataSpec], Path] | None = None
    prepare: Callable[[nn.Module, Any, DataSpec], None] | None = None
    needs: tuple[str, ...] = ()
    fit_inputs: Callable[[Any, DataSpec, set[str]], Any] | None = None


def append_eval(out_dir: Path, record: dict[str, Any]) -> None:
    """Add one evaluation record to the run's ``eval.jsonl`` (beside the hook's ``out_dir``)."""
    with (Path(out_dir).parent / "eval.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


def exporter(
    tokenizer_of: Callable[[Any, DataSpec], Any] | None = None,
) -> Callable[[nn.Module, Any, Path, DataSpec], Path]:
    """A stage's ``export``: the release checkpoint (config + weights), with the tokenizer
    ``tokenizer_of(model config, data)`` its captions use when given."""

    def export(model: nn.Module, cfg: Any, out_dir: Path, data: DataSpec) -> Path:
        from tessera.checkpoint import save

        tok = None if tokenizer_of is None else tokenizer_of(cfg, data)
        return save(out_dir, config=cfg, model=model, tokenizer=tok, overwrite=True)

    return export


def stage_presets(kind: str) -> dict[str, Callable[[], tuple[Config, TrainConfig]]]:
    """name -> () -> (model config, train config) for every training recipe registered in
    :mod:`tessera.config` as ``train.<kind>`` (each paired with the model preset of its name)."""
    from tessera.config.presets import preset, preset_names

    def pair(name: str) -> Callable[[], tuple[Config, TrainConfig]]:
        return lambda: (preset(kind, name), preset(f"train.{kind}", name))

    return {name: pair(name) for name in preset_names(f"train.{kind}")}
