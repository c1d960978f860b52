"""Progress on stderr: a tqdm bar on a terminal, a line per LOG_STEP_PERCENT % in a log (stderr
not a terminal: a file or a pipe would otherwise hold every redraw of the bar); nothing with
`set_quiet(True)` (the --quiet flag)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm

_QUIET = False
LOG_STEP_PERCENT = 10  # a log gets a line each time this much more of the work is done


def set_quiet(quiet: bool) -> None:
    global _QUIET
    _QUIET = quiet


class LineProgress:
    """tqdm's interface as used here (iterate, `update`, `set_postfix`, `close`, `with`), for
    logs: one line `desc: 40% (4/10 round, 12 s) val_acc=0.81` per LOG_STEP_PERCENT %."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        desc: str | None = None,
        total: float | None = None,
        unit: str = "it",
        initial: float = 0,
        **_: Any,
    ) -> None:
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.desc, self.total, self.unit = iterable, desc or "progress", total, unit
        self.n = initial
        self.postfix = ""
        self.start = time.monotonic()
        self.shown = self._percent() // LOG_STEP_PERCENT  # steps already shown (or resumed)

    def _percent(self) -> int:
        return int(100 * self.n / self.total) if self.total else 0

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update(1)

    def update(self, n: float = 1) -> None:
        self.n += n
        step = self._percent() // LOG_STEP_PERCENT
        if step > self.shown:
            self.shown = step
            n_text = f"{self.n:g}/{self.total:g} {self.unit}"
            elapsed = time.monotonic() - self.start
            line = f"{self.desc}: {self._percent()}% ({n_text}, {elapsed:.0f} s){self.postfix}"
            print(line, file=sys.stderr, flush=True)

    def set_postfix(self, values: dict[str, Any]) -> None:
        self.postfix = "".join(f" {k}={v}" for k, v in values.items())

    def close(self) -> None:
        pass

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def on_terminal() -> bool:
    """Whether stderr is a terminal (where a redrawn bar makes sense)."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def progress(iterable: Iterable | None = None, **kwargs: Any) -> tqdm | LineProgress:
    """A tqdm bar on a terminal, a LineProgress in a log; silent under --quiet or
    `disable=True`."""
    disable = kwargs.pop("disable", False)
    if _QUIET or disable:
        return tqdm(iterable, disable=True, **kwargs)
    if not on_terminal():
        return LineProgress(iterable, **kwargs)
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("mininterval", 0.5)
    return tqdm(iterable, **kwargs)
