"""Tests of scnym.model: classifier layout, options, gradient reversal and the adversary."""

from __future__ import annotations

import copy

import pytest
import torch
from scnym.model import DANN, CellTypeCLF, CellTypeCLFConditional, GradReverse, ResBlock
from torch import nn


def _x(n: int = 8, g: int = 20) -> torch.Tensor:
    """log1p(CPM)-like positive input."""
    counts = torch.rand(n, g) * 50 + 1
    return torch.log1p(counts / counts.sum(1, keepdim=True) * 1e6)


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def test_output_shapes_train_and_eval():
    model = CellTypeCLF(n_genes=20, n_cell_types=5, n_hidden=16)
    x = _x()
    assert model(x).shape == (8, 5)
    logits, emb = model(x, return_embed=True)
    assert logits.shape == (8, 5) and emb.shape == (8, 16)
    model.eval()
    assert model(x[:1]).shape == (1, 5)
    assert model.embed(x).shape == (8, 16)


def test_default_state_dict_layout_matches_original():
    model = CellTypeCLF(n_genes=50, n_cell_types=4)
    linear = ["weight", "bias"]
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    expected = {f"classif.{i}.{k}" for i in (0, 4, 8, 12) for k in linear}
    expected |= {f"classif.{i}.{k}" for i in (1, 5, 9) for k in bn}
    assert set(model.state_dict()) == expected
    sd = model.state_dict()
    assert sd["classif.0.weight"].shape == (256, 50)
    assert sd["classif.4.weight"].shape == (256, 256)
    assert sd["classif.8.weight"].shape == (256, 256)
    assert sd["classif.12.weight"].shape == (4, 256)


def test_default_module_order_linear_bn_dropout_relu():
    model = CellTypeCLF(n_genes=10, n_cell_types=3)
    kinds = [type(m) for m in model.classif]
    block = [nn.Linear, nn.BatchNorm1d, nn.Dropout, nn.ReLU]
    assert kinds == block * 3 + [nn.Linear]
    assert all(m.p == 0.5 for m in model.classif if isinstance(m, nn.Dropout))


def test_hidden_layers_have_distinct_weights():
    model = CellTypeCLF(n_genes=10, n_cell_types=3, n_hidden=16)
    c = model.classif
    assert c[4] is not c[8] and c[5] is not c[9]
    assert c[4].weight.data_ptr() != c[8].weight.data_ptr()
    assert not torch.equal(c[4].weight, c[8].weight)
    n_params = sum(p.numel() for p in model.parameters())
    expected = (10 * 16 + 16) + 32 + 2 * (16 * 16 + 16 + 32) + (16 * 3 + 3)
    assert n_params == expected


def test_embed_is_output_before_last_layer_and_non_negative():
    model = CellTypeCLF(n_genes=20, n_cell_types=4, n_hidden=16).eval()
    x = _x()
    with torch.no_grad():
        emb = model.embed(x)
        manual = model.classif[:-1](x.clone())
        logits, emb2 = model(x, return_embed=True)
    torch.testing.assert_close(emb, manual)
    torch.testing.assert_close(emb2, emb)
    torch.testing.assert_close(logits, model.classif[-1](emb))
    torch.testing.assert_close(model(x), logits)
    assert (emb >= 0).all()
    assert (emb > 0).any()


@pytest.mark.parametrize("n_layers", [0, 1, 3])
def test_n_layers(n_layers):
    model = CellTypeCLF(n_genes=12, n_cell_types=3, n_hidden=8, n_layers=n_layers)
    assert _count(model, nn.Linear) == n_layers + 2
    assert _count(model, nn.BatchNorm1d) == n_layers + 1
    assert model(_x(4, 12)).shape == (4, 3)


def test_batch_norm_false_keeps_input_bn_only():
    model = CellTypeCLF(n_genes=12, n_cell_types=3, n_hidden=8, batch_norm=False)
    assert _count(model, nn.BatchNorm1d) == 1
    assert isinstance(model.classif[1], nn.BatchNorm1d)
    kinds = [type(m) for m in model.classif]
    hidden = [nn.Linear, nn.Dropout, nn.ReLU]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.Dropout, nn.ReLU] + hidden * 2 + [nn.Linear]
    assert model(_x(4, 12)).shape == (4, 3)


def test_residual_uses_resblocks():
    model = CellTypeCLF(n_genes=12, n_cell_types=3, n_hidden=8, residual=True)
    blocks = [m for m in model.classif if isinstance(m, ResBlock)]
    assert len(blocks) == 2
    assert blocks[0] is not blocks[1]
    assert "classif.4.linear00.weight" in model.state_dict()
    assert model(_x(4, 12)).shape == (4, 3)


def test_track_running_stats_false():
    model = CellTypeCLF(n_genes=12, n_cell_types=3, n_hidden=8, track_running_stats=False)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(bns) == 3
    assert all(bn.running_mean is None and not bn.track_running_stats for bn in bns)
    assert not any("running_mean" in k for k in model.state_dict())
    on = CellTypeCLF(n_genes=12, n_cell_types=3, n_hidden=8)
    assert all(
        m.track_running_stats and m.running_mean is not None
        for m in on.modules()
        if isinstance(m, nn.BatchNorm1d)
    )


