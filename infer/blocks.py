"""The block layer: check a store against a model, cut it into blocks, encode and classify them.

A store is read in row blocks aligned to its chunks (:func:`plan_blocks`); each
block is turned into the model's dense input (:class:`BlockEncoder`: each cell's
library size over all its genes, the model's genes picked and reordered) and
classified by onnxruntime (:func:`classify_block`). Nothing here writes: what
to do with the results is decided above, in :mod:`.compute` and
:mod:`.annotation`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import sparse

from .contract import DEFAULT_MIN_GENE_OVERLAP, gene_id_type
from .model import OnnxModel
from .preprocessing import (
    LOG1P_CPM_MAX,
    NORMALIZE_HINT,
    TARGET_SUM,
    detect_input_kind,
    gene_index_map,
)
from .store import StoreReader, aligned_block_rows, block_bounds

#: Rows sampled (spread over the store) to check the kind of data and the coverage.
SAMPLE_ROWS = 2000


class InvalidCells(ValueError):
    """A block holds values that are neither counts nor log1p(CPM); nothing is written."""


@dataclass
class ModelInputs:
    """A block as the model reads it.

    Attributes
    ----------
    x
        Counts or log1p(CPM) of the model's genes, dense, in the model's order.
    total
        Each cell's total counts over all its genes (``counts`` models), else None.
    empty
        The cells without counts in the model's genes (empty cells among them): the
        model sees nothing of them, so they get no label.
    """

    x: np.ndarray
    total: np.ndarray | None
    empty: np.ndarray


def check_values(block: sparse.csr_matrix, input_kind: str, start: int, where: str) -> None:
    """Check every stored value of a block, as streaming reads it (O(nnz)).

    The sample :func:`plan_blocks` reads decides the kind of data; this makes sure
    the cells outside it are of that kind too.

    Raises
    ------
    InvalidCells
        For NaN or infinite values, negative values, non-integer values in a
        store of counts, or values above log1p(1e6) in a store of log1p(CPM),
        naming the first such cell (its row in the store).
    """
    data = block.data
    if data.size == 0:
        return
    low, high = float(data.min()), float(data.max())  # NaN propagates into both
    if np.isfinite(low) and np.isfinite(high) and low >= 0:
        if input_kind == "counts" and np.array_equal(data, np.rint(data)):
            return
        if input_kind == "log1p_cpm" and high <= LOG1P_CPM_MAX + 1e-4:
            return
    checks = (
        (~np.isfinite(data), "NaN or infinite values"),
        (data < 0, "negative values"),
        (data != np.rint(data), "non-integer values, in a store of raw counts")
        if input_kind == "counts"
        else (data > LOG1P_CPM_MAX + 1e-4, "values above log1p(1e6), in a store of log1p(CPM)"),
    )  # fmt: skip
    for bad, what in checks:
        if bad.any():
            row = int(np.searchsorted(block.indptr, np.flatnonzero(bad)[0], side="right")) - 1
            raise InvalidCells(
                f"{where}: cell {start + row} (row {start + row} of the matrix) holds {what}; "
                f"fix or drop such cells first. {NORMALIZE_HINT}"
            )


@dataclass
class GeneCoverage:
    """How much of the model's gene space the store covers."""

    n_model_genes: int
    n_found: int
    counts_fraction: float

    @property
    def gene_fraction(self) -> float:
        return self.n_found / max(self.n_model_genes, 1)


@dataclass
class BlockPlan:
    """How a store is cut into blocks and mapped onto the model's genes."""

    bounds: list[tuple[int, int]]
    gene_index: np.ndarray  # store column of each model gene, -1 when missing
    input_kind: str
    coverage: GeneCoverage
    location: str = "the data"


