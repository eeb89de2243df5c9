"""Assemble model, loaders, losses and optimiser from a :class:`Config` and train.

This is the array-level entry point (the original's ``main.fit_model``): it
takes matrices and label codes, not AnnData.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse

from .config import Config
from .dataprep import MatrixLoader, _as_onehot, class_balance_weights, get_augmentation
from .losses import DANLoss, ICLWeight, InterpolationConsistencyLoss, MixMatchLoss, cross_entropy
from .model import CellTypeCLF
from .trainer import SemiSupervisedTrainer, Trainer, TrainHistory, evaluate

logger = logging.getLogger(__name__)

#: Batch size of evaluation passes (no gradients, so larger than training batches).
EVAL_BATCH_SIZE = 1024


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``'auto'`` picks CUDA when available, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was asked for but torch finds no CUDA device")
    return device


@dataclass
class Splits:
    """Rows of the labeled cells used to fit, to select the best epoch, and to report."""

    train: np.ndarray
    test: np.ndarray
    val: np.ndarray


def make_splits(
    labeled_rows: np.ndarray, test_fraction: float, val_fraction: float, seed: int
) -> Splits:
    """Randomly split labeled rows into train / test (model selection) / val (final metric)."""
    rng = np.random.default_rng(seed)
    rows = rng.permutation(labeled_rows)
    n_val = max(int(round(len(rows) * val_fraction)), 1)
    n_test = max(int(round(len(rows) * test_fraction)), 1)
    return Splits(
        train=np.sort(rows[n_val + n_test :]),
        test=np.sort(rows[n_val : n_val + n_test]),
        val=np.sort(rows[:n_val]),
    )


@dataclass
class FitResult:
    """A trained model with its history and held-out metrics."""

    model: CellTypeCLF
    history: TrainHistory
    final_acc: float
    final_loss: float
    dann_state: dict | None
    device: torch.device


def make_optimizer(
    config: Config, groups: list[dict]
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """Build the optimiser ``config.optimizer_name`` and its learning rate scheduler.

    Every optimiser takes ``config.lr`` and ``config.weight_decay``. ``'sgd'``
    adds momentum 0.9 and a cosine annealing of the learning rate over
    ``config.n_epochs`` epochs down to ``lr / 1e4``; the others keep a constant
    learning rate (no scheduler).

    Parameters
    ----------
    config
        The training configuration.
    groups
        Parameter groups (``{'params': [...]}`` dicts).

    Returns
    -------
    The optimiser and the scheduler (None but for ``'sgd'``).

    Raises
    ------
    ValueError
        For an optimiser name other than adadelta, adam, adamw or sgd.
    """
    name = config.optimizer_name
    if name == "adadelta":
        opt = torch.optim.Adadelta(groups, lr=config.lr, weight_decay=config.weight_decay)
    elif name == "adam":
        opt = torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    elif name == "adamw":
        opt = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    elif name == "sgd":
        opt = torch.optim.SGD(groups, lr=config.lr, weight_decay=config.weight_decay, momentum=0.9)
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=config.n_epochs, eta_min=config.lr / 1e4
        )
    else:
        raise ValueError(f"Unknown optimizer {name!r}; choose adadelta, adam, adamw or sgd")
    return opt, None


def _loader_inputs(
    X, y: np.ndarray, n_classes: int, domain, n_domains: int, unlabeled_rows, device
) -> dict:
    """The matrices every loader draws from: ``X``, one-hot labels and one-hot domains.

    Without ``domain``, labeled cells are domain 0 and unlabeled cells domain 1.
    """
    n_cells = X.shape[0]
    onehot = _as_onehot(np.where(y >= 0, y, 0), n_cells, n_classes)
    if domain is None:
        domain = np.zeros(n_cells, dtype=np.int64)
        if unlabeled_rows is not None:
            domain[unlabeled_rows] = 1
    domain_onehot = _as_onehot(domain, n_cells, n_domains)
    return {"X": X, "y": onehot, "domain": domain_onehot, "device": device}


def _labeled_loaders(
    loader_kw: dict, y: np.ndarray, splits: Splits, config: Config
) -> tuple[MatrixLoader, MatrixLoader, MatrixLoader]:
    """Loaders of the train (shuffled, class balanced if asked), test and val splits."""
    weights = class_balance_weights(y[splits.train]) if config.balance_classes else None
    train_loader = MatrixLoader(
        rows=splits.train,
        batch_size=config.batch_size,
        sample_weights=weights,
        seed=config.seed,
        **loader_kw,
    )
    if train_loader.batch_size < 2:
        raise ValueError("Training needs at least 2 labeled cells in the training split")
    eval_kw = {"batch_size": EVAL_BATCH_SIZE, "shuffle": False, "drop_last": False}
    test_loader = MatrixLoader(rows=splits.test, **eval_kw, **loader_kw)
    val_loader = MatrixLoader(rows=splits.val, **eval_kw, **loader_kw)
    return train_loader, test_loader, val_loader


def _consistency_loss(config: Config, model: CellTypeCLF) -> InterpolationConsistencyLoss:
    """The semi-supervised loss ``config.ssl_method`` (``'mixmatch'`` or ``'ict'``)."""
    ssl = config.ssl_kwargs
    augment = get_augmentation(ssl.augment)
    loss_kw = {
        "unsup_criterion": ssl.unsup_criterion,
        "sup_criterion": cross_entropy,
        "decay_coef": config.decay_coef,
        "mean_teacher": config.unsup_mean_teacher,
        "augment": augment,
        "alpha": config.mixup_alpha,
        "model": model,
    }
    if config.ssl_method == "mixmatch":
        return MixMatchLoss(
            n_augmentations=ssl.n_augmentations,
            T=ssl.T,
            augment_pseudolabels=ssl.augment_pseudolabels,
            pseudolabel_min_confidence=ssl.pseudolabel_min_confidence,
            **loss_kw,
        )
    if config.ssl_method == "ict":
        return InterpolationConsistencyLoss(**loss_kw)
    raise ValueError(f"ssl_method must be 'mixmatch' or 'ict', not {config.ssl_method!r}")


def _semi_supervised_trainer(
    config: Config,
    model: CellTypeCLF,
    unsup_loader: MatrixLoader,
    n_domains: int,
    device: torch.device,
    common: dict,
) -> SemiSupervisedTrainer:
    """The consistency loss, the domain adversary (if enabled) and their trainer."""
    ssl = config.ssl_kwargs
    groups = [{"params": list(model.parameters())}]
    unsup_criterion = _consistency_loss(config, model)
    dan = None
    if config.dan_enabled:
        dan = DANLoss(
            model=model,
            use_conf_pseudolabels=ssl.dan_use_conf_pseudolabels,
            scale_loss_pseudoconf=ssl.dan_scale_loss_pseudoconf,
            n_domains=n_domains,
        )
        dan.dann.to(device)
        groups.append(
            {"params": list(dan.dann.domain_clf.parameters()), "name": "domain_classifier"}
        )
    optimizer, scheduler = make_optimizer(config, groups)
    return SemiSupervisedTrainer(
        unsup_dataloader=unsup_loader,
        unsup_criterion=unsup_criterion,
        unsup_weight=ICLWeight(
            ssl.ramp_epochs, ssl.burn_in_epochs, config.unsup_max_weight, sigmoid=False
        ),
        dan_criterion=dan,
        dan_weight=ICLWeight(
            ssl.dan_ramp_epochs, ssl.dan_burn_in_epochs, ssl.dan_max_weight, sigmoid=True
        ),
        optimizer=optimizer,
        scheduler=scheduler,
        **common,
    )


def fit_model(
    X: np.ndarray | sparse.csr_matrix,
    y: np.ndarray,
    n_classes: int,
    splits: Splits,
    config: Config,
    unlabeled_rows: np.ndarray | None = None,
    domain: np.ndarray | None = None,
    n_domains: int = 2,
    out_path: str | os.PathLike | None = None,
    init_state: dict | None = None,
    progress: bool = True,
) -> FitResult:
    """Train a :class:`CellTypeCLF` on log1p(CPM) rows of ``X``.

    Parameters
    ----------
    X
        All cells, labeled and unlabeled, as log1p(CPM) (CSR or dense).
    y
        Class code of each row of ``X`` (ignored for unlabeled rows).
    n_classes
        Number of classes.
    splits
        Labeled rows for training, model selection and the final metric.
    config
        The training configuration.
    unlabeled_rows
        Rows of unlabeled (target) cells; none means supervised training.
    domain
        Domain code of each row; default: labeled 0, unlabeled 1.
    n_domains
        Number of domains.
    out_path
        Folder for checkpoints, or None.
    init_state
        State dict to start from (warm start).
    progress
        Show a progress bar.
    """
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    loader_kw = _loader_inputs(X, y, n_classes, domain, n_domains, unlabeled_rows, device)
    model = CellTypeCLF(n_genes=X.shape[1], n_cell_types=n_classes, **vars(config.model_kwargs))
    if init_state is not None:
        model.load_state_dict(init_state)
    model.to(device)
    train_loader, test_loader, val_loader = _labeled_loaders(loader_kw, y, splits, config)
    common = {
        "model": model,
        "criterion": cross_entropy,
        "dataloaders": {"train": train_loader, "val": test_loader},
        "out_path": out_path,
        "n_epochs": config.n_epochs,
        "min_epochs": config.ssl_kwargs.min_epochs,
        "patience": config.patience,
        "save_freq": config.save_freq,
        "progress": progress,
    }
    if config.semi_supervised and unlabeled_rows is not None and len(unlabeled_rows) >= 2:
        unsup_loader = MatrixLoader(
            rows=unlabeled_rows, batch_size=config.batch_size, seed=config.seed + 1, **loader_kw
        )
        trainer = _semi_supervised_trainer(config, model, unsup_loader, n_domains, device, common)
    else:
        if unlabeled_rows is not None and len(unlabeled_rows) and config.semi_supervised:
            logger.warning("Fewer than 2 unlabeled cells: training supervised only")
        optimizer, scheduler = make_optimizer(config, [{"params": list(model.parameters())}])
        trainer = Trainer(optimizer=optimizer, scheduler=scheduler, **common)
    history = trainer.train()
    final_loss, final_acc = evaluate(model, val_loader)
    return FitResult(
        model=model,
        history=history,
        final_acc=final_acc,
        final_loss=final_loss,
        dann_state=trainer.best_extra_state,
        device=device,
    )
