"""Losses, weight schedules and the supervised / semi-supervised training loops.

Nothing here reads files or knows AnnData: the loops take loaders of batch dicts
(``input``, ``output`` one-hot labels, ``domain`` one-hot domains) and return
their history; checkpoints are written only when an ``out_path`` is given.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .dataprep import Batch, MatrixLoader, SampleMixUp, identity, repeater
from .model import DANN, CellTypeCLF

logger = logging.getLogger(__name__)

#: Number of recent batches whose pseudolabel confidence is kept for reporting.
CONFIDENCE_HISTORY = 51


def cross_entropy(
    pred_: torch.Tensor,
    label: torch.Tensor,
    class_weight: torch.Tensor | None = None,
    sample_weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross entropy of logits against one-hot or soft labels.

    Parameters
    ----------
    pred_
        Logits ``[N, C]``.
    label
        One-hot or probability labels ``[N, C]``.
    class_weight
        Weight per class ``[C]``; a sample takes ``max(class_weight * label)``.
    sample_weight
        Weight per sample ``[N]``.
    reduction
        ``'mean'``, ``'sum'`` or ``'none'``.
    """
    if pred_.shape != label.shape:
        raise ValueError(f"logits {tuple(pred_.shape)} and labels {tuple(label.shape)} differ")
    loss = -(label * F.log_softmax(pred_, dim=1)).sum(dim=1)
    if class_weight is not None:
        loss = loss * (label * class_weight.to(label.device)).max(dim=1).values
    if sample_weight is not None:
        loss = loss * sample_weight.to(loss.device)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")


def get_class_weight(y: np.ndarray) -> np.ndarray:
    """Inverse class frequencies, scaled so that the most frequent class weighs 1."""
    _, counts = np.unique(y, return_counts=True)
    inverse = 1.0 / (counts / counts.sum())
    return inverse / inverse.min()


def sharpen_labels(q: torch.Tensor, T: float = 0.5) -> torch.Tensor:
    """Sharpen a categorical distribution: ``q^(1/T)`` renormalised; ``T=0`` gives one-hot."""
    if T == 0:
        return F.one_hot(q.argmax(dim=1), q.shape[1]).to(q.dtype)
    if T == 1:
        return q
    powered = q ** (1.0 / T)
    return powered / powered.sum(dim=1, keepdim=True)


class ICLWeight:
    """Weight schedule for a consistency or adversarial loss.

    Zero before ``burn_in_epochs``, then a linear (or sigmoid-shaped) ramp over
    ``ramp_epochs`` up to ``max_unsup_weight``.
    """

    def __init__(
        self,
        ramp_epochs: int,
        burn_in_epochs: int = 0,
        max_unsup_weight: float = 10.0,
        sigmoid: bool = False,
    ) -> None:
        self.ramp_epochs = max(int(ramp_epochs), 1)
        self.burn_in_epochs = burn_in_epochs
        self.max_unsup_weight = max_unsup_weight
        self.sigmoid = sigmoid

    def __call__(self, epoch: int) -> float:
        if not isinstance(epoch, int | np.integer):
            raise TypeError(f"epoch must be an int, not {type(epoch).__name__}")
        if epoch < self.burn_in_epochs:
            return 0.0
        if epoch >= self.ramp_epochs + self.burn_in_epochs:
            return float(self.max_unsup_weight)
        x = (epoch - self.burn_in_epochs) / self.ramp_epochs
        if self.sigmoid:
            return float(self.max_unsup_weight * np.exp(-5.0 * (x - 1.0) ** 2))
        return float(self.max_unsup_weight * x)


