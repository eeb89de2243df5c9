"""Stores read through the S3 protocol: a local S3 service (moto's server mode) on 127.0.0.1.

Credentials and the endpoint come from the standard AWS environment variables,
as they would for a user: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION`` and ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import logging

import anndata
import numpy as np
import pytest
from scnym.infer import annotate
from sources import assert_same_results, free_port, write_soma

s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto.server")
BUCKET = "scnym-test"


@pytest.fixture(scope="module")
def s3_endpoint():
    """A local S3 service for this module's tests; its URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture()
def s3(s3_endpoint, monkeypatch):
    """An s3fs filesystem on the local service with a bucket, the AWS variables set."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_endpoint,
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    s3fs.S3FileSystem.clear_instance_cache()  # instances keep the endpoint they were made with
    fs = s3fs.S3FileSystem()
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    yield fs
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.parametrize("kind", ["zarr", "h5ad"])
def test_store_on_s3_equals_the_local_run(query, onnx_model, tmp_path, s3, kind):
    local = tmp_path / f"q.{kind}"
    if kind == "zarr":
        query.write_zarr(local, chunks=(50, query.n_vars))
    else:
        query.write_h5ad(local)
    key = f"{BUCKET}/{tmp_path.name}/q.{kind}"
    s3.put(str(local), key, recursive=kind == "zarr")
    before = {path: s3.info(path)["ETag"] for path in s3.find(key)}
    url = f"s3://{key}"
    with pytest.raises(ValueError, match="pass --output"):
        annotate(url, onnx_model, progress=False)
    remote = annotate(url, onnx_model, output=tmp_path / "remote.zarr", batch_size=50,
                      progress=False)  # fmt: skip
    here = annotate(local, onnx_model, output=tmp_path / "local.zarr", batch_size=50,
                    progress=False)  # fmt: skip
    assert {path: s3.info(path)["ETag"] for path in s3.find(key)} == before  # not written
    np.testing.assert_array_equal(remote.labels, here.labels)
    assert_same_results(*(anndata.read_zarr(tmp_path / f"{n}.zarr") for n in ("remote", "local")))


def test_soma_experiment_on_s3(query, onnx_model, tmp_path, s3):
    pytest.importorskip("tiledbsoma")

    local = write_soma(query, tmp_path / "soma")
    key = f"{BUCKET}/{tmp_path.name}/soma"
    s3.put(local, key, recursive=True)
    options = {"gene_key": "feature_name", "obs_filter": "domain == 'target'", "batch_size": 30,
               "progress": False}  # fmt: skip
    remote = annotate(f"s3://{key}", onnx_model, output=tmp_path / "remote.zarr", **options)
    here = annotate(local, onnx_model, output=tmp_path / "local.zarr", **options)
    np.testing.assert_array_equal(remote.labels, here.labels)
    assert_same_results(*(anndata.read_zarr(tmp_path / f"{n}.zarr") for n in ("remote", "local")))
