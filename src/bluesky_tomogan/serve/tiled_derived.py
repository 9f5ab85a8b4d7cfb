"""Write the worker's derived streams into the run that the RunEngine host stores in Tiled.

In the split deployment the RunEngine host keeps storing its raw run with its
own ``TiledWriter`` (so raw data are complete whatever happens to the worker),
and the denoising worker adds its streams (``denoised``, ``reconstruction``...)
to that same run container. This is bluesky's own per-run Tiled writer
(``bluesky.callbacks.tiled_writer._RunWriter``, the class ``TiledWriter``
routes each run to) with two changes: ``start`` attaches to the existing run
instead of creating it, and ``stop`` flushes the derived streams and records
the worker's summary on them, leaving the run's own ``stop`` metadata to the
writer that owns it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import event_model

__all__ = ["DerivedStreamsWriter", "record_on_run"]

log = logging.getLogger(__name__)
#: The metadata key under which the worker records what it did (and did not do) to a run.
SUMMARY_KEY = "bluesky_tomogan"


class DerivedStreamsWriter:
    """A ``TiledWriter`` for derived documents of runs that another writer stores.

    Parameters
    ----------
    client : tiled client
        Where the runs are (the same server the RunEngine host writes to).
    attach_timeout : float
        Seconds to wait for a run to appear in Tiled (the host's writer creates
        it when the start document arrives there).
    """

    def __init__(self, client: Any, *, attach_timeout: float = 30.0) -> None:
        self.client = client.include_data_sources()
        self.attach_timeout = attach_timeout
        _attached_writer_class()  # fail at start-up, not at the first run, if bluesky changed
        self._router = event_model.RunRouter([self._factory])

    def _factory(self, name: str, doc: Any) -> tuple[list[Any], list[Any]]:
        # batch_size=1: every row is in Tiled as soon as it is made, so a killed worker loses nothing it wrote
        return [_attached_writer_class()(self.client, self.attach_timeout)], []

    def __call__(self, name: str, doc: Any) -> None:
        self._router(name, doc)


_CLASS: Any = None


def _attached_writer_class() -> Any:
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    import bluesky
    from bluesky.callbacks import tiled_writer

    # bluesky has no public "append to a run another writer owns"; these private parts are
    # what this subclass uses, checked here so that a bluesky that renamed them is a clear error.
    needed = ("_write_internal_data", "_write_external_data", "descriptor", "event")
    base = getattr(tiled_writer, "_RunWriter", None)
    missing = [n for n in needed if base is not None and not hasattr(base, n)]
    if base is None or missing:
        raise ImportError(f"bluesky {bluesky.__version__} lacks bluesky.callbacks.tiled_writer._RunWriter"
                          f"{'.' + ', '.join(missing) if missing else ''}, which the derived-streams writer "
                          "extends (tested with bluesky 1.14-1.15); pin bluesky to that range")
    _RunWriter = base

    class AttachedRunWriter(_RunWriter):  # type: ignore[misc,valid-type]
        def __init__(self, client: Any, attach_timeout: float) -> None:
            super().__init__(client, batch_size=1)
            self.attach_timeout = attach_timeout
            self.derived: dict[str, int] = {}

        def start(self, doc: Any) -> None:
            self.root_node = wait_for_run(self.client, doc["uid"], self.attach_timeout)
            self.access_tags = None

        def descriptor(self, doc: Any) -> None:
            super().descriptor(doc)
            self.derived.setdefault(doc["name"], 0)

        def event(self, doc: Any) -> Any:
            super().event(doc)
            name = self._desc_nodes[doc["descriptor"]].item["id"]
            self.derived[name] = self.derived.get(name, 0) + 1
            return doc

        def stop(self, doc: Any) -> None:
            for desc_name, cache in self._internal_data_cache.items():
                if cache:
                    self._write_internal_data(cache, desc_node=self._desc_nodes[desc_name])
                    cache.clear()
            for stream_datum in self._external_data_cache.values():
                self._write_external_data(stream_datum)
            summary = {"rows": dict(self.derived), "reason": doc.get("reason", ""),
                       "num_events": {k: v for k, v in (doc.get("num_events") or {}).items() if k in self.derived}}
            for name in self.derived:
                node = self._desc_nodes[name]
                node.update_metadata(metadata={**dict(node.metadata), SUMMARY_KEY: summary}, drop_revision=True)

    _CLASS = AttachedRunWriter
    return _CLASS


def wait_for_run(client: Any, uid: str, timeout: float) -> Any:
    """The run container ``uid``, waiting up to ``timeout`` s for its writer to create it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client[uid]
        except KeyError:
            if time.monotonic() >= deadline:
                raise LookupError(f"run {uid} did not appear in Tiled within {timeout} s: is the RunEngine "
                                  "host storing it (TiledWriter), and to the same server?") from None
            time.sleep(0.2)


def record_on_run(client: Any, uid: str, record: dict[str, Any]) -> None:
    """Merge ``record`` into the run's ``bluesky_tomogan`` metadata (read fresh, so nothing else is lost)."""
    node = client[uid]
    metadata = dict(node.metadata)
    merged = {**dict(metadata.get(SUMMARY_KEY) or {}), **record}
    node.update_metadata(metadata={**metadata, SUMMARY_KEY: merged}, drop_revision=True)
