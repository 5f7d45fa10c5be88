"""The notebooks with their storage in S3 (moto's server on loopback), run for real with papermill: the
quickstart reading its images from a bucket prefix and writing thumbnails there, and the bulk reindex
writing every output to the bucket."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
DATA = NOTEBOOKS.parent / "data"


@pytest.mark.parametrize("notebook", ["01_quickstart.ipynb", "02_bulk_reindex.ipynb"])
def test_notebook_with_storage_in_s3(notebook, s3, settings, monkeypatch, tmp_path):
    papermill = pytest.importorskip("papermill")
    bucket = s3.new_bucket("nb")
    params: dict[str, object] = {"STORAGE": f"s3://{bucket}/media"}
    if notebook.startswith("01"):
        for path in DATA.glob("*.jpg"):
            s3.boto3().put_object(Bucket=bucket, Key=f"originals/{path.name}", Body=path.read_bytes())
        params["DATA_DIR"] = f"s3://{bucket}/originals/"
    # the kernel (and the worker it starts) gets the session's Redis and the S3 server's variables
    monkeypatch.setenv("MEDIAQ_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("MEDIAQ_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("MEDIAQ_RATINGS_URL", f"sqlite:///{tmp_path / 'ratings.sqlite3'}")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    papermill.execute_notebook(str(NOTEBOOKS / notebook), str(tmp_path / notebook), parameters=params,
                               cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False,
                               execution_timeout=180)
    listed = s3.boto3().list_objects_v2(Bucket=bucket, Prefix="media/")
    folders = {o["Key"].split("/")[1] for o in listed.get("Contents", [])}
    assert "thumbs" in folders, listed
    if notebook.startswith("01"):
        thumbs = {o["Key"] for o in listed["Contents"] if o["Key"].startswith("media/thumbs/")}
        assert thumbs == {f"media/thumbs/{p.name}.jpg" for p in DATA.glob("*.jpg")}
    else:
        assert {"thumbs", "medium"} <= folders