def test_init_dropout_only_in_training_mode():
    model = CellTypeCLF(n_genes=20, n_cell_types=3, n_hidden=8, init_dropout=0.5)
    reference = copy.deepcopy(model)
    reference.init_dropout.p = 0.0
    x = _x(16, 20)
    model.eval()
    reference.eval()
    assert model._drop_input(x) is x
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
    model.train()
    dropped = model._drop_input(x)
    assert not torch.equal(dropped, x)
    zero_fraction = float((dropped == 0).float().mean())
    assert 0.3 < zero_fraction < 0.7
    # The dropped counts are renormalised to 1e6 per cell (log1p(CPM) again).
    totals = torch.expm1(dropped.double()).sum(1)
    torch.testing.assert_close(totals, torch.full_like(totals, 1e6), rtol=1e-4, atol=0)


def test_zero_init_dropout_is_identity_in_training():
    model = CellTypeCLF(n_genes=20, n_cell_types=3, n_hidden=8).train()
    x = _x()
    assert model._drop_input(x) is x


def test_resblock_shape_and_residual():
    block = ResBlock(6, 4)
    x = torch.randn(5, 6)
    out = block(x)
    assert out.shape == (5, 6)
    assert (out >= 0).all()
    assert block.linear00.in_features == 6 and block.linear00.out_features == 4
    assert block.linear01.out_features == 6
    with torch.no_grad():
        block.norm01.weight.zero_()
        block.norm01.bias.zero_()
    # With the residual branch scaled to zero the block is relu(x).
    torch.testing.assert_close(block(x), torch.relu(x))


@pytest.mark.parametrize("weight", [1.0, 0.3, 2.5])
def test_grad_reverse_flips_and_scales(weight):
    x = torch.randn(4, 3, requires_grad=True)
    y = GradReverse.apply(x, weight)
    torch.testing.assert_close(y, x)
    upstream = torch.randn(4, 3)
    y.backward(upstream)
    torch.testing.assert_close(x.grad, -weight * upstream)


def test_dann_forward_shapes_and_shared_modules():
    model = CellTypeCLF(n_genes=20, n_cell_types=4, n_hidden=16)
    dann = DANN(model, n_domains=3)
    domain_logits, emb = dann(_x())
    assert domain_logits.shape == (8, 3)
    assert emb.shape == (8, 16)
    assert dann.model is model
    assert [type(m) for m in dann.domain_clf] == [nn.Linear, nn.ReLU, nn.Linear]
    assert DANN(model, n_layers=2).domain_clf[2].in_features == 16
    model.eval()
    with torch.no_grad():
        _, emb_eval = dann(_x())
    assert (emb_eval >= 0).all()


def _dann_grads(dann: DANN, x: torch.Tensor, target: torch.Tensor):
    dann.zero_grad(set_to_none=True)
    logits, emb = dann(x)
    emb.retain_grad()
    loss = torch.nn.functional.cross_entropy(logits, target)
    loss.backward()
    head = [p.grad.clone() for p in dann.domain_clf.parameters()]
    body = dann.model.classif[0].weight.grad.clone()
    return head, body, emb.grad.clone(), emb.detach()


def test_dann_rev_grad_weight_scales_embedding_gradient_only():
    model = CellTypeCLF(n_genes=20, n_cell_types=4, n_hidden=16).eval()
    dann = DANN(model, n_domains=2)
    x, target = _x(), torch.tensor([0, 1] * 4)

    dann.set_rev_grad_weight(0.5)
    assert dann.weight == 0.5
    head_a, body_a, emb_grad_a, emb = _dann_grads(dann, x, target)
    dann.set_rev_grad_weight(2.0)
    head_b, body_b, emb_grad_b, _ = _dann_grads(dann, x, target)

    for a, b in zip(head_a, head_b, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(emb_grad_b, 4.0 * emb_grad_a)
    torch.testing.assert_close(body_b, 4.0 * body_a)

    # The embedding receives minus weight times the domain loss gradient.
    probe = emb.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(dann.domain_clf(probe), target).backward()
    torch.testing.assert_close(emb_grad_a, -0.5 * probe.grad)


def test_conditional_input_width():
    model = CellTypeCLFConditional(n_genes=10, n_tissues=3, n_cell_types=4, n_hidden=8)
    assert model.classif[0].in_features == 13
    assert model.n_tissues == 3 and model.n_genes_only == 10
    genes = _x(6, 10)
    covariate = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), 3).float()
    x = torch.cat([genes, covariate], dim=1)
    assert model(x).shape == (6, 4)
    with pytest.raises(RuntimeError):
        model(genes)


def test_conditional_dropout_touches_genes_only():
    model = CellTypeCLFConditional(
        n_genes=10, n_tissues=3, n_cell_types=4, n_hidden=8, init_dropout=0.5
    ).train()
    genes = _x(6, 10)
    covariate = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), 3).float()
    x = torch.cat([genes, covariate], dim=1)
    dropped = model._drop_input(x)
    torch.testing.assert_close(dropped[:, 10:], covariate)
    assert not torch.equal(dropped[:, :10], genes)
    totals = torch.expm1(dropped[:, :10].double()).sum(1)
    torch.testing.assert_close(totals, torch.full_like(totals, 1e6), rtol=1e-4, atol=0)
