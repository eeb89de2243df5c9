"""Tests of scnym.preprocessing: input checks, normalisation and gene alignment."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse
from scnym.preprocessing import (
    LOG1P_CPM_MAX,
    align_genes,
    check_unique_genes,
    detect_input_kind,
    gene_index_map,
    log1p_cpm,
    to_log1p_cpm,
)

FIX = r"normalize_total\(adata, target_sum=1e6\); sc\.pp\.log1p"


def _counts(n: int = 6, g: int = 9, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = rng.poisson(3.0, size=(n, g)).astype(np.float32)
    counts[:, 0] += 1  # no empty cell
    return counts


def _ref_log1p_cpm(counts, library=None) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    library = counts.sum(1) if library is None else np.asarray(library, dtype=np.float64)
    return np.log1p(counts / library[:, None] * 1e6)


@pytest.mark.parametrize("to_sparse", [False, True])
def test_detect_counts(to_sparse):
    X = _counts()
    assert detect_input_kind(sparse.csr_matrix(X) if to_sparse else X) == "counts"
    assert detect_input_kind(X.astype(np.int64)) == "counts"


@pytest.mark.parametrize("to_sparse", [False, True])
def test_detect_log1p_cpm(to_sparse):
    X = _ref_log1p_cpm(_counts()).astype(np.float32)
    assert X.max() <= LOG1P_CPM_MAX
    assert detect_input_kind(sparse.csr_matrix(X) if to_sparse else X) == "log1p_cpm"
    # A single cell holding all its counts in one gene sits exactly at the maximum.
    edge = np.zeros((2, 3), dtype=np.float32)
    edge[0, 0] = np.log1p(1e6)
    edge[1, :] = np.log1p(1e6 / 3)
    assert detect_input_kind(edge) == "log1p_cpm"


@pytest.mark.parametrize("to_sparse", [False, True])
def test_detect_negative_values(to_sparse):
    X = _ref_log1p_cpm(_counts())
    X = X - X.mean(0)  # centred, as after sc.pp.scale
    with pytest.raises(ValueError, match="negative") as err:
        detect_input_kind(sparse.csr_matrix(X) if to_sparse else X)
    assert "raw counts" in str(err.value)
    with pytest.raises(ValueError, match=FIX):
        detect_input_kind(X)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_detect_nan_inf(bad):
    X = _counts()
    X[2, 3] = bad
    with pytest.raises(ValueError, match="1 NaN or infinite") as err:
        detect_input_kind(X)
    assert "remove or fix" in str(err.value)
    with pytest.raises(ValueError, match="NaN or infinite"):
        detect_input_kind(sparse.csr_matrix(X))


def test_detect_all_zero_and_empty():
    for X in (np.zeros((3, 4)), sparse.csr_matrix((3, 4)), np.zeros((0, 4))):
        with pytest.raises(ValueError, match="no non-zero") as err:
            detect_input_kind(X)
        assert "normalize_total" in str(err.value)


@pytest.mark.parametrize("to_sparse", [False, True])
def test_detect_normalised_not_logged(to_sparse):
    counts = _counts().astype(np.float64)
    cpm = counts / counts.sum(1, keepdims=True) * 1e4
    with pytest.raises(ValueError, match="normalised but not log-transformed") as err:
        detect_input_kind(sparse.csr_matrix(cpm) if to_sparse else cpm, what="adata.X")
    message = str(err.value)
    assert message.startswith("adata.X")
    assert "sc.pp.log1p" in message


@pytest.mark.parametrize("to_sparse", [False, True])
def test_log1p_cpm_matches_reference(to_sparse):
    counts = _counts()
    X = sparse.csr_matrix(counts) if to_sparse else counts
    out = log1p_cpm(X)
    assert out.dtype == np.float32
    dense = out.toarray() if to_sparse else out
    np.testing.assert_allclose(dense, _ref_log1p_cpm(counts), rtol=1e-5)
    np.testing.assert_allclose(np.expm1(dense.astype(np.float64)).sum(1), 1e6, rtol=1e-4)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_log1p_cpm_sparse_stays_csr_and_equals_dense(fmt):
    counts = _counts()
    original = sparse.csr_matrix(counts).asformat(fmt)
    before = original.copy()
    out = log1p_cpm(original)
    assert sparse.isspmatrix_csr(out) or out.format == "csr"
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.toarray(), log1p_cpm(counts))
    assert out.nnz == np.count_nonzero(counts)
    np.testing.assert_array_equal(original.toarray(), before.toarray())  # input untouched


def test_log1p_cpm_explicit_library_size():
    counts = _counts()
    library = counts.sum(1) * 4  # the model genes hold a quarter of each cell's counts
    for X in (counts, sparse.csr_matrix(counts)):
        out = log1p_cpm(X, library_size=library)
        dense = out.toarray() if sparse.issparse(out) else out
        np.testing.assert_allclose(dense, _ref_log1p_cpm(counts, library), rtol=1e-5)
        np.testing.assert_allclose(np.expm1(dense.astype(np.float64)).sum(1), 2.5e5, rtol=1e-4)
    target = log1p_cpm(counts, target_sum=1e4)
    np.testing.assert_allclose(np.expm1(target.astype(np.float64)).sum(1), 1e4, rtol=1e-4)


def test_log1p_cpm_empty_cell_stays_zero():
    counts = _counts()
    counts[1] = 0
    out = log1p_cpm(counts)
    assert np.all(np.isfinite(out)) and np.all(out[1] == 0)


def test_to_log1p_cpm():
    counts = _counts()
    out, kind = to_log1p_cpm(counts)
    assert kind == "counts"
    np.testing.assert_array_equal(out, log1p_cpm(counts))
    again, kind2 = to_log1p_cpm(sparse.csr_matrix(out.astype(np.float64)))
    assert kind2 == "log1p_cpm" and sparse.issparse(again) and again.dtype == np.float32
    np.testing.assert_array_equal(again.toarray(), out)


SAMPLE = ["a", "b", "c", "d"]
MODEL = ["c", "x", "a", "y"]  # c, a present; x, y missing; b, d extra


def _expected_aligned(X: np.ndarray) -> np.ndarray:
    out = np.zeros((X.shape[0], 4), dtype=X.dtype)
    out[:, 0] = X[:, 2]
    out[:, 2] = X[:, 0]
    return out


def test_align_genes_dense():
    X = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    out = align_genes(X, SAMPLE, MODEL)
    assert out.shape == (3, 4) and out.dtype == np.float32
    np.testing.assert_array_equal(out, _expected_aligned(X))
    np.testing.assert_array_equal(align_genes(X, SAMPLE, ["d", "c", "b", "a"]), X[:, ::-1])
    np.testing.assert_array_equal(align_genes(X, SAMPLE, ["b"]), X[:, [1]])


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_align_genes_sparse(fmt):
    dense = np.array([[1, 0, 2, 3], [0, 4, 0, 5], [6, 0, 0, 0]], dtype=np.float32)
    out = align_genes(sparse.csr_matrix(dense).asformat(fmt), SAMPLE, MODEL)
    assert sparse.issparse(out) and out.format == "csr"
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out.toarray(), _expected_aligned(dense))
    np.testing.assert_array_equal(
        align_genes(sparse.csr_matrix(dense), SAMPLE, MODEL).toarray(),
        align_genes(dense, SAMPLE, MODEL),
    )


def test_align_genes_identical_lists_return_same_object():
    dense = np.ones((2, 4))
    sp = sparse.csr_matrix(dense)
    assert align_genes(dense, SAMPLE, list(SAMPLE)) is dense
    assert align_genes(sp, tuple(SAMPLE), SAMPLE) is sp


def test_gene_index_map():
    np.testing.assert_array_equal(gene_index_map(SAMPLE, MODEL), [2, -1, 0, -1])


def test_check_unique_genes():
    check_unique_genes(["a", "b", "c"])
    with pytest.raises(ValueError, match="var_names_make_unique") as err:
        check_unique_genes(["a", "b", "a", "c", "b", "b"])
    assert "3 repeats" in str(err.value)
    assert "'a'" in str(err.value) and "'b'" in str(err.value)
