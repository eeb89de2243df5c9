"""fit_model's assembly from a Config: optimisers, the learning rate schedule, the SSL loss."""

from __future__ import annotations

import math
from typing import get_args

import numpy as np
import pytest
import torch
from scnym import fitting
from scnym.config import Config, ModelConfig, OptimizerName, SSLConfig
from scnym.fitting import fit_model, make_optimizer, make_splits
from scnym.losses import InterpolationConsistencyLoss, MixMatchLoss

OPTIMIZERS = {
    "adadelta": torch.optim.Adadelta,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


def _groups() -> list[dict]:
    return [
        {"params": [torch.nn.Parameter(torch.ones(3))]},
        {"params": [torch.nn.Parameter(torch.zeros(2))], "name": "domain_classifier"},
    ]


def test_every_optimizer_the_config_accepts_is_tested():
    assert set(get_args(OptimizerName)) == set(OPTIMIZERS)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_names_build_their_torch_optimizer(name):
    groups = _groups()
    config = Config(optimizer_name=name, lr=0.05, weight_decay=1e-3)
    optimizer, scheduler = make_optimizer(config, groups)
    assert type(optimizer) is OPTIMIZERS[name]
    assert len(optimizer.param_groups) == 2
    assert optimizer.param_groups[1]["name"] == "domain_classifier"
    for built, given in zip(optimizer.param_groups, groups, strict=True):
        assert built["params"] == given["params"]
        assert built["lr"] == 0.05
        assert built["weight_decay"] == 1e-3
    if name == "sgd":
        assert all(group["momentum"] == 0.9 for group in optimizer.param_groups)
        assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
    else:
        assert scheduler is None


def test_sgd_anneals_the_learning_rate_over_the_epochs():
    lr, n_epochs = 0.1, 8
    optimizer, scheduler = make_optimizer(
        Config(optimizer_name="sgd", lr=lr, n_epochs=n_epochs), _groups()
    )
    eta_min = lr / 1e4
    for epoch in range(1, n_epochs + 1):
        optimizer.step()
        scheduler.step()
        expected = eta_min + (lr - eta_min) * (1 + math.cos(math.pi * epoch / n_epochs)) / 2
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(eta_min)


def test_an_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="Unknown optimizer 'rmsprop'; choose adadelta, adam"):
        make_optimizer(Config(optimizer_name="rmsprop"), _groups())


# ----------------------------------------------------------------------------
# fit_model uses the options
# ----------------------------------------------------------------------------


def _fit(toy_data, monkeypatch, n_epochs: int = 3, n_unlabeled: int = 0, **options):
    """Fit on toy data; return the result and the optimisers and losses fit_model built."""
    built = {"optimizers": [], "losses": []}

    def spy_optimizer(config, groups):
        pair = make_optimizer(config, groups)
        built["optimizers"].append(pair)
        return pair

    def spy_loss(config, model):
        loss = consistency_loss(config, model)
        built["losses"].append(loss)
        return loss

    consistency_loss = fitting._consistency_loss
    monkeypatch.setattr(fitting, "make_optimizer", spy_optimizer)
    monkeypatch.setattr(fitting, "_consistency_loss", spy_loss)
    X, y = toy_data(n_cells=96, n_genes=12, n_classes=3)
    labeled = np.arange(96 - n_unlabeled)
    config = Config(
        n_epochs=n_epochs,
        batch_size=16,
        device="cpu",
        model_kwargs=ModelConfig(n_hidden=16),
        ssl_kwargs=SSLConfig(min_epochs=0, augment=None),
        **options,
    )
    fit = fit_model(
        X,
        np.where(np.arange(96) < len(labeled), y, -1),
        n_classes=3,
        splits=make_splits(labeled, 0.15, 0.15, seed=0),
        config=config,
        unlabeled_rows=np.arange(len(labeled), 96) if n_unlabeled else None,
        progress=False,
    )
    return fit, built


def test_fit_model_with_sgd_steps_the_scheduler_once_per_epoch(toy_data, monkeypatch):
    _, built = _fit(toy_data, monkeypatch, n_epochs=3, optimizer_name="sgd", lr=0.1)
    ((optimizer, scheduler),) = built["optimizers"]
    assert isinstance(optimizer, torch.optim.SGD)
    assert scheduler.last_epoch == 3
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 / 1e4)


def test_fit_model_keeps_a_constant_learning_rate_without_sgd(toy_data, monkeypatch):
    _, built = _fit(toy_data, monkeypatch, optimizer_name="adam", lr=1e-3, weight_decay=0.0)
    ((optimizer, scheduler),) = built["optimizers"]
    assert isinstance(optimizer, torch.optim.Adam) and scheduler is None
    assert optimizer.param_groups[0]["lr"] == 1e-3
    assert optimizer.param_groups[0]["weight_decay"] == 0.0


def test_fit_model_trains_the_domain_classifier_with_the_model(toy_data, monkeypatch):
    fit, built = _fit(toy_data, monkeypatch, n_unlabeled=24, optimizer_name="adamw")
    ((optimizer, _),) = built["optimizers"]
    assert isinstance(optimizer, torch.optim.AdamW)
    model_group, domain_group = optimizer.param_groups
    assert model_group["params"] == list(fit.model.parameters())
    assert domain_group["name"] == "domain_classifier"
    assert fit.dann_state is not None


@pytest.mark.parametrize(
    ("method", "loss_type"), [("ict", InterpolationConsistencyLoss), ("mixmatch", MixMatchLoss)]
)
def test_fit_model_uses_the_configured_ssl_method(toy_data, monkeypatch, method, loss_type):
    fit, built = _fit(
        toy_data,
        monkeypatch,
        n_epochs=2,
        n_unlabeled=24,
        ssl_method=method,
        unsup_mean_teacher=True,
        decay_coef=0.9,
        mixup_alpha=0.2,
    )
    (loss,) = built["losses"]
    assert type(loss) is loss_type
    assert loss.mean_teacher and loss.decay_coef == 0.9 and loss.mixer.alpha == 0.2
    assert loss.teacher.steps > 0  # the mean teacher followed the training steps
    assert loss.teacher.ema is not fit.model


def test_an_unknown_ssl_method_is_refused(toy_data, monkeypatch):
    with pytest.raises(ValueError, match="ssl_method must be 'mixmatch' or 'ict', not 'fixmatch'"):
        _fit(toy_data, monkeypatch, n_unlabeled=24, ssl_method="fixmatch")
