"""The supervised and semi-supervised training loops.

Nothing here reads files or knows AnnData: the loops take loaders of batch dicts
(``input``, ``output`` one-hot labels, ``domain`` one-hot domains) and return
their history; checkpoints are written only when an ``out_path`` is given. The
losses they combine live in :mod:`scnym.losses` and are importable from here too,
as in scNym 0.3.2.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .dataprep import Batch, MatrixLoader, identity, repeater
from .losses import (
    CONFIDENCE_HISTORY,
    DANLoss,
    ICLWeight,
    InterpolationConsistencyLoss,
    MixMatchLoss,
    cross_entropy,
    get_class_weight,
    sharpen_labels,
)
from .model import CellTypeCLF

logger = logging.getLogger(__name__)


@dataclass
class EpochRecord:
    """One row of the training log."""

    epoch: int
    train_loss: float
    sup_loss: float
    unsup_loss: float = 0.0
    dan_loss: float = 0.0
    unsup_weight: float = 0.0
    dan_weight: float = 0.0
    dan_acc: float = float("nan")
    pseudolabel_confident: float = float("nan")
    val_loss: float = float("nan")
    val_acc: float = float("nan")
    best: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        """One readable line: the losses, validation scores, weights and time."""
        best = ", best so far" if self.best else ""
        return (
            f"loss {self.train_loss:.3f} (supervised {self.sup_loss:.3f}, unsupervised "
            f"{self.unsup_loss:.3f} x {self.unsup_weight:.2f}, adversary {self.dan_loss:.3f} x "
            f"{self.dan_weight:.2f}), validation loss {self.val_loss:.3f}, accuracy "
            f"{self.val_acc:.3f}{best}; {self.seconds:.1f} s"
        )


@dataclass
class TrainHistory:
    """What a training run produced: per-epoch records and the best epoch."""

    records: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = -1
    best_loss: float = float("inf")
    stopped_early: bool = False


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: MatrixLoader) -> tuple[float, float]:
    """Mean cross entropy and accuracy of ``model`` (eval mode) over a loader."""
    was_training = model.training
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    for batch in loader:
        logits = model(batch["input"])
        total_loss += float(cross_entropy(logits, batch["output"], reduction="sum"))
        correct += int((logits.argmax(1) == batch["output"].argmax(1)).sum())
        n += logits.shape[0]
    model.train(was_training)
    return total_loss / max(n, 1), correct / max(n, 1)


class Trainer:
    """Supervised training loop with model selection on a held-out split.

    Parameters
    ----------
    model
        The classifier.
    criterion
        Loss on (logits, one-hot labels).
    optimizer
        Optimiser over the model's (and adversary's) parameters.
    dataloaders
        ``{'train': loader, 'val': loader}``; ``val`` selects the best epoch.
    out_path
        If given, checkpoints are written here (``00_best_model_weights.pkl``,
        ``model_weights_{epoch:03d}.pkl``).
    n_epochs
        Maximum number of epochs.
    min_epochs
        No best checkpoint is chosen before this epoch.
    patience
        Stop after this many epochs without a new best.
    save_freq
        Also checkpoint every ``save_freq`` epochs.
    scheduler
        Optional learning rate scheduler stepped once per epoch.
    batch_transform
        Transform applied to each training batch (e.g. :class:`SampleMixUp`).
    progress
        Show a progress bar over epochs with the losses.
    """

    def __init__(
        self,
        model: CellTypeCLF,
        criterion: Callable,
        optimizer: torch.optim.Optimizer,
        dataloaders: dict[str, MatrixLoader],
        out_path: str | os.PathLike | None = None,
        n_epochs: int = 100,
        min_epochs: int = 0,
        patience: int | None = None,
        save_freq: int | None = None,
        scheduler=None,
        batch_transform: Callable[[Batch], Batch] | None = None,
        progress: bool = True,
    ) -> None:
        self.model = model
        self.criterion = criterion
        self.optimizer = optimizer
        self.dataloaders = dataloaders
        self.out_path = out_path
        self.n_epochs = n_epochs
        self.min_epochs = min(min_epochs, max(n_epochs - 1, 0))
        self.patience = patience
        self.save_freq = save_freq if save_freq is not None else max(n_epochs // 5, 1)
        self.scheduler = scheduler
        self.batch_transform = batch_transform or identity
        self.progress = progress
        self.history = TrainHistory()
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_extra_state: dict[str, torch.Tensor] | None = None

    # -- hooks for subclasses -------------------------------------------------
    def _extra_module(self) -> torch.nn.Module | None:
        return None

    def _step(self, batch: Batch, epoch: int) -> dict[str, float]:
        batch = self.batch_transform(batch)
        loss = self.criterion(self.model(batch["input"]), batch["output"])
        self._backward(loss)
        return {"train_loss": loss.item(), "sup_loss": loss.item()}

    def _epoch_weights(self, epoch: int) -> dict[str, float]:
        return {}

    # -- loop -----------------------------------------------------------------
    def _backward(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise RuntimeError(
                "Training loss became NaN/Inf; check the input for extreme values "
                "or lower the learning rate."
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def train_epoch(self, epoch: int) -> EpochRecord:
        """Run one pass over the training loader."""
        self.model.train()
        start = time.perf_counter()
        weights = self._epoch_weights(epoch)
        sums: dict[str, float] = {}
        n_batches = 0
        for batch in self.dataloaders["train"]:
            for key, value in self._step(batch, epoch).items():
                sums[key] = sums.get(key, 0.0) + value
            n_batches += 1
        means = {key: value / max(n_batches, 1) for key, value in sums.items()}
        return EpochRecord(epoch=epoch, seconds=time.perf_counter() - start, **weights, **means)

    def _save(self, name: str, state: dict[str, torch.Tensor]) -> None:
        if self.out_path is not None:
            torch.save(state, os.path.join(self.out_path, name))

    def train(self) -> TrainHistory:
        """Train until ``n_epochs`` or early stopping; the best weights are restored."""
        waiting = 0
        bar = tqdm(range(self.n_epochs), desc="Training", unit="epoch", disable=not self.progress)
        for epoch in bar:
            record = self.train_epoch(epoch)
            record.val_loss, record.val_acc = evaluate(self.model, self.dataloaders["val"])
            if self.scheduler is not None:
                self.scheduler.step()
            state = copy.deepcopy(self.model.state_dict())
            if record.val_loss < self.history.best_loss and epoch >= self.min_epochs:
                record.best = True
                waiting = 0
                self.history.best_epoch, self.history.best_loss = epoch, record.val_loss
                self.best_state = state
                extra = self._extra_module()
                self.best_extra_state = None if extra is None else copy.deepcopy(extra.state_dict())
                self._save(f"model_weights_{epoch:03d}.pkl", state)
                self._save("00_best_model_weights.pkl", state)
                if self.best_extra_state is not None:
                    self._save("02_best_dan_weights.pkl", self.best_extra_state)
            else:
                waiting += 1
                if epoch % self.save_freq == 0:
                    self._save(f"model_weights_{epoch:03d}.pkl", state)
            self.history.records.append(record)
            bar.set_postfix(
                loss=f"{record.train_loss:.3f}",
                val_loss=f"{record.val_loss:.3f}",
                val_acc=f"{record.val_acc:.3f}",
            )
            logger.info("epoch %d: %s", epoch, record.summary())
            if self.patience is not None and waiting > self.patience:
                self.history.stopped_early = True
                break
        bar.close()
        if self.best_state is None:  # n_epochs == 0 or no improvement after min_epochs
            self.best_state = copy.deepcopy(self.model.state_dict())
            self.history.best_epoch = len(self.history.records) - 1
            self._save("00_best_model_weights.pkl", self.best_state)
        self.model.load_state_dict(self.best_state)
        return self.history


class SemiSupervisedTrainer(Trainer):
    """Training loop with a consistency loss on unlabeled cells and a domain adversary.

    Parameters
    ----------
    unsup_dataloader
        Loader of unlabeled (target) cells; cycled as often as needed.
    unsup_criterion
        A :class:`MixMatchLoss` or :class:`InterpolationConsistencyLoss`.
    unsup_weight
        Schedule of the consistency loss weight per epoch.
    dan_criterion
        A :class:`DANLoss`, or None for no adversary.
    dan_weight
        Schedule of the reversed gradient's weight per epoch.
    **kwargs
        Passed to :class:`Trainer`.
    """

    def __init__(
        self,
        unsup_dataloader: MatrixLoader,
        unsup_criterion: InterpolationConsistencyLoss,
        unsup_weight: Callable[[int], float],
        dan_criterion: DANLoss | None = None,
        dan_weight: Callable[[int], float] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.unsup_dataloader = unsup_dataloader
        self._unlabeled: Iterator[Batch] = repeater(unsup_dataloader)
        self.unsup_criterion = unsup_criterion
        self.unsup_weight = unsup_weight
        self.dan_criterion = dan_criterion
        self.dan_weight = dan_weight or (lambda epoch: 0.0)

    def _extra_module(self) -> torch.nn.Module | None:
        return None if self.dan_criterion is None else self.dan_criterion.dann

    def _epoch_weights(self, epoch: int) -> dict[str, float]:
        return {"unsup_weight": self.unsup_weight(epoch), "dan_weight": self.dan_weight(epoch)}

    def _step(self, batch: Batch, epoch: int) -> dict[str, float]:
        unlabeled = next(self._unlabeled)
        w_u = self.unsup_weight(epoch)
        sup, unsup = self.unsup_criterion(self.model, batch, unlabeled)
        loss = sup + w_u * unsup
        out = {"sup_loss": sup.item(), "unsup_loss": unsup.item()}
        confident = self.unsup_criterion.last_confidence
        out["pseudolabel_confident"] = float(confident.float().mean())
        if self.dan_criterion is not None:
            dan = self.dan_criterion(batch, unlabeled, self.dan_weight(epoch), confident)
            loss = loss + dan
            out["dan_loss"] = dan.item()
            out["dan_acc"] = self.dan_criterion.dan_acc
        self._backward(loss)
        self.unsup_criterion.after_step(self.model)
        out["train_loss"] = loss.item()
        return out


__all__ = [
    # the losses, in scnym.trainer as in scNym 0.3.2
    "CONFIDENCE_HISTORY",
    "DANLoss",
    "ICLWeight",
    "InterpolationConsistencyLoss",
    "MixMatchLoss",
    "cross_entropy",
    "get_class_weight",
    "sharpen_labels",
    # the loops
    "EpochRecord",
    "SemiSupervisedTrainer",
    "TrainHistory",
    "Trainer",
    "evaluate",
]
