"""The callback's subscribers, and what happens when one of them fails.

A live plot that raises must not stop the scan or the other subscribers, so
every failure is caught, logged at ERROR with the document name, counted per
consumer, and named in the run's stop document ``reason``. A *storage*
consumer that raises means data is not being stored, and that must not look
like success: its sentence in the reason says the stored run is incomplete.

Which consumers are storage
---------------------------
An instance of bluesky-tiled-plugins' ``TiledWriter`` (the one bluesky 1.16 points to) or of bluesky
1.14-1.15's own, of bluesky-tiled-plugins' ``TiledInserter``, and any subscriber passed with
``storage=True`` (a databroker ``insert``, a Kafka or 0MQ publisher that feeds storage, a suitcase
serializer).
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Consumer", "Consumers", "ConsumerFailures", "is_storage"]

log = logging.getLogger(__name__)
Subscriber = Callable[[str, Any], Any]


def is_storage(func: Subscriber) -> bool:
    """Whether ``func`` is known to store documents (a ``TiledWriter``, bluesky-tiled-plugins' or bluesky
    1.14-1.15's, or bluesky-tiled-plugins' ``TiledInserter``, databroker's ``insert`` into Tiled)."""
    return isinstance(func, _storage_classes())


def _storage_classes() -> tuple[type, ...]:
    """The writer classes loaded in this process: bluesky-tiled-plugins' (what bluesky 1.16 re-exports and tells
    users to import) and bluesky's own (1.14-1.15). A writer's class is loaded wherever one exists, so nothing is
    imported here (bluesky-tiled-plugins is slow to import; bluesky 1.16's re-export warns)."""
    classes: list[type] = []
    for module, names in (("bluesky_tiled_plugins", ("TiledWriter", "TiledInserter")),
                          ("bluesky.callbacks.tiled_writer", ("TiledWriter",))):
        for name in names:
            writer = getattr(sys.modules.get(module), name, None)
            if isinstance(writer, type) and writer not in classes:
                classes.append(writer)
    return tuple(classes)


def _name(func: Subscriber) -> str:
    return str(getattr(func, "__name__", None) or type(func).__name__)


@dataclass(frozen=True)
class Consumer:
    """One subscriber: the callable, a readable name, and whether it stores data."""

    func: Subscriber
    name: str
    storage: bool


@dataclass
class ConsumerFailures:
    """Failures of consumers during one run: counts per consumer name, and the first message of each."""

    counts: Counter[str] = field(default_factory=Counter)
    first: dict[str, str] = field(default_factory=dict)
    storage: set[str] = field(default_factory=set)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def reason(self) -> str:
        """A sentence for the stop document's ``reason``, or empty when no consumer failed."""
        sentences = []
        for label, names, tail in (("storage consumer", sorted(self.storage), "; the stored run is incomplete"),
                                   ("consumer", sorted(set(self.counts) - self.storage), "")):
            if names:
                parts = [f"{n} failed on {self.counts[n]} documents (first: {self.first[n]})" for n in names]
                sentences.append(f"bluesky-tomogan: {label} " + "; ".join(parts) + tail)
        return "; ".join(sentences)


class Consumers:
    """Subscribers of the callback, called in subscription order, never allowed to raise."""

    def __init__(self) -> None:
        self._items: dict[int, Consumer] = {}
        self._next = 0

    def add(self, func: Subscriber, storage: bool | None = None) -> int:
        """Add ``func``; ``storage=None`` recognises known storage consumers. Returns a token."""
        self._next += 1
        self._items[self._next] = Consumer(func, _name(func), is_storage(func) if storage is None else storage)
        return self._next

    def remove(self, token: int) -> None:
        self._items.pop(token, None)

    @property
    def storage(self) -> list[Consumer]:
        return [c for c in self._items.values() if c.storage]

    def publish(self, name: str, doc: Mapping[str, Any], failures: ConsumerFailures) -> None:
        """Send ``(name, doc)`` to every consumer; record a failure in ``failures`` and go on."""
        for c in list(self._items.values()):
            try:
                c.func(name, doc)
            except Exception as exc:  # a consumer's failure must not stop the scan or the other consumers
                failures.counts[c.name] += 1
                failures.first.setdefault(c.name, f"{name}: {type(exc).__name__}: {exc}")
                if c.storage:
                    failures.storage.add(c.name)
                    log.error("storage consumer %s raised on a %s document: data of this run is not being "
                              "stored (%s)", c.name, name, exc, exc_info=True)
                else:
                    log.exception("consumer %s raised on a %s document; continuing", c.name, name)
