"""Blocks classified on a Dask cluster of separate processes (``--scheduler tcp://...``).

A ``dask scheduler`` and two ``dask worker`` processes are started here, on
127.0.0.1, as a user would start them on a cluster; the results equal the
single-process run's.
"""

from __future__ import annotations

import subprocess
import sys
import time

import anndata
import numpy as np
import pandas as pd
import pytest
from scnym.infer import annotate
from sources import free_port, write_soma

pytest.importorskip("dask.distributed")


def _wait_for_workers(address: str, n: int, timeout: float = 90) -> None:
    from dask.distributed import Client

    deadline = time.monotonic() + timeout
    while True:  # the scheduler may not listen yet
        try:
            with Client(address, timeout=5) as client:
                client.wait_for_workers(n, timeout=max(deadline - time.monotonic(), 1))
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture(scope="module")
def scheduler():
    """The address of a scheduler with two single-threaded worker processes."""
    address = f"tcp://127.0.0.1:{free_port()}"
    cli = [sys.executable, "-m"]
    processes = [
        subprocess.Popen(
            [
                *cli,
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                address.rsplit(":", 1)[1],
                "--no-dashboard",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
    ]
    try:
        for _ in range(2):
            processes.append(subprocess.Popen(
                [*cli, "distributed.cli.dask_worker", address, "--nworkers", "1", "--nthreads",
                 "1", "--no-nanny", "--host", "127.0.0.1", "--no-dashboard"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
        _wait_for_workers(address, 2)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in reversed(processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _workers_used(address: str) -> set[str]:
    """The workers that ran a block (each keeps its opened stores in its module)."""
    from dask.distributed import Client

    def opened():
        import scnym.infer.distributed as distributed

        return len(distributed._OPENED)

    with Client(address) as client:
        return {worker for worker, n in client.run(opened).items() if n}


def test_zarr_on_two_worker_processes_equals_one_process(query, onnx_model, tmp_path, scheduler):
    single, dist = tmp_path / "single.zarr", tmp_path / "dist.zarr"
    query.write_zarr(single, chunks=(25, query.n_vars))
    query.write_zarr(dist, chunks=(25, query.n_vars))
    annotate(single, onnx_model, batch_size=25, progress=False)
    annotate(dist, onnx_model, batch_size=25, scheduler=scheduler, write_probabilities=True,
             progress=False)  # fmt: skip
    assert len(_workers_used(scheduler)) == 2
    a, b = anndata.read_zarr(single), anndata.read_zarr(dist)
    np.testing.assert_array_equal(a.obs["scNym"], b.obs["scNym"])
    np.testing.assert_array_equal(a.obs["scNym_confidence"], b.obs["scNym_confidence"])
    np.testing.assert_array_equal(a.obsm["X_scnym"], b.obsm["X_scnym"])
    assert b.obsm["scNym_probabilities"].shape == (query.n_obs, 3)


def test_soma_on_two_worker_processes_equals_one_process(query, onnx_model, tmp_path, scheduler):
    pytest.importorskip("tiledbsoma")

    experiment = write_soma(query, tmp_path / "soma")
    options = {"gene_key": "feature_name", "obs_filter": "domain == 'target'", "batch_size": 10,
               "progress": False}  # fmt: skip
    annotate(experiment, onnx_model, output=tmp_path / "single.parquet", **options)
    annotate(experiment, onnx_model, output=tmp_path / "dist.parquet", scheduler=scheduler,
             **options)  # fmt: skip
    a, b = pd.read_parquet(tmp_path / "single.parquet"), pd.read_parquet(tmp_path / "dist.parquet")
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == int((query.obs["domain"] == "target").sum())
