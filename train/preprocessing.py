"""Input checks and normalisation, kept importable as ``scnym.preprocessing``.

They are torch-free and live in :mod:`scnym.infer.preprocessing`, where
training, export and annotation all read them.
"""

from scnym.infer.preprocessing import (  # noqa: F401
    LOG1P_CPM_MAX,
    NORMALIZE_HINT,
    TARGET_SUM,
    InputKind,
    __all__,
    align_genes,
    check_unique_genes,
    detect_input_kind,
    gene_index_map,
    log1p_cpm,
    to_log1p_cpm,
)