class _Teacher:
    """Pseudolabel source: the model itself in eval mode, or its mean-teacher average."""

    def __init__(self, model: torch.nn.Module, mean_teacher: bool, decay_coef: float) -> None:
        self.mean_teacher = mean_teacher
        self.decay_coef = decay_coef
        self.ema = copy.deepcopy(model).eval() if mean_teacher else None
        self.steps = 0

    @torch.no_grad()
    def predict(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.ema is not None:
            return F.softmax(self.ema(x), dim=1)
        was_training = model.training
        model.eval()  # eval mode = the original's deepcopy(model).eval() without the copy
        probs = F.softmax(model(x), dim=1)
        model.train(was_training)
        return probs

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        if self.ema is None:
            return
        alpha = min(1.0 - 1.0 / (self.steps + 1), self.decay_coef)
        for ema_p, p in zip(self.ema.parameters(), model.parameters(), strict=True):
            ema_p.mul_(alpha).add_(p.detach(), alpha=1 - alpha)
        for ema_b, b in zip(self.ema.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)
        self.steps += 1


def _consistency(criterion: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Per-row consistency loss between logits and target probabilities."""
    if criterion == "mse":
        return lambda logits, target: ((F.softmax(logits, dim=1) - target) ** 2).sum(dim=1)
    if criterion == "ce":
        return lambda logits, target: cross_entropy(logits, target, reduction="none")
    raise ValueError(f"unsup_criterion must be 'mse' or 'ce', not {criterion!r}")


class InterpolationConsistencyLoss:
    """Interpolation consistency training (ICT) loss.

    The student's prediction on a mixup of unlabeled cells must match the same
    mixup of the teacher's predictions.

    Parameters
    ----------
    unsup_criterion
        ``'mse'`` or ``'ce'`` consistency between student and mixed targets.
    sup_criterion
        Supervised loss on (logits, soft labels).
    decay_coef
        Mean teacher decay.
    mean_teacher
        Use an exponential moving average of the model as teacher.
    augment
        Augmentation of labeled inputs.
    alpha
        MixUp ``Beta(alpha, alpha)`` parameter.
    """

    def __init__(
        self,
        unsup_criterion: str = "mse",
        sup_criterion: Callable = cross_entropy,
        decay_coef: float = 0.9997,
        mean_teacher: bool = True,
        augment: Callable[[Batch], Batch] | None = None,
        alpha: float = 0.3,
        model: torch.nn.Module | None = None,
    ) -> None:
        self.unsup = _consistency(unsup_criterion)
        self.sup_criterion = sup_criterion
        self.augment = augment or identity
        self.mixer = SampleMixUp(alpha=alpha, keep_dominant_obs=True)
        self.decay_coef = decay_coef
        self.mean_teacher = mean_teacher
        self.teacher: _Teacher | None = None
        if model is not None:
            self._ensure_teacher(model)
        self.last_confidence: torch.Tensor | None = None

    def __call__(
        self, model: torch.nn.Module, labeled: Batch, unlabeled: Batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(supervised_loss, unsupervised_loss)``; augments ``labeled`` in place."""
        self._ensure_teacher(model)
        u = unlabeled["input"]
        targets = self.teacher.predict(model, u)
        self.last_confidence = torch.ones(u.shape[0], dtype=torch.bool, device=u.device)
        mixed = self.mixer({"input": u, "output": targets})
        unsup = self.unsup(model(mixed["input"]), mixed["output"]).mean()
        labeled.update(self.augment(dict(labeled)))
        sup = self.sup_criterion(model(labeled["input"]), labeled["output"])
        return sup, unsup

    def _ensure_teacher(self, model: torch.nn.Module) -> None:
        if self.teacher is None:
            self.teacher = _Teacher(model, self.mean_teacher, self.decay_coef)

    def after_step(self, model: torch.nn.Module) -> None:
        """Update the mean teacher after an optimiser step."""
        if self.teacher is not None:
            self.teacher.update(model)


class MixMatchLoss(InterpolationConsistencyLoss):
    """MixMatch loss: sharpened pseudolabels, augmentation and mixup of both sets.

    Parameters
    ----------
    n_augmentations
        Number of (augmented) views averaged into a pseudolabel.
    T
        Sharpening temperature.
    augment_pseudolabels
        Augment unlabeled cells before pseudolabelling.
    pseudolabel_min_confidence
        Unlabeled cells whose pseudolabel confidence (before sharpening) is
        below this take no part in the consistency loss.
    **kwargs
        Passed to :class:`InterpolationConsistencyLoss`.
    """

    def __init__(
        self,
        n_augmentations: int = 2,
        T: float = 0.5,
        augment_pseudolabels: bool = True,
        pseudolabel_min_confidence: float = 0.0,
        **kwargs,
    ) -> None:
        kwargs.setdefault("mean_teacher", False)
        super().__init__(**kwargs)
        if n_augmentations < 1:
            raise ValueError("n_augmentations must be at least 1")
        self.n_augmentations = n_augmentations
        self.T = T
        self.augment_pseudolabels = augment_pseudolabels
        self.pseudolabel_min_confidence = pseudolabel_min_confidence
        self.running_confidence_scores: list[tuple[torch.Tensor, torch.Tensor]] = []

    @torch.no_grad()
    def _generate_labels(self, model: torch.nn.Module, u: torch.Tensor) -> torch.Tensor:
        views = []
        for _ in range(self.n_augmentations):
            x = self.augment({"input": u.clone()})["input"] if self.augment_pseudolabels else u
            views.append(self.teacher.predict(model, x))
        return torch.stack(views).mean(dim=0)

    def __call__(
        self, model: torch.nn.Module, labeled: Batch, unlabeled: Batch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(supervised_loss, unsupervised_loss)``; augments ``labeled`` in place."""
        self._ensure_teacher(model)
        u = unlabeled["input"]
        q = self._generate_labels(model, u)
        confidence = q.max(dim=1).values
        confident = confidence >= self.pseudolabel_min_confidence
        self.last_confidence = confident
        self.running_confidence_scores.append((confident.cpu(), confidence.cpu()))
        del self.running_confidence_scores[:-CONFIDENCE_HISTORY]
        q = sharpen_labels(q, T=self.T)

        # The augmented labeled batch replaces the original, as in scNym 0.3.2:
        # the domain adversary sees the same augmented cells.
        labeled.update(self.augment(dict(labeled)))
        n_conf = int(confident.sum())
        pool_x = torch.cat([u[confident], labeled["input"]])
        pool_y = torch.cat([q[confident], labeled["output"]])
        if self.mixer.alpha > 0:
            gamma = self.mixer.sample_gamma(pool_x.shape[0], pool_x.device)
        else:  # no mixup
            gamma = torch.ones(pool_x.shape[0], 1, device=pool_x.device)
        perm = torch.randperm(pool_x.shape[0], device=pool_x.device)
        mixed_x = torch.lerp(pool_x[perm], pool_x, gamma)
        mixed_y = torch.lerp(pool_y[perm], pool_y, gamma)

        # Unconfident cells go through the model unmixed so batch norm still sees target data.
        u_mix = torch.cat([mixed_x[:n_conf], u[~confident]])
        q_mix = torch.cat([mixed_y[:n_conf], q[~confident]])
        mask = torch.cat([torch.ones(n_conf), torch.zeros(u.shape[0] - n_conf)]).to(u.device)
        unsup = (self.unsup(model(u_mix), q_mix) * mask).mean()
        sup = self.sup_criterion(model(mixed_x[n_conf:]), mixed_y[n_conf:])
        return sup, unsup


class DANLoss:
    """Domain adversarial loss on the classifier's embedding.

    Parameters
    ----------
    dan_criterion
        Loss on (domain logits, one-hot domains); soft cross entropy by default.
    model
        The classifier whose embedding the adversary reads.
    use_conf_pseudolabels
        Use only unlabeled cells with confident pseudolabels.
    scale_loss_pseudoconf
        Scale the loss by the fraction of confident unlabeled cells.
    n_domains
        Number of domains.
    **dann_kw
        Passed to :class:`scnym.model.DANN`.
    """

    def __init__(
        self,
        dan_criterion: Callable | None = None,
        model: CellTypeCLF | None = None,
        use_conf_pseudolabels: bool = False,
        scale_loss_pseudoconf: bool = False,
        n_domains: int = 2,
        **dann_kw,
    ) -> None:
        if model is None:
            raise ValueError("DANLoss needs the classifier model")
        self.dan_criterion = dan_criterion if callable(dan_criterion) else cross_entropy
        self.dann = DANN(model=model, n_domains=n_domains, **dann_kw)
        self.use_conf_pseudolabels = use_conf_pseudolabels
        self.scale_loss_pseudoconf = scale_loss_pseudoconf
        self.n_domains = n_domains
        self.dan_acc = float("nan")
        self.n_conf_pseudolabels = 0

    def __call__(
        self,
        labeled: Batch,
        unlabeled: Batch,
        weight: float,
        pseudolabel_confidence: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the domain classification loss for one step."""
        self.dann.set_rev_grad_weight(weight)
        u_x, u_d = unlabeled["input"], unlabeled["domain"]
        if self.use_conf_pseudolabels and pseudolabel_confidence is not None:
            u_x, u_d = u_x[pseudolabel_confidence], u_d[pseudolabel_confidence]
        self.n_conf_pseudolabels = u_x.shape[0]
        x = torch.cat([labeled["input"], u_x])
        dlabel = torch.cat([labeled["domain"], u_d])
        if x.shape[0] < 2:
            return x.sum() * 0.0
        domain_pred, _ = self.dann(x)
        loss = self.dan_criterion(domain_pred, dlabel)
        with torch.no_grad():
            self.dan_acc = float((domain_pred.argmax(1) == dlabel.argmax(1)).float().mean())
        if self.scale_loss_pseudoconf:
            loss = loss * (u_x.shape[0] / max(unlabeled["input"].shape[0], 1))
        return loss


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
            logger.info("epoch %d: %s", epoch, record)
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
