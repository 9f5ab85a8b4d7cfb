"""Write the worker's derived streams into the run that the RunEngine host stores in Tiled.

In the split deployment the RunEngine host keeps storing its raw run with its
own ``TiledWriter`` (so raw data are complete whatever happens to the worker),
and the denoising worker adds its streams (``denoised``, ``reconstruction``...)
to that same run container. This is bluesky-tiled-plugins' per-run Tiled writer
(``bluesky_tiled_plugins.writing.tiled_writer._RunWriter``, the class its
``TiledWriter`` routes each run to; bluesky 1.14-1.15 carried the same class as
``bluesky.callbacks.tiled_writer._RunWriter``) with two changes: ``start``
attaches to the existing run instead of creating it, and ``stop`` flushes the
derived streams, records the worker's summary on them and closes their Tiled
streams, leaving the run's own ``stop`` metadata and stream to the writer that
owns the run.
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
    from importlib.metadata import version

    from bluesky_tiled_plugins.writing import tiled_writer

    # Tiled has no public "append to a run another writer owns"; these private parts are what
    # this subclass uses, checked here so that a release that renamed them is a clear error.
    needed = ("_write_internal_data", "_write_external_data", "_internal_data_cache", "_external_data_cache",
              "_desc_nodes", "_internal_arrays", "_internal_tables", "_sres_nodes", "_consolidators",
              "descriptor", "event")
    base = getattr(tiled_writer, "_RunWriter", None)
    missing = [n for n in needed if base is not None and not _has_member(base, n)]
    if base is None or missing:
        raise ImportError(f"bluesky-tiled-plugins {version('bluesky-tiled-plugins')} lacks "
                          f"bluesky_tiled_plugins.writing.tiled_writer._RunWriter"
                          f"{'.' + ', '.join(missing) if missing else ''}, which the derived-streams writer "
                          f"extends (tested with {_TESTED}); pin bluesky-tiled-plugins to that range")
    _RunWriter = base

    class AttachedRunWriter(_RunWriter):  # type: ignore[misc,valid-type]
        def __init__(self, client: Any, attach_timeout: float) -> None:
            super().__init__(client, batch_size=1)
            self.attach_timeout = attach_timeout
            self.derived: dict[str, int] = {}

        def start(self, doc: Any) -> None:
            self.root_node = wait_for_run(self.client, doc["uid"], self.attach_timeout)
            # the derived streams readable by whom the run is: the tags the host's writer gave it
            self.access_tags = doc.get("tiled_access_tags")

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
            self._external_data_cache.clear()
            # what a consolidator learnt (frames per point...), as the base's stop records it; each node once
            # (the base keys every node and consolidator by resource uid and by stream and data key)
            consolidated = {id(node): (node, self._consolidators[key]) for key, node in self._sres_nodes.items()}
            for node, consolidator in consolidated.values():
                if metadata := getattr(consolidator, "metadata", None):
                    node.update_metadata(metadata=metadata, drop_revision=True)
            summary = {"rows": dict(self.derived), "reason": doc.get("reason", ""),
                       "num_events": {k: v for k, v in (doc.get("num_events") or {}).items() if k in self.derived}}
            for name in self.derived:
                node = self._desc_nodes[name]
                node.update_metadata(metadata={**dict(node.metadata), SUMMARY_KEY: summary}, drop_revision=True)
            self._close_derived_streams()

        def _close_derived_streams(self) -> None:
            # the streams of the nodes this writer made; the run's own is closed by the writer that owns it
            seen: set[str] = set()
            nodes = [*self._internal_arrays.values(), *self._internal_tables.values(), *self._sres_nodes.values(),
                     *(self._desc_nodes[name] for name in self.derived)]
            for node in nodes:
                if node.uri in seen:
                    continue
                seen.add(node.uri)
                try:
                    node.close_stream()
                except Exception:  # the rows are stored; a live subscriber is not told this stream ended
                    log.warning("could not close the Tiled stream of %s", node.uri, exc_info=True)

    _CLASS = AttachedRunWriter
    return _CLASS


#: The bluesky-tiled-plugins releases whose private per-run writer this module was tested against.
_TESTED = "bluesky-tiled-plugins 2.0.12"


def _has_member(cls: type, name: str) -> bool:
    # the caches are instance attributes, set in __init__: look for them among the names its code assigns
    init = getattr(vars(cls).get("__init__"), "__code__", None)
    return hasattr(cls, name) or (init is not None and name in init.co_names)


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
