"""QC flags and metrics as EPICS PVs: a caproto soft IOC beside the worker, suspenders beside the RunEngine.

Across machines the feedback works exactly as in process: the worker's
:class:`~bluesky_tomogan.devices.QCMonitor` (flags raised by QC, cleared by its
``retry_after`` timer or a ``beam`` signal, see its docstring) is mirrored, signal
by signal, to PVs ``<prefix><flag>`` (0/1) and ``<prefix><metric>``; on the
RunEngine host, :func:`install_qc_suspenders` puts bluesky's ``SuspendBoolHigh``
on ophyd ``EpicsSignalRO`` of the flags whose policy action is ``suspend``.

The IOC is caproto (pure Python, installs from PyPI, Channel Access). Name
search follows the usual EPICS environment (``EPICS_CA_ADDR_LIST``,
``EPICS_CA_AUTO_ADDR_LIST``, ``EPICS_CA_SERVER_PORT``) on both sides.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Sequence
from typing import Any

from ..callbacks.derived_stream import derived_from
from ..devices.qc_monitor import QCMonitor
from ..qc.feedback import QCFeedback, Verdict
from ..qc.metrics import UNITS
from ..qc.policy import QCPolicy
from .transport import cancel_loop

__all__ = ["QCIOC", "QCFromDocuments", "qc_flag_signals", "install_qc_suspenders", "run_qc_ioc", "DEFAULT_PREFIX"]

log = logging.getLogger(__name__)
DEFAULT_PREFIX = "TOMOGAN:QC:"


class QCIOC:
    """Serve a :class:`QCMonitor`'s signals as PVs ``<prefix><name>`` until :meth:`stop`.

    Parameters
    ----------
    monitor : QCMonitor
        The worker's monitor (given to its ``QCFeedback``).
    prefix : str
        PV prefix, e.g. ``"BL32:TOMOGAN:QC:"``.
    interfaces : sequence of str
        Network interfaces to serve on (default: all).
    """

    def __init__(self, monitor: QCMonitor, prefix: str = DEFAULT_PREFIX,
                 interfaces: Sequence[str] = ("0.0.0.0",)) -> None:
        from caproto.server import PVGroup, pvproperty

        self.monitor = monitor
        self.prefix = prefix
        self.interfaces = list(interfaces)
        names = [*QCMonitor.FLAGS, *QCMonitor.METRICS, "seq_num"]
        body: dict[str, Any] = {}
        for name in names:
            integer = name in QCMonitor.FLAGS or name == "seq_num"
            body[name] = pvproperty(value=0 if integer else 0.0, name=name, read_only=True,
                                    doc=f"bluesky-tomogan QC {'flag' if name in QCMonitor.FLAGS else 'metric'}")
        self._group = type("TomoGANQC", (PVGroup,), body)(prefix=prefix)
        self._names = names
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._tokens: list[tuple[Any, int]] = []

    @property
    def pvnames(self) -> list[str]:
        """Every PV this IOC serves."""
        return sorted(self._group.pvdb)

    def start(self, timeout: float = 10.0) -> None:
        """Start serving on a daemon thread; mirror the monitor's signals from now on."""
        self._thread = threading.Thread(target=self._serve, name="tomogan-qc-ioc", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the QC IOC did not start within {timeout} s")
        for name in self._names:
            signal = getattr(self.monitor, name)
            self._tokens.append((signal, signal.subscribe(self._mirror(name), run=True)))
        log.info("QC IOC serving %d PVs under %s", len(self._names), self.prefix)

    def stop(self) -> None:
        """Stop mirroring and serving."""
        for signal, token in self._tokens:
            signal.unsubscribe(token)
        self._tokens.clear()
        cancel_loop(self._loop)
        if self._thread is not None:
            self._thread.join(10)

    def _serve(self) -> None:
        from caproto.asyncio.server import Context

        async def main() -> None:
            context = Context(self._group.pvdb, self.interfaces)  # made inside the running loop, as caproto wants
            asyncio.get_running_loop().call_soon(self._ready.set)
            await context.run()

        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(main())
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("the QC IOC stopped")
        finally:
            loop.close()

    def _mirror(self, name: str) -> Any:
        pv = getattr(self._group, name)
        integer = name in QCMonitor.FLAGS or name == "seq_num"

        def write(value: Any = None, **kwargs: Any) -> None:
            loop = self._loop
            if loop is None or loop.is_closed():
                return
            try:
                number = int(value) if integer else float(value)
            except (TypeError, ValueError):
                return
            if not integer and not math.isfinite(number):
                number = math.nan
            asyncio.run_coroutine_threadsafe(pv.write(number), loop)

        return write


class QCFromDocuments:
    """Feed a :class:`QCFeedback` (and so its ``QCMonitor``) from the derived documents of a stream.

    The IOC on its own (``bluesky-tomogan qc-ioc``) listens to the worker's
    republished documents (``serve --zmq-out``), or to any stream that carries a
    ``denoised`` stream: each row's ``<field>_qc_flags`` and ``<field>_qc_<metric>``
    columns become the verdict that QC made in the worker, and the monitor raises
    and clears flags exactly as in the worker's own process.
    """

    def __init__(self, feedback: QCFeedback) -> None:
        self.feedback = feedback
        self._fields: dict[str, tuple[str, str, str]] = {}  # derived descriptor uid -> (run, stream, field)

    def __call__(self, name: str, doc: Any) -> None:
        if name == "descriptor" and derived_from(doc) is not None:  # ours, whatever its name (denoised_2)
            fields = [k[: -len("_qc_flags")] for k in doc.get("data_keys", {}) if k.endswith("_qc_flags")]
            if fields:
                self._fields[doc["uid"]] = (doc["run_start"], doc["name"], fields[0])
                depth = ((doc.get("configuration") or {}).get("tomogan") or {}).get("data", {}).get("context_frames")
                if isinstance(depth, (int, float)) and depth >= 1:  # a paced plan (max_qc_lag) waits for no
                    self.feedback.note_lookahead(doc["name"], int(depth) // 2)  # frame that is judged later
        elif name in ("event", "event_page") and doc.get("descriptor") in self._fields:
            run, stream, f = self._fields[doc["descriptor"]]
            data = doc["data"]
            rows = len(data[f"{f}_qc_flags"]) if name == "event_page" else 1

            def column(key: str, default: Any) -> list[Any]:
                values = data.get(key, [default] * rows if name == "event_page" else default)
                return list(values) if name == "event_page" else [values]

            flags, seqs = column(f"{f}_qc_flags", ""), column(f"{f}_source_seq_num", 0)
            metrics = {m: column(f"{f}_qc_{m}", math.nan) for m in UNITS}
            rules = self.feedback.policy.rules
            for i in range(rows):
                raised = {flag: rules[flag].action for flag in str(flags[i]).split(",") if flag in rules}
                self.feedback.act(Verdict(run, stream, int(seqs[i]), {m: float(v[i]) for m, v in metrics.items()},
                                          raised))
        elif name == "stop":
            self._fields = {d: v for d, v in self._fields.items() if v[0] != doc.get("run_start")}


def run_qc_ioc(zmq_in: str | None = None, prefix: str = DEFAULT_PREFIX, *, retry_after: float = 10.0,
               policy: QCPolicy | None = None, interfaces: Sequence[str] = ("0.0.0.0",), kafka: Any = None,
               kafka_in: Sequence[str] = (), kafka_group: str | None = None) -> int:
    """The QC IOC on its own: PVs from the QC columns of a document stream, until SIGTERM/SIGINT.

    The stream is a 0MQ proxy's out port (``zmq_in``) or Kafka topics (``kafka_in`` on the
    :class:`~bluesky_tomogan.serve.kafka.KafkaCluster` ``kafka``; a consumer group of its own unless
    ``kafka_group``, which never commits: a restarted IOC starts at the newest flags, not at stale ones).
    """
    import signal

    from .transport import document_source

    source = document_source(zmq_in, kafka=kafka, kafka_in=kafka_in, group_id=kafka_group)
    monitor = QCMonitor(name="qc", retry_after=retry_after)
    source.subscribe(QCFromDocuments(QCFeedback(policy, monitor=monitor)))
    ioc = QCIOC(monitor, prefix, interfaces)
    ioc.start()
    previous = {s: signal.signal(s, lambda *_: source.stop()) for s in (signal.SIGTERM, signal.SIGINT)}
    log.info("QC IOC on its own: %s from %s", prefix, zmq_in or source)
    try:
        source.start()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        ioc.stop()
        monitor.cancel_timers()
    return 0


def qc_flag_signals(prefix: str = DEFAULT_PREFIX, flags: Sequence[str] | None = None) -> dict[str, Any]:
    """Ophyd ``EpicsSignalRO`` of the QC flag PVs under ``prefix`` (default: every flag), by flag name."""
    from ophyd import EpicsSignalRO

    return {flag: EpicsSignalRO(f"{prefix}{flag}", name=f"tomogan_qc_{flag}")
            for flag in (QCMonitor.FLAGS if flags is None else flags)}


def install_qc_suspenders(RE: Any, prefix: str = DEFAULT_PREFIX, policy: QCPolicy | None = None,
                          sleep: float = 0.0, connect_timeout: float = 10.0) -> list[Any]:
    """On the RunEngine host: ``SuspendBoolHigh`` on the remote PV of every flag whose action is ``suspend``.

    Parameters
    ----------
    RE : RunEngine
    prefix : str
        The worker's ``--ioc-prefix``.
    policy : QCPolicy, optional
        Which flags suspend (default: the default policy, as the worker's).
    sleep : float
        Seconds to wait after a flag clears before resuming.
    connect_timeout : float
        Seconds to wait for the PVs; a missing IOC raises ``TimeoutError`` here, not mid-scan.

    Returns
    -------
    list
        The installed suspenders.
    """
    from bluesky.suspenders import SuspendBoolHigh

    policy = policy or QCPolicy()
    flags = [f for f, rule in policy.rules.items() if rule.action == "suspend"]
    signals = qc_flag_signals(prefix, flags)
    suspenders = []
    for flag, signal in signals.items():
        signal.wait_for_connection(timeout=connect_timeout)
        suspender = SuspendBoolHigh(signal, sleep=sleep, tripped_message=f"remote QC flag {flag} ({prefix}{flag})")
        RE.install_suspender(suspender)
        suspenders.append(suspender)
    return suspenders
