"""Tests of scnym.dataprep: dataset, batch loader, balancing and augmentations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import sparse
from scnym.dataprep import (
    AUGMENTATION_SCHEMES,
    Compose,
    ExpMinusOne,
    GeneMasking,
    InputDropout,
    LibrarySizeNormalize,
    MatrixLoader,
    MultinomialSample,
    PoissonSample,
    SampleMixUp,
    SingleCellDS,
    balance_classes,
    class_balance_weights,
    get_augmentation,
    identity,
    mixup,
    repeater,
)

# ----------------------------------------------------------------------------
# SingleCellDS
# ----------------------------------------------------------------------------


def _indexed_matrix(n: int = 10, g: int = 5) -> np.ndarray:
    """Dense float64 matrix whose column 0 holds the row index (rows are identifiable)."""
    rng = np.random.default_rng(1)
    X = rng.random((n, g)) * (rng.random((n, g)) > 0.5)
    X[:, 0] = np.arange(n)
    return X


def test_singlecellds_item_without_domain():
    X = _indexed_matrix()
    y = np.array([0, 1, 2, 1, 0, 2, 1, 0, 2, 1])
    ds = SingleCellDS(X, y)
    assert len(ds) == 10
    item = ds[3]
    assert set(item) == {"input", "output", "domain"}
    assert item["input"].dtype == torch.float32
    assert item["input"].shape == (5,)
    np.testing.assert_allclose(item["input"].numpy(), X[3].astype(np.float32))
    torch.testing.assert_close(item["output"], torch.tensor([0.0, 1.0, 0.0]))
    assert item["domain"].dtype == torch.float32
    assert torch.all(item["domain"] == -1)


def test_singlecellds_with_domain_and_widths():
    X = _indexed_matrix()
    y = np.zeros(10, dtype=int)
    domain = np.arange(10) % 2
    ds = SingleCellDS(X, y, domain=domain, num_classes=3, num_domains=4)
    item = ds[1]
    torch.testing.assert_close(item["output"], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(item["domain"], torch.tensor([0.0, 1.0, 0.0, 0.0]))
    inferred = SingleCellDS(X, y, domain=domain)
    assert inferred.num_domains == 2 and inferred.num_classes == 1
    torch.testing.assert_close(inferred[2]["domain"], torch.tensor([1.0, 0.0]))


@pytest.mark.parametrize("kind", ["csr", "csc", "coo"])
def test_singlecellds_sparse_matches_dense(kind):
    X = _indexed_matrix()
    y = np.arange(10) % 3
    dense = SingleCellDS(X, y)
    sp = SingleCellDS(sparse.csr_matrix(X).asformat(kind), y)
    for i in range(len(dense)):
        a, b = dense[i], sp[i]
        torch.testing.assert_close(a["input"], b["input"])
        torch.testing.assert_close(a["output"], b["output"])
        assert b["input"].dtype == torch.float32 and b["input"].shape == (5,)


def test_singlecellds_transform_applied():
    X = _indexed_matrix()
    ds = SingleCellDS(X, np.zeros(10, dtype=int), transform=ExpMinusOne())
    torch.testing.assert_close(ds[4]["input"], torch.expm1(torch.from_numpy(X[4]).float()))


def test_singlecellds_length_mismatch():
    with pytest.raises(ValueError, match="10 cells"):
        SingleCellDS(_indexed_matrix(), np.zeros(9, dtype=int))


# ----------------------------------------------------------------------------
# MatrixLoader
# ----------------------------------------------------------------------------


def _rows_of(batch) -> np.ndarray:
    return batch["input"][:, 0].numpy().astype(int)


@pytest.mark.parametrize("to_sparse", [False, True])
def test_loader_covers_all_rows_once_without_drop_last(to_sparse):
    X = _indexed_matrix(23, 4)
    X = sparse.csr_matrix(X) if to_sparse else X
    rows = np.arange(3, 23)  # 20 rows
    loader = MatrixLoader(X, rows, batch_size=6, drop_last=False, seed=0)
    assert len(loader) == 4
    for _ in range(2):
        batches = list(loader)
        assert [len(b["input"]) for b in batches] == [6, 6, 6, 2]
        seen = np.concatenate([_rows_of(b) for b in batches])
        assert sorted(seen.tolist()) == rows.tolist()


def test_loader_drop_last_drops_incomplete_batch():
    X = _indexed_matrix(20, 4)
    loader = MatrixLoader(X, np.arange(20), batch_size=6, drop_last=True, seed=0)
    assert len(loader) == 3
    batches = list(loader)
    assert [len(b["input"]) for b in batches] == [6, 6, 6]
    seen = np.concatenate([_rows_of(b) for b in batches])
    assert len(set(seen.tolist())) == 18


def test_loader_fewer_rows_than_batch_size_gives_one_batch():
    X = _indexed_matrix(10, 4)
    for drop_last in (True, False):
        loader = MatrixLoader(X, np.array([2, 5, 7]), batch_size=256, drop_last=drop_last)
        assert loader.batch_size == 3
        assert len(loader) == 1
        (batch,) = list(loader)
        assert sorted(_rows_of(batch).tolist()) == [2, 5, 7]


def test_loader_needs_rows():
    with pytest.raises(ValueError):
        MatrixLoader(_indexed_matrix(), np.array([], dtype=int))


def test_loader_no_shuffle_keeps_order_and_aligns_labels():
    X = _indexed_matrix(12, 4)
    y = np.eye(3, dtype=np.float32)[np.arange(12) % 3]
    domain = np.eye(2, dtype=np.float32)[np.arange(12) % 2]
    rows = np.array([9, 1, 4, 7, 2])
    loader = MatrixLoader(X, rows, y=y, domain=domain, batch_size=2, shuffle=False, drop_last=False)
    batches = list(loader)
    assert np.concatenate([_rows_of(b) for b in batches]).tolist() == rows.tolist()
    for batch in batches:
        r = _rows_of(batch)
        np.testing.assert_array_equal(batch["output"].numpy(), y[r])
        np.testing.assert_array_equal(batch["domain"].numpy(), domain[r])
    assert "output" not in next(iter(MatrixLoader(X, rows, batch_size=2)))


class _SpyMatrix:
    """A matrix that only supports row slicing, recording each request."""

    def __init__(self, X):
        self._X = X
        self.shape = X.shape
        self.requests: list[int] = []

    def __getitem__(self, rows):
        self.requests.append(len(rows))
        return self._X[rows]


def test_loader_densifies_only_the_batch():
    rng = np.random.default_rng(0)
    dense = (rng.random((40, 7)) * (rng.random((40, 7)) > 0.6)).astype(np.float64)
    dense[:, 0] = np.arange(40) + 1  # identifies the row
    X = sparse.csr_matrix(dense)
    spy = _SpyMatrix(X)
    loader = MatrixLoader(spy, np.arange(40), batch_size=8, shuffle=True, drop_last=False, seed=3)
    batches = list(loader)
    assert spy.requests == [8] * 5
    seen = []
    for batch in batches:
        x = batch["input"]
        assert isinstance(x, torch.Tensor) and x.layout == torch.strided
        assert x.dtype == torch.float32
        rows = x[:, 0].numpy().astype(int) - 1
        seen += rows.tolist()
        np.testing.assert_array_equal(x.numpy(), X[rows].toarray().astype(np.float32))
    assert sorted(seen) == list(range(40))
    assert sparse.issparse(X)  # the matrix itself is never densified


def test_loader_sample_weights_balance_classes():
    y = np.array([0] * 90 + [1] * 10)
    X = _indexed_matrix(100, 3)
    weights = class_balance_weights(y)
    loader = MatrixLoader(X, np.arange(100), batch_size=50, sample_weights=weights, seed=0)
    drawn = np.concatenate([_rows_of(b) for _ in range(20) for b in loader])
    assert len(drawn) == 2000
    share = float(np.mean(y[drawn] == 1))
    assert 0.4 < share < 0.6
    plain = MatrixLoader(X, np.arange(100), batch_size=50, seed=0)
    plain_drawn = np.concatenate([_rows_of(b) for _ in range(5) for b in plain])
    assert float(np.mean(y[plain_drawn] == 1)) == pytest.approx(0.1)


def test_loader_seeded_order_is_reproducible():
    X = _indexed_matrix(30, 3)

    def passes(seed):
        loader = MatrixLoader(X, np.arange(30), batch_size=7, seed=seed)
        return [_rows_of(b).tolist() for _ in range(2) for b in loader]

    first = passes(5)
    assert first == passes(5)
    assert first != passes(6)
    assert first[:4] != first[4:]  # a new order each pass


def test_repeater_cycles():
    X = _indexed_matrix(5, 3)
    it = repeater(MatrixLoader(X, np.arange(5), batch_size=2, drop_last=True))
    batches = [next(it) for _ in range(7)]
    assert all(len(b["input"]) == 2 for b in batches)


# ----------------------------------------------------------------------------
# Balancing
# ----------------------------------------------------------------------------


def test_balance_classes_equal_counts():
    y = np.array([0] * 10 + [1] * 3 + [2] * 6)
    idx = balance_classes(y, class_min=4, seed=0)
    classes, counts = np.unique(y[idx], return_counts=True)
    assert classes.tolist() == [0, 1, 2]
    # Target as in scNym 0.3.2: max(smallest class, class_min) = 4.
    assert counts.tolist() == [4, 4, 4]
    # Larger classes are subsampled without replacement; smaller ones drawn with it.
    assert len(set(idx[y[idx] == 0].tolist())) == 4
    assert set(idx[y[idx] == 1].tolist()) <= {10, 11, 12}


def test_balance_classes_class_min_and_seed():
    y = np.array([0] * 10 + [1] * 3)
    idx = balance_classes(y, class_min=15, seed=2)
    assert np.unique(y[idx], return_counts=True)[1].tolist() == [15, 15]
    np.testing.assert_array_equal(idx, balance_classes(y, class_min=15, seed=2))


def test_class_balance_weights_equal_class_totals():
    y = np.array([2, 2, 2, 0, 1, 1])
    w = class_balance_weights(y)
    totals = [w[y == c].sum() for c in (0, 1, 2)]
    np.testing.assert_allclose(totals, [1.0, 1.0, 1.0])


# ----------------------------------------------------------------------------
# Augmentations
# ----------------------------------------------------------------------------


def _log1p_cpm_batch(n: int = 8, g: int = 40, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    counts = rng.poisson(50.0, size=(n, g)).astype(np.float64) + 1
    return torch.from_numpy(np.log1p(counts / counts.sum(1, keepdims=True) * 1e6)).float()


def _row_totals(x: torch.Tensor) -> torch.Tensor:
    return torch.expm1(x.double()).sum(-1)


def test_library_size_normalize():
    counts = torch.tensor([[1.0, 3.0, 0.0], [10.0, 10.0, 20.0]])
    out = LibrarySizeNormalize()({"input": counts.clone()})["input"]
    totals = _row_totals(out)
    torch.testing.assert_close(
        totals, torch.full((2,), 1e6, dtype=torch.float64), rtol=1e-5, atol=0
    )
    torch.testing.assert_close(out[0], torch.log1p(torch.tensor([2.5e5, 7.5e5, 0.0])))
    raw = LibrarySizeNormalize(counts_per_cell_after=100, log1p=False)({"input": counts})["input"]
    torch.testing.assert_close(raw, torch.tensor([[25.0, 75.0, 0.0], [25.0, 25.0, 50.0]]))


def test_exp_minus_one():
    x = torch.tensor([[0.0, 1.0, 2.5]])
    torch.testing.assert_close(ExpMinusOne()({"input": x})["input"], torch.expm1(x))


def test_multinomial_sample_depth():
    counts = torch.zeros(6, 50)
    counts[:, :40] = torch.rand(6, 40) * 100 + 1
    out = MultinomialSample(depth=(1000, 2000))({"input": counts.clone()})["input"]
    assert out.shape == counts.shape
    assert torch.equal(out, out.round()) and (out >= 0).all()
    assert (out[:, 40:] == 0).all()
    totals = out.sum(1)
    assert ((totals > 800) & (totals < 2200)).all()


def test_multinomial_sample_depth_ratio_and_1d():
    counts = torch.full((4, 100), 40.0)  # 4000 counts per cell
    out = MultinomialSample(depth_ratio=(0.5, 0.5))({"input": counts})["input"]
    torch.testing.assert_close(out.sum(1), torch.full((4,), 2000.0), rtol=0.1, atol=0)
    single = MultinomialSample(depth=(500, 501))({"input": torch.full((100,), 5.0)})["input"]
    assert single.shape == (100,)
    assert 400 < float(single.sum()) < 600


def test_gene_masking_exact_fraction():
    x = torch.rand(5, 50) + 1
    out = GeneMasking(p_drop=0.2, p_apply=1.0)({"input": x.clone()})["input"]
    assert ((out == 0).sum(1) == 10).all()
    kept = out != 0
    torch.testing.assert_close(out[kept], x[kept])
    # Different cells lose different genes.
    assert not all(torch.equal(kept[0], kept[i]) for i in range(1, 5))


def test_gene_masking_p_apply_zero_is_noop():
    x = torch.rand(5, 50) + 1
    sample = {"input": x}
    out = GeneMasking(p_drop=0.5, p_apply=0.0)(sample)
    assert out["input"] is x


def test_gene_masking_sample_p_drop():
    torch.manual_seed(1)
    for _ in range(5):
        x = torch.rand(4, 40) + 1
        out = GeneMasking(p_drop=0.5, p_apply=1.0, sample_p_drop=True)({"input": x})["input"]
        zeros = (out == 0).sum(1)
        assert (zeros == zeros[0]).all()
        assert int(zeros[0]) <= 20


def test_input_dropout():
    x = torch.ones(200, 50)
    out = InputDropout(p_drop=0.5)({"input": x})["input"]
    frac = float((out == 0).float().mean())
    assert 0.45 < frac < 0.55
    torch.testing.assert_close(out[out != 0], torch.full_like(out[out != 0], 2.0))
    assert torch.equal(InputDropout(p_drop=0.0)({"input": x})["input"], x)


def test_poisson_sample():
    x = torch.full((400, 30), 1000.0)
    x[:, -1] = 0
    out = PoissonSample(depth_range=(0.5, 2.0))({"input": x})["input"]
    assert out.shape == x.shape
    assert torch.equal(out, out.round())
    assert (out[:, -1] == 0).all()
    ratio = out[:, :-1].mean(1) / 1000
    assert (ratio > 0.45).all() and (ratio < 2.1).all()
    assert float(ratio.min()) < 0.7 and float(ratio.max()) > 1.7  # a per-cell depth factor
    per_cell_cv = out[:, :-1].std(1) / out[:, :-1].mean(1)
    assert float(per_cell_cv.max()) < 0.2  # one factor for all genes of a cell


def test_identity_and_compose_order():
    sample = {"input": torch.ones(2, 2)}
    assert identity(sample) is sample
    calls = []

    def add(v):
        def f(s):
            calls.append(v)
            s["input"] = s["input"] * 10 + v
            return s

        return f

    out = Compose([add(1), add(2)])({"input": torch.zeros(1, 1)})
    assert calls == [1, 2]
    assert float(out["input"]) == 12.0
    assert Compose([])(sample) is sample


def test_mixup_formula():
    a, b = torch.tensor([[1.0, 0.0], [2.0, 2.0]]), torch.tensor([[0.0, 1.0], [4.0, 0.0]])
    gamma = torch.tensor([[0.25], [0.5]])
    torch.testing.assert_close(mixup(a, b, gamma), torch.tensor([[0.25, 0.75], [3.0, 1.0]]))


def test_sample_mixup_alpha_zero_is_noop():
    sample = {"input": torch.rand(4, 3), "output": torch.eye(4)}
    out = SampleMixUp(alpha=0.0)(sample)
    assert out is sample and "random_idx" not in out


def test_sample_mixup_keep_dominant_obs():
    n = 64
    gamma = SampleMixUp(alpha=0.3, keep_dominant_obs=True).sample_gamma(5000, torch.device("cpu"))
    assert gamma.shape == (5000, 1)
    assert (gamma >= 0.5).all() and (gamma <= 1).all()
    free = SampleMixUp(alpha=0.3).sample_gamma(5000, torch.device("cpu"))
    assert float((free < 0.5).float().mean()) > 0.3

    eye = torch.eye(n)
    labels = torch.arange(n)
    out = SampleMixUp(alpha=0.3, keep_dominant_obs=True)(
        {"input": eye.clone(), "output": eye.clone(), "label": labels}
    )
    perm = out["random_idx"]
    assert sorted(perm.tolist()) == list(range(n))
    mixed = out["input"]
    # Each row keeps at least half of itself and the rest from its partner.
    assert (mixed.diagonal() >= 0.5 - 1e-6).all()
    torch.testing.assert_close(mixed.sum(1), torch.ones(n))
    partner = mixed[torch.arange(n), perm]
    self_rows = perm == torch.arange(n)
    torch.testing.assert_close(
        partner[~self_rows] + mixed.diagonal()[~self_rows], torch.ones(int((~self_rows).sum()))
    )
    torch.testing.assert_close(out["output"], mixed)  # same gamma and permutation for all keys
    assert torch.equal(out["label"], labels)  # 1-D / integer tensors are not mixed


@pytest.mark.parametrize("name", sorted(AUGMENTATION_SCHEMES))
def test_augmentation_scheme_keeps_log1p_cpm(name):
    x = _log1p_cpm_batch()
    for _ in range(3):
        out = AUGMENTATION_SCHEMES[name]({"input": x.clone()})["input"]
        assert out.shape == x.shape
        assert torch.isfinite(out).all() and (out >= 0).all()
        torch.testing.assert_close(
            _row_totals(out), torch.full((x.shape[0],), 1e6, dtype=torch.float64), rtol=1e-3, atol=0
        )


@pytest.mark.parametrize("name", ["log1p_drop", "log1p_poisson", "log1p_poisson_drop"])
def test_augmentation_scheme_changes_input(name):
    x = _log1p_cpm_batch()
    out = AUGMENTATION_SCHEMES[name]({"input": x.clone()})["input"]
    assert not torch.allclose(out, x)


def test_get_augmentation():
    assert get_augmentation(None) is identity
    assert get_augmentation("None") is identity and get_augmentation("none") is identity
    assert get_augmentation("log1p_drop") is AUGMENTATION_SCHEMES["log1p_drop"]
    with pytest.raises(ValueError, match="log1p_bogus"):
        get_augmentation("log1p_bogus")
