"""Tests of scnym.interpret: saliency, guided backprop and integrated gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scnym.interpret import IntegratedGradient, Salience
from scnym.model import CellTypeCLF
from torch import nn

N_GENES = 8
MARKER = 5
CLASSES = ["A", "B"]
GENES = [f"g{i}" for i in range(N_GENES)]


@pytest.fixture(scope="module")
def trained():
    """A tiny classifier where gene ``g5`` is high in class B only."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    y = np.arange(80) % 2
    X = np.clip(rng.normal(3.0, 0.5, size=(80, N_GENES)), 0, None)
    X[y == 1, MARKER] += 3.0
    X = X.astype(np.float32)
    model = CellTypeCLF(N_GENES, 2, n_hidden=16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    model.train()
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert (model(xt).argmax(1) == yt).float().mean() > 0.95
    return model, X, y


def _random_model() -> CellTypeCLF:
    model = CellTypeCLF(6, 3, n_hidden=8)
    model.train()
    with torch.no_grad():  # give the batch norms non-trivial running statistics
        for _ in range(3):
            model(torch.rand(16, 6) * 5)
    return model.eval()


def _autograd_saliency(model, x, index):
    model.eval()
    x = torch.as_tensor(x).clone().requires_grad_(True)
    model(x)[:, index].sum().backward()
    return x.grad.numpy()


def _guided_reference(model: CellTypeCLF, x: torch.Tensor, index: int, guided: bool = True):
    """Guided backprop written out by hand for the default (non-residual) layout."""
    c = model.classif
    layers = [(c[0], c[1]), (c[4], c[5]), (c[8], c[9])]
    with torch.no_grad():
        h, pre = x, []
        for linear, bn in layers:
            z = bn(linear(h))
            pre.append(z)
            h = z.clamp_min(0)
        g = c[12].weight[index].expand(x.shape[0], -1)
        for (linear, bn), z in zip(reversed(layers), reversed(pre), strict=True):
            g = (g.clamp_min(0) if guided else g) * (z > 0)
            g = (g * bn.weight / torch.sqrt(bn.running_var + bn.eps)) @ linear.weight
    return g.numpy()


def test_saliency_equals_autograd_gradient():
    model = _random_model()
    x = torch.rand(5, 6) * 5
    sal = Salience(model, class_names=["a", "b", "c"], gene_names=list("uvwxyz"))
    by_name = sal.get_saliency(x.numpy(), "b")
    assert by_name.shape == (5, 6)
    np.testing.assert_allclose(by_name, _autograd_saliency(model, x, 1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sal.get_saliency(x, 1), by_name, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        by_name, _guided_reference(model, x, 1, guided=False), rtol=1e-4, atol=1e-5
    )
    single = sal.get_saliency(x[0].numpy(), "b")
    assert single.shape == (1, 6)
    np.testing.assert_allclose(single[0], by_name[0], rtol=1e-5, atol=1e-6)


def test_saliency_leaves_the_given_model_alone():
    model = _random_model().train()
    Salience(model, class_names=["a", "b", "c"]).get_saliency(torch.rand(2, 6), 0)
    assert model.training
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_guided_backprop_passes_only_positive_gradients():
    model = _random_model()
    x = torch.rand(16, 6) * 5
    sal = Salience(model, class_names=["a", "b", "c"])
    plain = sal.get_saliency(x, 2)
    guided = sal.get_saliency(x, 2, guide_backprop=True)
    np.testing.assert_allclose(guided, _guided_reference(model, x, 2), rtol=1e-4, atol=1e-5)
    assert not np.allclose(guided, plain)
    # The ReLUs are restored: no instance override remains and plain saliency is unchanged.
    relus = [m for m in sal.model.modules() if isinstance(m, nn.ReLU)]
    assert relus and all("forward" not in vars(m) for m in relus)
    np.testing.assert_allclose(sal.get_saliency(x, 2), plain, rtol=1e-6, atol=1e-7)


def test_rank_genes_by_saliency_finds_planted_gene(trained):
    model, X, y = trained
    sal = Salience(model, class_names=CLASSES, gene_names=GENES)
    ranked = sal.rank_genes_by_saliency(X[y == 1], "B")
    assert sorted(ranked.tolist()) == sorted(GENES)
    assert ranked[0] == GENES[MARKER]
    guided = sal.rank_genes_by_saliency(X[y == 1], "B", guide_backprop=True)
    assert sorted(guided.tolist()) == sorted(GENES)


def test_rank_needs_gene_names():
    sal = Salience(_random_model(), class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="gene_names"):
        sal.rank_genes_by_saliency(torch.rand(2, 6), "a")


def _probs(model, x):
    with torch.no_grad():
        return torch.softmax(model.eval()(torch.as_tensor(x, dtype=torch.float32)), 1).numpy()


def test_integrated_gradient_completeness_zero_baseline(trained, caplog):
    model, X, y = trained
    ig = IntegratedGradient(model, class_names=CLASSES, gene_names=GENES)
    cells = X[[0, 1, 2, 3]]
    with caplog.at_level("WARNING", logger="scnym.interpret"):
        attr = ig.get_integrated_gradient(cells, "B", M=300)
    assert attr.shape == (4, N_GENES)
    delta = _probs(model, cells)[:, 1] - _probs(model, np.zeros((1, N_GENES)))[:, 1]
    np.testing.assert_allclose(attr.sum(1), delta, rtol=0.05, atol=0.01)
    assert not any("Integrated gradients sum" in r.message for r in caplog.records)


def test_integrated_gradient_completeness_custom_baseline(trained):
    model, X, y = trained
    ig = IntegratedGradient(model, class_names=CLASSES, gene_names=GENES)
    baseline = X[y == 0].mean(0)
    cells = X[y == 1][:3]
    attr = ig.get_integrated_gradient(cells, 1, M=300, baseline=baseline)
    delta = _probs(model, cells)[:, 1] - _probs(model, baseline[None])[:, 1]
    np.testing.assert_allclose(attr.sum(1), delta, rtol=0.05, atol=0.01)
    assert np.argmax(attr.mean(0)) == MARKER
    single = ig.get_integrated_gradient(cells[0], "B", M=300, baseline=baseline)
    np.testing.assert_allclose(single[0], attr[0], rtol=1e-4, atol=1e-6)


def test_integrated_gradient_get_grad_is_probability_gradient(trained):
    model, X, _ = trained
    ig = IntegratedGradient(model, class_names=CLASSES)
    x = torch.from_numpy(X[:3]).clone().requires_grad_(True)
    torch.softmax(model.eval()(x), 1)[:, 0].sum().backward()
    np.testing.assert_allclose(ig.get_grad(X[:3], "A"), x.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_unknown_class_name_raises(trained):
    model, X, _ = trained
    with pytest.raises(ValueError, match="'C'"):
        IntegratedGradient(model, class_names=CLASSES).get_integrated_gradient(X[:1], "C", M=5)
    with pytest.raises(ValueError, match="'C'"):
        Salience(model, class_names=CLASSES).get_saliency(X[:1], "C")
