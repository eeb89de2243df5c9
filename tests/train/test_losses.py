"""The ICT consistency loss and its teacher: the model itself or a mean teacher."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scnym.dataprep import MatrixLoader
from scnym.losses import ICLWeight, InterpolationConsistencyLoss, MixMatchLoss, cross_entropy
from scnym.model import CellTypeCLF
from scnym.trainer import SemiSupervisedTrainer

N_GENES, N_CLASSES = 12, 3


def _model() -> CellTypeCLF:
    """A small classifier in eval mode: no dropout, so a forward pass is a pure function."""
    return CellTypeCLF(N_GENES, N_CLASSES, n_hidden=16).eval()


def _batches(toy_data, n: int = 16):
    X, y = toy_data(n_cells=2 * n, n_genes=N_GENES, n_classes=N_CLASSES)
    X = torch.from_numpy(X)
    labeled = {"input": X[:n].clone(), "output": F.one_hot(torch.from_numpy(y[:n]), 3).float()}
    return labeled, {"input": X[n:].clone()}


def _perturb(model: torch.nn.Module, scale: float = 0.5) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


# ----------------------------------------------------------------------------
# InterpolationConsistencyLoss (ICT)
# ----------------------------------------------------------------------------


def test_ict_consistency_is_zero_when_the_student_is_its_own_teacher(toy_data):
    model = _model()
    labeled, unlabeled = _batches(toy_data)
    ict = InterpolationConsistencyLoss(mean_teacher=False, alpha=0.0, model=model)
    sup, unsup = ict(model, labeled, unlabeled)
    assert float(unsup.detach()) == 0.0
    torch.testing.assert_close(sup, cross_entropy(model(labeled["input"]), labeled["output"]))
    assert ict.last_confidence.dtype == torch.bool and bool(ict.last_confidence.all())


@pytest.mark.parametrize("criterion", ["mse", "ce"])
def test_ict_consistency_is_positive_with_gradient_when_student_and_teacher_differ(
    toy_data, criterion
):
    model = _model()
    labeled, unlabeled = _batches(toy_data)
    ict = InterpolationConsistencyLoss(
        unsup_criterion=criterion, mean_teacher=True, alpha=0.0, model=model
    )
    _perturb(model)  # the student moves away from its mean teacher
    _, unsup = ict(model, labeled, unlabeled)
    assert unsup.ndim == 0 and float(unsup.detach()) > 0
    unsup.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert all(p.grad is None for p in ict.teacher.ema.parameters())  # targets are constants


def test_ict_mixes_unlabeled_inputs_and_teacher_targets_alike(toy_data):
    model = _model()
    labeled, unlabeled = _batches(toy_data)
    u = unlabeled["input"]
    ict = InterpolationConsistencyLoss(mean_teacher=True, alpha=0.3, model=model)
    _perturb(model)
    seen = []
    handle = model.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    torch.manual_seed(7)
    _, unsup = ict(model, labeled, unlabeled)
    handle.remove()

    # The documented mixup: a row keeps the larger weight gamma >= 0.5 on itself.
    torch.manual_seed(7)
    perm = torch.randperm(u.shape[0])
    gamma = torch.distributions.Beta(torch.tensor(0.3), torch.tensor(0.3)).sample((u.shape[0], 1))
    gamma = torch.maximum(gamma, 1 - gamma)
    mixed_x = gamma * u + (1 - gamma) * u[perm]
    with torch.no_grad():
        targets = torch.softmax(ict.teacher.ema(u), dim=1)
        mixed_targets = gamma * targets + (1 - gamma) * targets[perm]
        expected = ((torch.softmax(model(mixed_x), dim=1) - mixed_targets) ** 2).sum(1).mean()

    student_input = seen[0]
    torch.testing.assert_close(student_input, mixed_x)
    assert not torch.allclose(student_input, u)
    torch.testing.assert_close(unsup.detach(), expected)
    torch.testing.assert_close(seen[1], labeled["input"])  # no augmentation by default


def test_ict_rejects_an_unknown_consistency_criterion():
    with pytest.raises(ValueError, match="unsup_criterion must be 'mse' or 'ce'"):
        InterpolationConsistencyLoss(unsup_criterion="l1")


# ----------------------------------------------------------------------------
# The teacher: mean teacher update, or the model itself
# ----------------------------------------------------------------------------


def test_mean_teacher_starts_as_an_eval_copy_of_the_model():
    model = _model().train()
    ict = InterpolationConsistencyLoss(mean_teacher=True, decay_coef=0.9, model=model)
    ema = ict.teacher.ema
    assert ema is not model and not ema.training and model.training
    for a, b in zip(ema.parameters(), model.parameters(), strict=True):
        assert a is not b and torch.equal(a, b)


def test_mean_teacher_update_is_an_exponential_moving_average():
    decay = 0.9
    model = _model().train()
    ict = InterpolationConsistencyLoss(mean_teacher=True, decay_coef=decay, model=model)
    teacher = ict.teacher

    # First update: the average of one model is that model.
    _perturb(model)
    ict.after_step(model)
    assert teacher.steps == 1
    for a, b in zip(teacher.ema.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)

    # Second update weighs min(1 - 1/2, decay) = 0.5 on the teacher.
    before = _params(teacher.ema)
    _perturb(model)
    ict.after_step(model)
    for a, old, p in zip(teacher.ema.parameters(), before, model.parameters(), strict=True):
        torch.testing.assert_close(a, 0.5 * old + 0.5 * p)

    # Later updates weigh decay: teacher = decay * teacher + (1 - decay) * student.
    teacher.steps = 100
    before = _params(teacher.ema)
    _perturb(model)
    model(torch.rand(8, N_GENES))  # batch norm statistics of the student move
    ict.after_step(model)
    assert teacher.steps == 101
    for a, old, p in zip(teacher.ema.parameters(), before, model.parameters(), strict=True):
        torch.testing.assert_close(a, decay * old + (1 - decay) * p)
    for a, b in zip(teacher.ema.buffers(), model.buffers(), strict=True):
        assert torch.equal(a, b)  # buffers (batch norm statistics) are copied


def test_mean_teacher_pseudolabels_come_from_the_average_not_the_student():
    model = _model()
    ict = InterpolationConsistencyLoss(mean_teacher=True, model=model)
    _perturb(model)
    x = torch.rand(6, N_GENES)
    with torch.no_grad():
        expected = torch.softmax(ict.teacher.ema(x), dim=1)
        student = torch.softmax(model(x), dim=1)
    probs = ict.teacher.predict(model, x)
    torch.testing.assert_close(probs, expected)
    assert not torch.allclose(probs, student)


def test_without_mean_teacher_the_teacher_is_the_model_in_eval_mode():
    model = _model().train()
    ict = InterpolationConsistencyLoss(mean_teacher=False, model=model)
    assert ict.teacher.ema is None
    x = torch.rand(6, N_GENES)
    with torch.no_grad():
        train_probs = torch.softmax(model(x), dim=1)  # batch statistics, dropout
        eval_probs = torch.softmax(model.eval()(x), dim=1)  # running statistics
    model.train()
    probs = ict.teacher.predict(model, x)
    torch.testing.assert_close(probs, eval_probs)
    assert not torch.allclose(probs, train_probs)
    assert model.training  # the model's mode is restored
    before = _params(model)
    ict.after_step(model)  # no average to update: a no-op
    assert ict.teacher.steps == 0
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))


def test_mixmatch_has_no_mean_teacher_unless_asked():
    model = _model()
    assert MixMatchLoss(model=model).teacher.ema is None
    assert MixMatchLoss(model=model, mean_teacher=True).teacher.ema is not None


def test_semi_supervised_training_updates_the_mean_teacher_after_every_step(toy_data):
    X, y = toy_data(n_cells=64, n_genes=N_GENES, n_classes=N_CLASSES)
    onehot = np.eye(N_CLASSES, dtype=np.float32)[y]
    rows = np.arange(64)
    loaders = {
        "train": MatrixLoader(X, rows[:32], y=onehot, batch_size=8, seed=0),
        "val": MatrixLoader(X, rows[32:48], y=onehot, batch_size=16, shuffle=False),
    }
    model = _model()
    ict = InterpolationConsistencyLoss(mean_teacher=True, decay_coef=0.99, model=model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    unlabeled = MatrixLoader(X, rows[48:], batch_size=8, seed=1)
    trainer = SemiSupervisedTrainer(
        unlabeled, ict, ICLWeight(ramp_epochs=1), model=model, criterion=cross_entropy,
        optimizer=optimizer, dataloaders=loaders, n_epochs=2, progress=False,
    )  # fmt: skip
    trainer.train()
    assert ict.teacher.steps == 2 * len(loaders["train"])
    ema = _params(ict.teacher.ema)
    assert not all(torch.equal(a, b) for a, b in zip(ema, model.parameters(), strict=True))
