"""The faces' views for a client: tqdm progress bars and the ipywidgets dashboard.

:func:`mediaq.connect` gives every client these, so ``batch.wait(progress=True)`` draws a bar (a
widget in Jupyter, text in a terminal) and ``batch.dashboard()`` opens the live dashboard.
"""

from __future__ import annotations

from typing import Any

from mediaq.client.base import ProgressView, Views
from mediaq.faces.progress import TqdmProgress, progress_bar
from mediaq.faces.render import short_label

__all__ = ["FaceViews"]


class FaceViews(Views):
    """Progress as ``tqdm.auto`` bars, dashboards as :class:`mediaq.faces.widgets.Dashboard`."""

    def progress(self, total: int | None, desc: str, unit: str = "job") -> ProgressView:
        return TqdmProgress(progress_bar(total=total, desc=short_label(desc), unit=unit))

    def dashboard(self, client: Any, batch: Any = None, **options: Any) -> Any:
        from mediaq.faces.widgets import Dashboard

        return Dashboard(client, batch, **options)
