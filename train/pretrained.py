"""Registry models and reference atlases on the user API side.

:func:`get_pretrained_weights` resolves a registry model name to its verified
ONNX file; :func:`atlas2target` joins a registry reference atlas with the
user's cells for training. The registry itself is :mod:`scnym.models`.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import TYPE_CHECKING

import anndata
import pandas as pd
from scnym.infer.preprocessing import check_unique_genes, to_log1p_cpm

from .labels import UNLABELED_TOKEN

if TYPE_CHECKING:
    from scnym.models import RegistryEntry

logger = logging.getLogger(__name__)

#: obs column of ``atlas2target``'s joint object telling atlas cells from target cells.
DATASET_KEY = "scNym_dataset"
#: uns key of ``atlas2target``'s record of the atlas used.
ATLAS_KEY = "scNym_atlas"
#: Fewer shared genes than this between an atlas and the target data raises a warning.
FEW_GENES = 100


def is_registry_model(name: str) -> bool:
    """Whether ``name`` names a model of the registry (``pretrained_*`` always counts)."""
    if name.startswith("pretrained_"):
        return True
    if "/" in name or os.sep in name:
        return False
    from scnym.models import load_registry

    return load_registry().find(name, kind="model") is not None


def get_pretrained_weights(trained_model: str, out_path: str = "./scnym_outputs") -> str:
    """Resolve a registry model name to its verified ONNX file.

    Unlike scNym 0.3.2, which downloaded a torch state dict into ``out_path``,
    registry models are ONNX files written by ``scnym export``: shipped with
    scnym or downloaded once into the cache (``$SCNYM_CACHE``, default
    ``~/.cache/scnym``), and checked against the registry's sha256 before use.
    Pass the returned path (or the name itself) as ``trained_model`` to predict.

    Parameters
    ----------
    trained_model
        A registry model name or alias; ``'pretrained_{species}'`` finds the
        first model of that species (``scnym models list``).
    out_path
        Accepted for compatibility with 0.3.2; nothing is written there.

    Returns
    -------
    The path of the verified ``.onnx`` file.

    Raises
    ------
    scnym.models.RegistryError
        For an unknown name (the message lists the models), or a download that
        fails (the message lists the models available offline).
    scnym.models.ChecksumError
        When the file differs from the registry's sha256.
    """
    from scnym.models import resolve

    return str(resolve(trained_model, kind="model"))


def _reference(atlas: anndata.AnnData, entry: RegistryEntry, key_added: str) -> anndata.AnnData:
    """The atlas as log1p(CPM), its labels in ``obs[key_added]``."""
    if entry.label_key not in atlas.obs.columns:
        raise ValueError(
            f"Atlas {entry.name!r} has no obs column {entry.label_key!r} (registry label_key)"
        )
    check_unique_genes(atlas.var_names)
    reference = anndata.AnnData(
        X=to_log1p_cpm(atlas.X)[0], obs=atlas.obs.copy(), var=atlas.var.copy()
    )
    reference.obs[key_added] = atlas.obs[entry.label_key].astype(str).to_numpy()
    reference.obs[DATASET_KEY] = "atlas_reference"
    return reference


def _target(adata: anndata.AnnData, key_added: str) -> tuple[anndata.AnnData, str]:
    """The user's cells as log1p(CPM), all unlabeled; and what ``adata.X`` held."""
    target_X, target_kind = to_log1p_cpm(adata.X)  # library size over all genes of each cell
    target = anndata.AnnData(X=target_X, obs=adata.obs.copy(), var=adata.var.copy())
    target.obs[key_added] = UNLABELED_TOKEN
    target.obs[DATASET_KEY] = "target"
    return target, target_kind


