"""A progress bar for scans: one tick per event of the ``primary`` stream."""

from __future__ import annotations

from typing import Any

import event_model
from event_model.documents import EventDescriptor, EventPage, RunStart, RunStop

__all__ = ["ScanProgress"]


class ScanProgress(event_model.DocumentRouter):
    """Show a tqdm bar while a run takes its points (``num_points`` from the start document).

    Subscribe it to the RunEngine (``RE.subscribe(ScanProgress())``). It only
    draws (on stderr) and passes documents on unchanged. By default it draws only on a
    terminal or in a notebook, as tqdm's ``disable=None`` does: a queue server's worker or
    a scan whose output goes to a log file would otherwise get a line per frame.

    Parameters
    ----------
    stream : str
        The stream whose events are counted.
    file : file-like, optional
        Where to draw (default: stderr).
    disable : bool or None
        ``None``: draw only where ``file`` is a terminal (or in a notebook); ``False``: always.
    """

    def __init__(self, stream: str = "primary", *, file: Any = None, disable: bool | None = None) -> None:
        super().__init__()
        self.stream = stream
        self.file, self.disable = file, disable
        self._bar: Any = None
        self._descriptors: set[str] = set()

    def start(self, doc: RunStart) -> RunStart:
        from tqdm.auto import tqdm

        self._close()
        self._descriptors = set()
        self._bar = tqdm(total=doc.get("num_points"), desc=str(doc.get("plan_name", "scan")), unit="frame",
                         file=self.file, disable=self.disable)
        return doc

    def descriptor(self, doc: EventDescriptor) -> EventDescriptor:
        if doc.get("name") == self.stream:
            self._descriptors.add(doc["uid"])
        return doc

    def event_page(self, doc: EventPage) -> EventPage:
        if self._bar is not None and doc["descriptor"] in self._descriptors:
            self._bar.update(len(doc["seq_num"]))
        return doc

    def stop(self, doc: RunStop) -> RunStop:
        self._close()
        return doc

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