def _sample_rows(reader: StoreReader, n: int = SAMPLE_ROWS) -> sparse.csr_matrix:
    """A few row ranges spread over the store (cheap on chunked storage)."""
    ranges = 4
    span = max(n // ranges, 1)
    starts = np.linspace(0, max(reader.n_obs - span, 0), ranges).astype(int)
    blocks = [reader.read_rows(int(s), min(int(s) + span, reader.n_obs)) for s in np.unique(starts)]
    return sparse.vstack(blocks).tocsr()


def _likely_cause(store_genes: pd.Index, model: OnnxModel, min_gene_overlap: float) -> str:
    """Why a store shares few genes with a model: too few genes, id kinds, versions, species."""
    n_model = len(model.genes)
    if len(store_genes) < min_gene_overlap * n_model:
        return (
            f"the data holds only {len(store_genes)} genes (the model reads {n_model}): it looks "
            "like a subset, such as the variable genes; annotate the counts of all genes "
            "(a counts layer or adata.raw: --layer)"
        )
    store_ensembl = gene_id_type(store_genes[:200]) == "ensembl"
    model_ensembl = model.metadata.get("gene_id_type") == "ensembl"
    kinds = ("Ensembl IDs", "gene symbols")
    if store_ensembl != model_ensembl:
        return (
            f"the store names genes by {kinds[0] if store_ensembl else kinds[1]} but the model by "
            f"{kinds[0] if model_ensembl else kinds[1]}; pass --gene-key with a var column of "
            f"{kinds[0] if model_ensembl else kinds[1]}"
        )
    if store_ensembl and len(_unversioned(store_genes) & _unversioned(model.genes)) > 2 * len(
        set(store_genes) & set(model.genes)
    ):
        return (
            "the Ensembl IDs match only without their version suffixes (.N): strip them, e.g. "
            "adata.var_names = adata.var_names.str.replace(r'\\.\\d+$', '', regex=True)"
        )
    upper = {g.upper() for g in store_genes}
    if len(upper & {g.upper() for g in model.genes}) > 2 * len(set(store_genes) & set(model.genes)):
        return "gene names match only ignoring case: the data may be from another species"
    return "the data may be from another species or use another gene annotation"


def _unversioned(genes) -> set[str]:
    return {str(g).split(".")[0] for g in genes}


def plan_blocks(
    reader: StoreReader,
    model: OnnxModel,
    block_rows: int | None = None,
    min_gene_overlap: float = DEFAULT_MIN_GENE_OVERLAP,
) -> BlockPlan:
    """Check the store against the model and cut it into chunk-aligned blocks.

    Raises
    ------
    ValueError
        For duplicate gene names, data that is neither counts nor log1p(CPM),
        or a gene overlap below ``min_gene_overlap``.
    """
    if not reader.var_names.is_unique:
        dupes = reader.var_names[reader.var_names.duplicated()].unique()[:5].tolist()
        raise ValueError(
            f"{reader.location} has duplicate gene names (e.g. {dupes}); make them unique "
            "or pass --gene-key with a column of unique identifiers"
        )
    if reader.n_obs == 0:
        raise ValueError(f"{reader.location} holds no cells")
    gene_index = gene_index_map(reader.var_names, model.genes)
    sample = _sample_rows(reader)
    try:
        input_kind = detect_input_kind(sample, what=f"{reader.location} (sampled rows)")
    except ValueError as err:
        if not reader.alternatives:
            raise
        raise ValueError(
            f"{err} It holds other matrices: pass --layer with one of "
            f"{list(reader.alternatives)} ('raw' reads adata.raw)."
        ) from err
    if input_kind == "log1p_cpm":
        sample = sample.copy()
        np.expm1(sample.data, out=sample.data)
    found = gene_index >= 0
    total = float(sample.sum())
    captured = float(sample[:, gene_index[found]].sum()) if found.any() else 0.0
    coverage = GeneCoverage(len(model.genes), int(found.sum()), captured / max(total, 1e-12))
    if coverage.gene_fraction < min_gene_overlap:
        raise ValueError(
            f"Only {coverage.n_found} of {coverage.n_model_genes} model genes "
            f"({coverage.gene_fraction:.1%}) are in {reader.location} (minimum "
            f"{min_gene_overlap:.0%}): {_likely_cause(reader.var_names, model, min_gene_overlap)}. "
            "Lower --min-gene-overlap (min_gene_overlap in Python) to proceed anyway."
        )
    rows = aligned_block_rows(reader.chunk_rows, block_rows)
    bounds = block_bounds(reader.n_obs, rows)
    return BlockPlan(bounds, gene_index, input_kind, coverage, reader.location)


class BlockEncoder:
    """Turns CSR blocks into the model's dense input.

    The total of each cell is taken over all its genes; log1p(CPM) input is
    turned back into counts per million. The model's genes are taken out of the
    block by scipy's compiled CSR column indexing (O(nnz), 4x faster here than
    scattering the stored values with numpy), then densified; genes the store
    lacks stay zero. For a model that reads log1p(CPM), the normalisation runs
    on the stored values only: over the dense block it took as long as the
    model's first layer.
    """

    def __init__(self, plan: BlockPlan) -> None:
        self.plan = plan
        found = plan.gene_index >= 0
        self.columns = plan.gene_index[found]
        self.positions = None if found.all() else np.flatnonzero(found)

    def _counts(self, block: sparse.csr_matrix) -> tuple[sparse.csr_matrix, np.ndarray]:
        """The block's counts restricted to the model's genes, and each cell's total."""
        block = sparse.csr_matrix(block, dtype=np.float32)
        if self.plan.input_kind == "log1p_cpm":
            block = block.copy()
            np.expm1(block.data, out=block.data)
        total = np.asarray(block.sum(axis=1), dtype=np.float32).ravel()
        return block[:, self.columns], total

    def _densify(self, selected: sparse.csr_matrix) -> np.ndarray:
        if self.positions is None:
            return selected.toarray()
        dense = np.zeros((selected.shape[0], len(self.plan.gene_index)), dtype=np.float32)
        dense[:, self.positions] = selected.toarray()
        return dense

    def encode(self, block: sparse.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """Return (dense counts in the model's gene order, each cell's total)."""
        selected, total = self._counts(block)
        return self._densify(selected), total

    def encode_log1p_cpm(
        self, block: sparse.csr_matrix, target_sum: float = TARGET_SUM
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return (log1p(CPM) in the model's gene order, the CPM over all genes; each total)."""
        selected, total = self._counts(block)
        scale = (target_sum / np.maximum(total, 1e-12)).astype(np.float32)
        selected.data *= np.repeat(scale, np.diff(selected.indptr))
        np.log1p(selected.data, out=selected.data)
        return self._densify(selected), total

    def inputs(self, model: OnnxModel, block: sparse.csr_matrix, start: int = 0) -> ModelInputs:
        """The model's input for the block of rows from ``start``, every value checked.

        Raises
        ------
        InvalidCells
            See :func:`check_values`.
        """
        check_values(block, self.plan.input_kind, start, self.plan.location)
        if model.input_mode == "counts":
            x, total = self.encode(block)
            return ModelInputs(x, total, ~x.any(axis=1))
        x, _ = self.encode_log1p_cpm(block, model.target_sum)
        return ModelInputs(x, None, ~x.any(axis=1))

    def run(
        self, model: OnnxModel, block: sparse.csr_matrix, start: int = 0
    ) -> dict[str, np.ndarray]:
        """Classify one block: predictions, confidences, embeddings, probabilities, empty
        cells and, where the model has it, the novelty score."""
        return classify_block(model, self.inputs(model, block, start))


def classify_block(model: OnnxModel, inputs: ModelInputs) -> dict[str, np.ndarray]:
    """Run the model on a block's inputs (see :meth:`BlockEncoder.inputs`)."""
    out = model.run(inputs.x, total_counts=inputs.total)
    result = {
        "predicted": out.predicted_class.astype(np.int32),
        "confidence": out.probabilities.max(axis=1).astype(np.float32),
        "embedding": out.embedding.astype(np.float32),
        "probabilities": out.probabilities.astype(np.float32),
        "empty": inputs.empty,
    }
    if out.novelty is not None:
        result["novelty"] = out.novelty.astype(np.float32)
    return result
