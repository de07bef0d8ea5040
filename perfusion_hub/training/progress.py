"""How a training run reports: messages and per-step progress (a rich bar, or nothing)."""

from __future__ import annotations

from typing import Protocol

from rich.console import Console
from rich.progress import Progress

from perfusion_hub.progress import progress_bar


class Reporter(Protocol):
    """Receives what a run has to say; `Hub.train` defaults to `SilentReporter`."""

    def message(self, text: str) -> None: ...

    def start(self, total: int, completed: int) -> None: ...

    def advance(self, step: int, loss: float) -> None: ...

    def stop(self) -> None: ...


class SilentReporter:
    """Says nothing."""

    def message(self, text: str) -> None:
        pass

    def start(self, total: int, completed: int) -> None:
        pass

    def advance(self, step: int, loss: float) -> None:
        pass

    def stop(self) -> None:
        pass


class RichReporter:
    """Messages on the console, and a bar with step, loss and time left while training."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._task = 0

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def start(self, total: int, completed: int) -> None:
        self._progress = progress_bar("training", "loss {task.fields[loss]}",
                                      console=self.console)
        self._task = self._progress.add_task("train", total=total, completed=completed, loss="-")
        self._progress.start()

    def advance(self, step: int, loss: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, loss=f"{loss:.4f}")

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