def _shared_genes(
    reference: anndata.AnnData,
    target: anndata.AnnData,
    entry: RegistryEntry,
    atlas: anndata.AnnData,
    adata: anndata.AnnData,
) -> pd.Index:
    """The atlas genes that are in ``adata`` too; none raises, few warn."""
    shared = reference.var_names[reference.var_names.isin(target.var_names)]
    if len(shared) == 0:
        raise RuntimeError(
            f"The atlas {entry.name!r} ({entry.species}, {entry.gene_id_type} gene ids, e.g. "
            f"{list(atlas.var_names[:3])}) shares no genes with adata (e.g. "
            f"{list(adata.var_names[:3])}): check the species and the gene identifiers."
        )
    if len(shared) < FEW_GENES:
        warnings.warn(
            f"Only {len(shared)} genes are shared between the atlas {entry.name!r} and adata; "
            "annotations from so few genes are unreliable.",
            stacklevel=3,  # the caller of atlas2target
        )
    logger.info(
        "atlas2target: %d of %d atlas genes are in adata (%d genes)",
        len(shared), atlas.n_vars, adata.n_vars,
    )  # fmt: skip
    return shared


def atlas2target(
    adata: anndata.AnnData, species: str, key_added: str = "annotations"
) -> anndata.AnnData:
    """Join a registry reference atlas with ``adata``, ready to train on both.

    Atlas cells keep their labels in ``obs[key_added]``; the cells of ``adata``
    get ``'Unlabeled'`` (the target). ``obs['scNym_dataset']`` tells them apart
    (``'atlas_reference'`` / ``'target'``); obs names get a ``-atlas_reference``
    / ``-target`` suffix. Only the genes the two share are kept. ``X`` is
    log1p(CPM) throughout: raw counts of ``adata`` are normalised over all of
    each cell's genes before the gene subset. Other ``obs`` columns of both are
    kept (missing values NaN), as 0.3.2's ``AnnData.concatenate`` did. ``adata``
    itself is left untouched (0.3.2 wrote the two columns into it).

    Parameters
    ----------
    adata
        The target cells (raw counts or log1p(CPM)), unique gene names.
    species
        ``'human'``, ... (the registry atlas aliased ``atlas_{species}``, else the
        first atlas of that species), or the name of a registry atlas.
    key_added
        ``obs`` column of the labels (pass it as ``groupby`` to train).

    Returns
    -------
    The joint AnnData (atlas cells first); ``uns['scNym_atlas']`` records the
    atlas, its sha256 and the gene overlap.

    Raises
    ------
    scnym.models.RegistryError
        For a species or name without an atlas in the registry.
    ValueError
        For duplicate gene names or data that is neither counts nor log1p(CPM).
    RuntimeError
        When the atlas and ``adata`` share no genes.

    Examples
    --------
    >>> joint = atlas2target(adata, species="human")  # doctest: +SKIP
    >>> scnym_api(joint, task="train", groupby="annotations",
    ...           domain_groupby="scNym_dataset", out_path="model")  # doctest: +SKIP
    """
    from scnym.models import load_registry, resolve

    registry = load_registry()
    entry = registry.find(species, kind="atlas") or registry.get(f"atlas_{species}", "atlas")
    check_unique_genes(adata.var_names)
    atlas = anndata.read_h5ad(resolve(entry.name, registry, kind="atlas"))
    reference = _reference(atlas, entry, key_added)
    target, target_kind = _target(adata, key_added)
    shared = _shared_genes(reference, target, entry, atlas, adata)
    # Both parts hold the same genes in the same order, so the outer join keeps
    # the obs columns of both while the genes are the intersection.
    joint = anndata.concat(
        {"atlas_reference": reference[:, shared], "target": target[:, shared]},
        join="outer",
        index_unique="-",
        merge="same",
    )
    for key in (key_added, DATASET_KEY):
        joint.obs[key] = pd.Categorical(joint.obs[key].astype(str))
    joint.uns[ATLAS_KEY] = {
        "name": entry.name,
        "file": str(entry.file),
        "sha256": entry.sha256,
        "label_key": entry.label_key,
        "n_shared_genes": len(shared),
        "n_atlas_genes": int(atlas.n_vars),
        "n_target_genes": int(adata.n_vars),
        "target_input": target_kind,
    }
    return joint
