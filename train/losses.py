"""The losses of scNym training and the schedules of their weights.

Supervised cross entropy on soft labels, the semi-supervised consistency losses
(MixMatch and interpolation consistency, ICT) with their teacher, and the domain
adversarial loss. The training loops (:mod:`scnym.trainer`) combine them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .dataprep import Batch, SampleMixUp, identity
from .model import DANN, CellTypeCLF

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
