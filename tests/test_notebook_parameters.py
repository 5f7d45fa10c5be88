"""The notebooks' papermill parameters work: notebook 03 on a MovieLens-layout file (other column names,
half stars 0.5..5), run by papermill in a real kernel against a real server and worker."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def test_rating_experiments_run_on_movielens_ratings(settings, tmp_path, monkeypatch):
    import papermill
    for key in [k for k in os.environ if k.startswith("MEDIAQ_")]:
        monkeypatch.delenv(key)
    env = {"MEDIAQ_REDIS_URL": settings.redis_url, "MEDIAQ_STATE_DIR": str(settings.state_dir),
           "MEDIAQ_STORAGE": str(tmp_path / "media"), "MEDIAQ_RATINGS_URL": f"sqlite:///{tmp_path}/ml.sqlite3",
           "MEDIAQ_QUEUE_DB": str(settings.queue_db), "MEDIAQ_CACHE_DB": str(settings.cache_db),
           "MPLBACKEND": "agg"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "03-movielens.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / "03_rating_experiments.ipynb"), str(out), cwd=str(NOTEBOOKS), kernel_name="python3",
        progress_bar=False, log_output=False, stdout_file=sys.stderr,
        parameters={"RATINGS_CSV": str(ROOT / "data" / "movielens_sample.csv"),
                    "COLUMNS": {"movieId": "image_id", "userId": "user_id", "rating": "score"},
                    "SCALE": [0.5, 5, 0.5], "TOP_N": 10})
    text = "\n".join(
        "".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
        for c in json.loads(out.read_text())["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))
    assert "loaded 600 ratings" in text and "scores: 0.5..5 in steps of 0.5" in text
    assert "same Bayesian ratings (to 1e-9): True" in text
    assert "worker exit code: 0" in text
