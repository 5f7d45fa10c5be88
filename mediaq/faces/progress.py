"""Progress bars: ``tqdm.auto`` (a widget in Jupyter, text in a terminal), quiet in logs.

In a terminal or a notebook a bar redraws as often as it is told. When stderr is neither (a CI log, a
file, ``nohup``), every redraw becomes another line, so there it redraws at most every
:data:`LOG_INTERVAL` seconds (and once more when it closes).

>>> bar = progress_bar(total=3, desc="demo", disable=True)
>>> bar.update(3); bar.close()
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["LOG_INTERVAL", "progress_bar"]

LOG_INTERVAL = 10.0  # seconds between lines when the bar goes to a log rather than a terminal


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def progress_bar(total: int | None = None, desc: str = "", unit: str = "job", **options: Any) -> Any:
    """A ``tqdm.auto.tqdm`` bar; ``options`` go to tqdm (``disable``, ``leave``...)."""
    from tqdm.auto import tqdm

    if not _in_notebook() and not getattr(sys.stderr, "isatty", lambda: False)():
        options.setdefault("mininterval", LOG_INTERVAL)
    return tqdm(total=total, desc=desc, unit=unit, **options)


class TqdmProgress:
    """A :class:`~mediaq.client.base.ProgressView` drawn by a ``tqdm.auto`` bar (see :func:`progress_bar`).

    >>> view = TqdmProgress(progress_bar(desc="demo", disable=True))
    >>> view.show(3, 10, failed=1, running=2); view.close()
    """

    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def show(self, done: int, total: int | None, **info: Any) -> None:
        bar = self.bar
        if total is not None:
            bar.total = total
        if info:
            bar.set_postfix(refresh=False, **info)
        bar.update(done - bar.n)  # redraws unless it drew less than mininterval ago

    def note(self, text: str | None) -> None:
        self.bar.set_description_str(self.bar.desc.split(" · ")[0] + (f" · {text}" if text else ""))

    def close(self) -> None:
        self.bar.close()
