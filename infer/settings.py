"""The arguments of an annotation run, as one value passed down."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

from .model import Device, OnnxModel


@dataclass(frozen=True)
class AnnotateSettings:
    """The arguments of :func:`scnym.infer.annotate` (see there)."""

    store: Any
    model: str | os.PathLike
    output: str | os.PathLike | None
    layer: str | None
    gene_key: str | None
    key_added: str
    batch_size: int | None
    device: Device
    threads: int | None
    resume: bool
    workers: int | None
    scheduler: str | None
    min_gene_overlap: float
    unknown_threshold: float | None | Literal["auto"]
    write_probabilities: bool
    overwrite: bool
    progress: bool
    measurement: str | None = None
    obs_filter: str | None = None

    @property
    def output_path(self) -> str | None:
        return None if self.output is None else str(self.output)

    def threshold(self, model: OnnxModel) -> float | None:
        """The flag threshold (novelty score, else confidence; see
        :attr:`OnnxModel.unknown_threshold`): asked for, else the model's."""
        if self.unknown_threshold == "auto":
            return model.unknown_threshold
        return self.unknown_threshold
