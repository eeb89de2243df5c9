"""Tests of scnym.trainer: losses, schedules and the training loops."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scnym.dataprep import MatrixLoader, get_augmentation
from scnym.model import CellTypeCLF
from scnym.trainer import (
    CONFIDENCE_HISTORY,
    DANLoss,
    ICLWeight,
    MixMatchLoss,
    SemiSupervisedTrainer,
    Trainer,
    cross_entropy,
    evaluate,
    get_class_weight,
    sharpen_labels,
)

# ----------------------------------------------------------------------------
# cross_entropy and helpers
# ----------------------------------------------------------------------------


def _logits_labels(n: int = 10, c: int = 4):
    logits = torch.randn(n, c)
    idx = torch.arange(n) % c
    return logits, idx, F.one_hot(idx, c).float()


def test_cross_entropy_matches_torch():
    logits, idx, onehot = _logits_labels()
    torch.testing.assert_close(cross_entropy(logits, onehot), F.cross_entropy(logits, idx))
    torch.testing.assert_close(
        cross_entropy(logits, onehot, reduction="sum"),
        F.cross_entropy(logits, idx, reduction="sum"),
    )
    torch.testing.assert_close(
        cross_entropy(logits, onehot, reduction="none"),
        F.cross_entropy(logits, idx, reduction="none"),
    )


def test_cross_entropy_soft_labels():
    logits = torch.randn(5, 3)
    soft = torch.softmax(torch.randn(5, 3), dim=1)
    expected = -(soft * torch.log_softmax(logits, 1)).sum(1).mean()
    torch.testing.assert_close(cross_entropy(logits, soft), expected)
    torch.testing.assert_close(cross_entropy(logits, soft), F.cross_entropy(logits, soft))


def test_cross_entropy_class_weight():
    logits, idx, onehot = _logits_labels()
    w = torch.tensor([1.0, 2.0, 0.5, 3.0])
    per_sample = F.cross_entropy(logits, idx, weight=w, reduction="none")
    torch.testing.assert_close(
        cross_entropy(logits, onehot, class_weight=w, reduction="none"), per_sample
    )
    torch.testing.assert_close(
        cross_entropy(logits, onehot, class_weight=w, reduction="sum"), per_sample.sum()
    )
    # 'mean' divides by the number of samples (not by the summed weights as torch does).
    torch.testing.assert_close(cross_entropy(logits, onehot, class_weight=w), per_sample.mean())


def test_cross_entropy_sample_weight():
    logits, idx, onehot = _logits_labels()
    sw = torch.linspace(0.0, 2.0, 10)
    base = F.cross_entropy(logits, idx, reduction="none")
    torch.testing.assert_close(
        cross_entropy(logits, onehot, sample_weight=sw, reduction="none"), base * sw
    )
    torch.testing.assert_close(cross_entropy(logits, onehot, sample_weight=sw), (base * sw).mean())
    cw = torch.tensor([2.0, 1.0, 1.0, 1.0])
    both = cross_entropy(logits, onehot, class_weight=cw, sample_weight=sw, reduction="none")
    torch.testing.assert_close(both, base * sw * cw[idx])


def test_cross_entropy_errors():
    logits, _, onehot = _logits_labels()
    with pytest.raises(ValueError, match="differ"):
        cross_entropy(logits, onehot[:, :3])
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(logits, onehot, reduction="avg")


def test_get_class_weight():
    np.testing.assert_allclose(get_class_weight(np.array([0, 0, 0, 1])), [1.0, 3.0])
    np.testing.assert_allclose(
        get_class_weight(np.array([2, 1, 1, 2, 2, 2, 0, 0])), [2.0, 2.0, 1.0]
    )
    np.testing.assert_allclose(get_class_weight(np.array([5, 5, 7, 7])), [1.0, 1.0])


def test_sharpen_labels():
    q = torch.softmax(torch.randn(6, 4), dim=1)
    assert torch.equal(sharpen_labels(q, T=1.0), q)
    hard = sharpen_labels(q, T=0)
    torch.testing.assert_close(hard, F.one_hot(q.argmax(1), 4).to(q.dtype))
    sharp = sharpen_labels(q, T=0.5)
    torch.testing.assert_close(sharp, q**2 / (q**2).sum(1, keepdim=True))
    torch.testing.assert_close(sharp.sum(1), torch.ones(6))
    assert (sharp.max(1).values >= q.max(1).values).all()
    assert torch.equal(sharp.argmax(1), q.argmax(1))


# ----------------------------------------------------------------------------
# Weight schedules
# ----------------------------------------------------------------------------


def test_icl_weight_linear_default_unsup_schedule():
    w = ICLWeight(ramp_epochs=100, burn_in_epochs=0, max_unsup_weight=1.0)
    for e in (0, 1, 10, 50, 99, 100, 150):
        assert w(e) == pytest.approx(min(e / 100, 1.0))
    assert w(0) == 0.0


def test_icl_weight_sigmoid_default_dan_schedule():
    w = ICLWeight(ramp_epochs=20, burn_in_epochs=0, max_unsup_weight=0.1, sigmoid=True)
    for e in range(0, 20):
        assert w(e) == pytest.approx(0.1 * math.exp(-5 * (e / 20 - 1) ** 2))
    assert w(0) == pytest.approx(6.7379e-4, rel=1e-4)
    assert w(20) == pytest.approx(0.1) and w(60) == pytest.approx(0.1)


def test_icl_weight_burn_in_and_default_max():
    w = ICLWeight(ramp_epochs=10, burn_in_epochs=5, max_unsup_weight=1.0)
    assert [w(e) for e in (0, 4, 5)] == [0.0, 0.0, 0.0]
    assert w(10) == pytest.approx(0.5)
    assert w(15) == 1.0 and w(100) == 1.0
    ws = ICLWeight(ramp_epochs=10, burn_in_epochs=5, max_unsup_weight=2.0, sigmoid=True)
    assert ws(4) == 0.0
    assert ws(10) == pytest.approx(2.0 * math.exp(-5 * 0.25))
    assert ICLWeight(ramp_epochs=10)(10) == 10.0


def test_icl_weight_epoch_must_be_int():
    w = ICLWeight(ramp_epochs=10)
    with pytest.raises(TypeError):
        w(1.0)
    with pytest.raises(TypeError):
        w("3")
    assert w(np.int64(5)) == pytest.approx(5.0)


# ----------------------------------------------------------------------------
# MixMatchLoss and DANLoss
# ----------------------------------------------------------------------------


def _batches(toy_data, n: int = 16, g: int = 12, c: int = 3):
    X, y = toy_data(n_cells=2 * n, n_genes=g, n_classes=c)
    X = torch.from_numpy(X)
    labeled = {
        "input": X[:n].clone(),
        "output": F.one_hot(torch.from_numpy(y[:n]), c).float(),
        "domain": torch.tensor([[1.0, 0.0]]).repeat(n, 1),
    }
    unlabeled = {"input": X[n:].clone(), "domain": torch.tensor([[0.0, 1.0]]).repeat(n, 1)}
    return labeled, unlabeled


def _mixmatch(model, **kwargs):
    defaults = {
        "n_augmentations": 1,
        "T": 0.5,
        "augment_pseudolabels": False,
        "augment": get_augmentation("log1p_drop"),
        "alpha": 0.3,
        "model": model,
    }
    defaults.update(kwargs)
    return MixMatchLoss(**defaults)


def _confidence(model, u):
    was = model.training
    model.eval()
    with torch.no_grad():
        conf = torch.softmax(model(u), 1).max(1).values
    model.train(was)
    return conf


def test_mixmatch_returns_finite_scalars(toy_data):
    model = CellTypeCLF(12, 3, n_hidden=16).train()
    labeled, unlabeled = _batches(toy_data)
    loss = _mixmatch(model)
    sup, unsup = loss(model, labeled, unlabeled)
    for value in (sup, unsup):
        assert value.dim() == 0 and torch.isfinite(value)
    assert unsup.item() >= 0 and sup.item() > 0
    assert sup.requires_grad and unsup.requires_grad
    assert loss.last_confidence.dtype == torch.bool and loss.last_confidence.all()
    assert model.training  # the teacher pass restores training mode
    # The labeled batch is replaced by its augmented version (still log1p(CPM)).
    totals = torch.expm1(labeled["input"].double()).sum(1)
    torch.testing.assert_close(totals, torch.full_like(totals, 1e6), rtol=1e-3, atol=0)


@pytest.mark.parametrize("criterion", ["mse", "ce"])
def test_mixmatch_backward(toy_data, criterion):
    model = CellTypeCLF(12, 3, n_hidden=16).train()
    labeled, unlabeled = _batches(toy_data)
    sup, unsup = _mixmatch(
        model, unsup_criterion=criterion, n_augmentations=2, augment_pseudolabels=True
    )(model, labeled, unlabeled)
    (sup + unsup).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.classif[0].weight.grad.abs().sum() > 0


def test_mixmatch_marks_unconfident_cells(toy_data):
    model = CellTypeCLF(12, 3, n_hidden=16).train()
    labeled, unlabeled = _batches(toy_data)
    conf = _confidence(model, unlabeled["input"])
    threshold = float(conf.median())
    loss = _mixmatch(model, pseudolabel_min_confidence=threshold)
    sup, unsup = loss(model, labeled, unlabeled)
    expected = conf >= threshold
    assert 0 < int(expected.sum()) < len(expected)
    assert torch.equal(loss.last_confidence, expected)
    stored_mask, stored_conf = loss.running_confidence_scores[-1]
    assert torch.equal(stored_mask, expected)
    torch.testing.assert_close(stored_conf, conf)
    assert torch.isfinite(sup) and torch.isfinite(unsup)


def test_mixmatch_running_confidence_is_bounded(toy_data):
    model = CellTypeCLF(12, 3, n_hidden=8).train()
    labeled, unlabeled = _batches(toy_data, n=4)
    loss = _mixmatch(model)
    for _ in range(CONFIDENCE_HISTORY + 9):
        with torch.no_grad():
            loss(model, dict(labeled), unlabeled)
    assert CONFIDENCE_HISTORY == 51
    assert len(loss.running_confidence_scores) == 51


def test_mixmatch_no_consistency_above_confidence_one(toy_data):
    model = CellTypeCLF(12, 3, n_hidden=16).train()
    labeled, unlabeled = _batches(toy_data)
    loss = _mixmatch(model, pseudolabel_min_confidence=1.01)
    sup, unsup = loss(model, labeled, unlabeled)
    assert unsup.item() == 0.0
    assert not loss.last_confidence.any()
    assert torch.isfinite(sup) and sup.item() > 0


def _dann_inputs(n_l: int = 4, n_u: int = 6, g: int = 12):
    lab = {
        "input": torch.log1p(torch.rand(n_l, g) * 1e4),
        "domain": torch.tensor([[1.0, 0.0]]).repeat(n_l, 1),
    }
    unl = {
        "input": torch.log1p(torch.rand(n_u, g) * 1e4),
        "domain": torch.tensor([[0.0, 1.0]]).repeat(n_u, 1),
    }
    return lab, unl


def test_dan_loss_finite_and_all_cells():
    model = CellTypeCLF(12, 3, n_hidden=16).eval()
    dan = DANLoss(model=model, n_domains=2)
    lab, unl = _dann_inputs()
    loss = dan(lab, unl, weight=0.3)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert dan.dann.weight == 0.3
    assert dan.n_conf_pseudolabels == 6
    assert 0.0 <= dan.dan_acc <= 1.0
    x = torch.cat([lab["input"], unl["input"]])
    d = torch.cat([lab["domain"], unl["domain"]])
    with torch.no_grad():
        expected = cross_entropy(dan.dann(x)[0], d)
    torch.testing.assert_close(loss.detach(), expected)
    loss.backward()
    assert dan.dann.domain_clf[0].weight.grad is not None


def test_dan_loss_uses_only_confident_cells():
    model = CellTypeCLF(12, 3, n_hidden=16).eval()
    lab, unl = _dann_inputs()
    confident = torch.tensor([True, False, False, True, False, False])
    dan = DANLoss(model=model, use_conf_pseudolabels=True, n_domains=2)
    loss = dan(lab, unl, weight=1.0, pseudolabel_confidence=confident)
    assert dan.n_conf_pseudolabels == 2
    x = torch.cat([lab["input"], unl["input"][confident]])
    d = torch.cat([lab["domain"], unl["domain"][confident]])
    with torch.no_grad():
        expected = cross_entropy(dan.dann(x)[0], d)
    torch.testing.assert_close(loss.detach(), expected)
    # Without the flag the mask is ignored.
    dan_all = DANLoss(model=model, use_conf_pseudolabels=False, n_domains=2)
    dan_all.dann.domain_clf.load_state_dict(dan.dann.domain_clf.state_dict())
    dan_all(lab, unl, weight=1.0, pseudolabel_confidence=confident)
    assert dan_all.n_conf_pseudolabels == 6


def test_dan_loss_scale_by_confident_fraction():
    model = CellTypeCLF(12, 3, n_hidden=16).eval()
    lab, unl = _dann_inputs()
    confident = torch.tensor([True, True, False, False, False, False])
    plain = DANLoss(model=model, use_conf_pseudolabels=True)
    scaled = DANLoss(model=model, use_conf_pseudolabels=True, scale_loss_pseudoconf=True)
    scaled.dann.domain_clf.load_state_dict(plain.dann.domain_clf.state_dict())
    a = plain(lab, unl, 1.0, confident)
    b = scaled(lab, unl, 1.0, confident)
    torch.testing.assert_close(b, a * (2 / 6))


def test_dan_loss_needs_model():
    with pytest.raises(ValueError):
        DANLoss(model=None)


# ----------------------------------------------------------------------------
# Training loops
# ----------------------------------------------------------------------------

N_GENES, N_CLASSES = 12, 3


def _setup(toy_data, n_cells: int = 150, val: int = 30, batch_size: int = 24):
    X, y = toy_data(n_cells=n_cells, n_genes=N_GENES, n_classes=N_CLASSES, seed=1)
    onehot = np.eye(N_CLASSES, dtype=np.float32)[y]
    rows = np.arange(n_cells)
    train = MatrixLoader(X, rows[:-val], y=onehot, batch_size=batch_size, seed=0)
    valid = MatrixLoader(X, rows[-val:], y=onehot, batch_size=64, shuffle=False, drop_last=False)
    return X, y, onehot, {"train": train, "val": valid}


def _model():
    return CellTypeCLF(N_GENES, N_CLASSES, n_hidden=16)


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_trainer_reduces_loss_and_restores_best(toy_data):
    _, _, _, loaders = _setup(toy_data)
    model = _model()
    trainer = Trainer(
        model=model,
        criterion=cross_entropy,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        dataloaders=loaders,
        n_epochs=10,
        progress=False,
    )
    history = trainer.train()
    assert len(history.records) == 10
    assert not history.stopped_early
    losses = [r.train_loss for r in history.records]
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    assert history.records[-1].val_loss < history.records[0].val_loss
    best = history.records[history.best_epoch]
    assert best.best and best.val_loss == history.best_loss
    assert history.best_loss == min(r.val_loss for r in history.records)
    assert _state_equal(model.state_dict(), trainer.best_state)
    val_loss, val_acc = evaluate(model, loaders["val"])
    assert val_loss == pytest.approx(best.val_loss, rel=1e-5)
    assert val_acc == pytest.approx(best.val_acc)
    assert val_acc > 0.6  # chance is 1/3


class _Saboteur(torch.optim.Optimizer):
    """An optimiser that makes every epoch worse than the last.

    Each step raises the logit bias of class 0 by 5, so after the first epoch
    every cell is called class 0 with growing confidence and the validation
    loss rises strictly, whatever the random draws.
    """

    def __init__(self, model: CellTypeCLF) -> None:
        super().__init__(model.parameters(), {})
        self.head = model.classif[-1]

    @torch.no_grad()
    def step(self, closure=None):
        self.head.bias[0] += 5.0


def test_trainer_restores_earlier_best_weights(toy_data, tmp_path):
    _, _, _, loaders = _setup(toy_data)
    model = _model()
    trainer = Trainer(
        model=model,
        criterion=cross_entropy,
        optimizer=_Saboteur(model),
        dataloaders=loaders,
        out_path=tmp_path,
        n_epochs=4,
        save_freq=1,
        progress=False,
    )
    history = trainer.train()
    assert history.best_epoch == 0
    assert [r.best for r in history.records] == [True, False, False, False]
    last = torch.load(tmp_path / "model_weights_003.pkl")
    assert not _state_equal(model.state_dict(), last)
    assert _state_equal(model.state_dict(), torch.load(tmp_path / "00_best_model_weights.pkl"))
    val_loss, _ = evaluate(model, loaders["val"])
    assert val_loss == pytest.approx(history.records[0].val_loss, rel=1e-5)
    assert val_loss < history.records[-1].val_loss


def test_trainer_early_stopping_with_patience(toy_data):
    _, _, _, loaders = _setup(toy_data)
    model = _model()
    trainer = Trainer(
        model=model,
        criterion=cross_entropy,
        optimizer=_Saboteur(model),
        dataloaders=loaders,
        n_epochs=20,
        patience=1,
        progress=False,
    )
    history = trainer.train()
    # Best at epoch 0; stop when epochs without improvement exceed the patience.
    assert history.stopped_early
    assert len(history.records) == 3
    assert history.best_epoch == 0


def test_trainer_min_epochs_delays_best(toy_data):
    _, _, _, loaders = _setup(toy_data)
    model = _model()
    trainer = Trainer(
        model=model,
        criterion=cross_entropy,
        optimizer=_Saboteur(model),
        dataloaders=loaders,
        n_epochs=4,
        min_epochs=2,
        progress=False,
    )
    history = trainer.train()
    assert history.best_epoch == 2
    assert [r.best for r in history.records] == [False, False, True, False]


def test_trainer_writes_checkpoints_only_with_out_path(toy_data, tmp_path, monkeypatch):
    _, _, _, loaders = _setup(toy_data)
    out = tmp_path / "out"
    out.mkdir()
    model = _model()
    Trainer(
        model=model,
        criterion=cross_entropy,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        dataloaders=loaders,
        out_path=out,
        n_epochs=3,
        progress=False,
    ).train()
    files = set(os.listdir(out))
    assert "00_best_model_weights.pkl" in files
    assert files <= {"00_best_model_weights.pkl"} | {f"model_weights_{e:03d}.pkl" for e in range(3)}
    assert "model_weights_000.pkl" in files
    saved = torch.load(out / "00_best_model_weights.pkl")
    assert _state_equal(saved, model.state_dict())

    calls = []
    monkeypatch.setattr(torch, "save", lambda *a, **k: calls.append(a))
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    model = _model()
    Trainer(
        model=model,
        criterion=cross_entropy,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        dataloaders=loaders,
        n_epochs=3,
        progress=False,
    ).train()
    assert calls == []
    assert os.listdir(workdir) == []


def _semi_setup(toy_data, out_path=None, n_epochs: int = 5, dan: bool = True):
    X, y, onehot, loaders = _setup(toy_data, n_cells=150, val=30)
    # Shifted target cells: same classes, a different library composition.
    Xu, _ = toy_data(n_cells=48, n_genes=N_GENES, n_classes=N_CLASSES, seed=7)
    X_all = np.vstack([X, Xu + 0.2]).astype(np.float32)
    domain = np.zeros((len(X_all), 2), dtype=np.float32)
    domain[: len(X), 0] = 1
    domain[len(X) :, 1] = 1
    y_all = np.vstack([onehot, np.zeros((len(Xu), N_CLASSES), dtype=np.float32)])
    rows = np.arange(len(X))
    loaders = {
        "train": MatrixLoader(X_all, rows[:-30], y=y_all, domain=domain, batch_size=24, seed=0),
        "val": MatrixLoader(
            X_all, rows[-30:], y=y_all, batch_size=64, shuffle=False, drop_last=False
        ),
    }
    unsup_loader = MatrixLoader(
        X_all, np.arange(len(X), len(X_all)), domain=domain, batch_size=24, seed=1
    )
    model = _model()
    # log1p_drop zeroes whole marker genes of a 12-gene toy matrix: too harsh to
    # learn from in a few epochs, so the loop test trains on un-augmented cells.
    mixmatch = _mixmatch(model, augment=get_augmentation("none"))
    dan_loss = DANLoss(model=model, n_domains=2) if dan else None
    params = list(model.parameters())
    if dan_loss is not None:
        params += list(dan_loss.dann.domain_clf.parameters())
    trainer = SemiSupervisedTrainer(
        unsup_dataloader=unsup_loader,
        unsup_criterion=mixmatch,
        unsup_weight=ICLWeight(ramp_epochs=4, max_unsup_weight=1.0),
        dan_criterion=dan_loss,
        dan_weight=ICLWeight(ramp_epochs=4, max_unsup_weight=0.1, sigmoid=True),
        model=model,
        criterion=cross_entropy,
        optimizer=torch.optim.Adam(params, lr=1e-2),
        dataloaders=loaders,
        out_path=out_path,
        n_epochs=n_epochs,
        progress=False,
    )
    return trainer, model, dan_loss


def test_semi_supervised_trainer_runs(toy_data, tmp_path):
    trainer, model, dan_loss = _semi_setup(toy_data, out_path=tmp_path, n_epochs=8)
    head_before = dan_loss.dann.domain_clf[0].weight.detach().clone()
    history = trainer.train()
    records = history.records
    assert len(records) == 8
    for e, r in enumerate(records):
        assert r.unsup_weight == pytest.approx(min(e / 4, 1.0))
        assert r.dan_weight == pytest.approx(ICLWeight(4, 0, 0.1, sigmoid=True)(e))
        assert all(np.isfinite([r.train_loss, r.sup_loss, r.unsup_loss, r.dan_loss]))
        assert 0.0 <= r.dan_acc <= 1.0
        assert r.pseudolabel_confident == 1.0
    assert records[-1].sup_loss < records[0].sup_loss
    assert records[-1].val_loss < records[0].val_loss
    assert not torch.equal(dan_loss.dann.domain_clf[0].weight, head_before)
    assert _state_equal(model.state_dict(), trainer.best_state)
    assert trainer.best_extra_state is not None
    files = set(os.listdir(tmp_path))
    assert {"00_best_model_weights.pkl", "02_best_dan_weights.pkl"} <= files
    dan_saved = torch.load(tmp_path / "02_best_dan_weights.pkl")
    assert _state_equal(dan_saved, trainer.best_extra_state)


def test_semi_supervised_trainer_without_dan(toy_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trainer, model, _ = _semi_setup(toy_data, n_epochs=3, dan=False)
    history = trainer.train()
    assert len(history.records) == 3
    assert all(r.dan_loss == 0.0 for r in history.records)
    assert trainer.best_extra_state is None
    assert _state_equal(model.state_dict(), trainer.best_state)
    assert os.listdir(tmp_path) == []
