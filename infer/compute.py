"""Classify every unfinished block of a plan in this process, saving each into the partial results.

The next blocks are read and encoded in background threads while onnxruntime
runs the current one, and the previous block's results are saved in another:
numpy, scipy, zarr's codecs and onnxruntime release the GIL, so reading,
decompressing and classifying share the cores. :mod:`.distributed` does the
same over a Dask cluster.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm

from .blocks import BlockEncoder, BlockPlan, ModelInputs, classify_block
from .model import OnnxModel
from .partial import PartialResults
from .store import StoreReader

#: Blocks read and encoded ahead, each in its own thread: with two, decompressing
#: a zarr store uses both cores while onnxruntime waits (100k Kang cells, median of
#: 4: 7.0 vs 7.8 s from zarr, 5.6 vs 6.0 s from h5ad).
READ_AHEAD = 2


def progress_bar(
    bounds: list[tuple[int, int]], todo: list[tuple[int, int]], desc: str, progress: bool
) -> tqdm:
    """A bar in cells, starting at the cells of the blocks already done."""
    total = sum(b - a for a, b in bounds)
    return tqdm(
        total=total, initial=total - sum(b - a for a, b in todo), unit="cells", unit_scale=True,
        desc=desc, disable=not progress, smoothing=0.1,
    )  # fmt: skip


def compute_blocks(
    reader: StoreReader,
    model: OnnxModel,
    plan: BlockPlan,
    partial: PartialResults,
    progress: bool = True,
) -> None:
    """Classify every block not yet in ``partial``.

    The next blocks are read and encoded (``READ_AHEAD`` at a time), and the
    previous block's results saved, in background threads while onnxruntime runs
    the current block (numpy, scipy, zarr's codecs and onnxruntime release the
    GIL); the blocks in flight are few, so memory stays bounded by the block size.
    """
    todo = partial.missing(plan.bounds)
    bar = progress_bar(plan.bounds, todo, "Annotating", progress)
    if not todo:
        bar.close()
        return
    encoder = BlockEncoder(plan)

    def prepare(start: int, stop: int) -> ModelInputs:
        return encoder.inputs(model, reader.read_rows(start, stop), start)

    ahead = READ_AHEAD
    with ThreadPoolExecutor(ahead) as reads, ThreadPoolExecutor(max_workers=1) as saves:
        pending = deque(reads.submit(prepare, *bounds) for bounds in todo[:ahead])
        saving = None
        for i, (start, stop) in enumerate(todo):
            inputs = pending.popleft().result()
            if i + ahead < len(todo):
                pending.append(reads.submit(prepare, *todo[i + ahead]))
            result = classify_block(model, inputs)
            if saving is not None:
                saving.result()  # raises a failed save here, before more work is done
            saving = saves.submit(partial.save, start, result)
            bar.update(stop - start)
        saving.result()
    bar.close()
