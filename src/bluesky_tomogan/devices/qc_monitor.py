"""``QCMonitor``: the QC flags and latest metrics as an ophyd Device of soft signals.

The callback's QC feedback thread sets the signals; standard bluesky
suspenders watch them (``SuspendBoolHigh(monitor.beam_lost)``), and plans or
displays read them like any device. Flags are set from that feedback thread,
never from the RunEngine's event-loop thread: a suspender that trips has to
hand a request to the loop, which cannot happen while the loop is busy
running the very callback that set the signal.

Clearing a suspending flag
--------------------------
While the RunEngine is suspended no frames are taken, so no frame can clear
the flag. What clears it has to keep updating during the suspension:

* ``beam`` (recommended): a signal that keeps updating, such as the storage
  ring current or an ion chamber. ``beam_lost`` clears when it reads at least
  ``beam_ok``: it measures the cause directly, so the scan resumes as soon as
  the beam is back and not before. A ``beam_lost`` verdict that arrives when
  ``beam`` already reads the beam back (QC judges a frame after it was taken:
  one exposed in the dark can be judged after the refill) raises nothing: the
  flag would have nothing left to clear it, and the scan would stay suspended.
* otherwise ``retry_after`` seconds: the flag clears, the scan resumes and
  takes the next frame as a test frame; if that frame is dark too, QC raises
  the flag again and the scan suspends again.
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

from ophyd import Component as Cpt
from ophyd import Device, Signal

__all__ = ["QCMonitor", "QCDecision"]

log = logging.getLogger(__name__)


class QCMonitor(Device):
    """Soft signals of the QC flags (0 or 1) and of the latest frame's metrics.

    Parameters
    ----------
    name : str
        Device name (signals are ``<name>_<flag>``).
    beam : ophyd signal, optional
        A signal that keeps updating while the scan is suspended (ring current,
        ion chamber); ``beam_lost`` clears when it reads at least ``beam_ok``.
    beam_ok : float, optional
        The ``beam`` reading at which the beam counts as back.
    retry_after : float
        Without ``beam``: seconds after which a suspending flag clears, so that
        the scan resumes and its next frame tests the condition again.

    Examples
    --------
    >>> monitor = QCMonitor(name="qc", beam=ring_current, beam_ok=100)       # doctest: +SKIP
    >>> feedback = QCFeedback(QCPolicy(), monitor=monitor, RE=RE)            # doctest: +SKIP
    >>> feedback.install_suspenders(RE)   # SuspendBoolHigh on each "suspend" flag  # doctest: +SKIP
    """

    beam_lost = Cpt(Signal, value=0, kind="hinted")
    saturated = Cpt(Signal, value=0, kind="hinted")
    dead_pixels = Cpt(Signal, value=0, kind="hinted")
    nonfinite = Cpt(Signal, value=0, kind="hinted")
    noisy = Cpt(Signal, value=0, kind="hinted")
    motion = Cpt(Signal, value=0, kind="hinted")
    out_of_distribution = Cpt(Signal, value=0, kind="hinted")
    signal_removed = Cpt(Signal, value=0, kind="hinted")
    lagging = Cpt(Signal, value=0, kind="hinted")

    intensity_ratio = Cpt(Signal, value=math.nan, kind="normal")
    snr = Cpt(Signal, value=math.nan, kind="normal")
    saturated_fraction = Cpt(Signal, value=math.nan, kind="normal")
    dead_fraction = Cpt(Signal, value=math.nan, kind="normal")
    shift_px = Cpt(Signal, value=math.nan, kind="normal")
    motion_px = Cpt(Signal, value=math.nan, kind="normal")
    residual_correlation = Cpt(Signal, value=math.nan, kind="normal")
    residual_structure = Cpt(Signal, value=math.nan, kind="normal")
    residual_repeat = Cpt(Signal, value=math.nan, kind="normal")
    latency_s = Cpt(Signal, value=math.nan, kind="normal")
    seq_num = Cpt(Signal, value=0, kind="normal")

    FLAGS = ("beam_lost", "saturated", "dead_pixels", "nonfinite", "noisy", "motion", "out_of_distribution",
             "signal_removed", "lagging")
    METRICS = ("intensity_ratio", "snr", "saturated_fraction", "dead_fraction", "shift_px", "motion_px",
               "residual_correlation", "residual_structure", "residual_repeat", "latency_s")

    def __init__(self, *, name: str = "qc", beam: Any = None, beam_ok: float | None = None,
                 retry_after: float = 10.0, **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        if beam is not None and beam_ok is None:
            raise ValueError("beam_ok is needed with beam: the reading at which the beam counts as back")
        self.beam = beam
        self.beam_ok = beam_ok
        self.retry_after = retry_after
        self._timers: dict[str, threading.Timer] = {}
        # Held while a flag is set or cleared (re-entrant: a signal's callback may clear what was just set).
        self._lock = threading.RLock()
        if beam is not None:
            beam.subscribe(self._beam_changed, run=False)

    def flag(self, name: str) -> Signal:
        """The signal of flag ``name``."""
        if name not in self.FLAGS:
            raise KeyError(f"unknown QC flag {name!r}; choose from {', '.join(self.FLAGS)}")
        return getattr(self, name)

    def raise_flag(self, name: str, *, suspending: bool = False) -> None:
        """Set flag ``name``; a suspending flag also gets its way of clearing (see the module docstring)."""
        # Raising and clearing hold one lock, and beam_lost reads the beam again once raised: a refill that
        # lands between the reading and the raise (its callback then found nothing to clear) still clears it.
        with self._lock:
            if name == "beam_lost" and self.beam is not None and self._beam_back():
                log.info("QC: beam_lost of an earlier frame, but %s reads the beam back; not raised",
                         self.beam.name)
                return
            self.flag(name).put(1)
            if suspending and not (name == "beam_lost" and self.beam is not None):
                old = self._timers.pop(name, None)
                if old is not None:
                    old.cancel()
                timer = threading.Timer(self.retry_after, self.clear_flag, args=(name,))
                timer.daemon = True
                timer.name = f"qc-retry-{name}"
                self._timers[name] = timer
                timer.start()
            if name == "beam_lost" and self.beam is not None and self._beam_back():
                self.clear_flag(name)

    def raise_again(self, name: str) -> bool:
        """Set flag ``name`` once more, for suspenders that missed it, if it is still raised; False if it has
        cleared meanwhile (the beam came back, ``retry_after`` passed): raised again, nothing would clear it."""
        with self._lock:
            if not self.flag(name).get():
                return False
            self.flag(name).put(1)
            if name == "beam_lost" and self.beam is not None and self._beam_back():
                self.clear_flag(name)
                return False
            return True

    def clear_flag(self, name: str) -> None:
        """Clear flag ``name`` (a suspender watching it lets the scan resume)."""
        with self._lock:
            if self.flag(name).get():
                self.flag(name).put(0)

    def update(self, metrics: dict[str, float], seq_num: int) -> None:
        """Publish the latest frame's metrics."""
        for key in self.METRICS:
            value = metrics.get(key, math.nan)
            getattr(self, key).put(float(value))
        self.seq_num.put(int(seq_num))

    def cancel_timers(self) -> None:
        """Stop pending retry timers (e.g. at the end of a session)."""
        with self._lock:
            for timer in self._timers.values():
                timer.cancel()
            self._timers.clear()

    def _beam_changed(self, value: Any = None, **kwargs: Any) -> None:
        if self._beam_back(value):
            self.clear_flag("beam_lost")

    def _beam_back(self, value: Any = None) -> bool:
        """Whether ``beam`` (its reading now, or ``value``) is at least ``beam_ok``; False if unreadable."""
        try:
            reading = self.beam.get() if value is None else value  # type: ignore[union-attr]
            return float(reading) >= float(self.beam_ok)  # type: ignore[arg-type]
        except Exception:  # a disconnected PV: keep the flag, as without a reading
            return False


class QCDecision(Device):
    """What an adaptive plan decided and why: read into the run's ``qc_actions`` stream at each decision.

    ``action`` is ``reacquire``, ``adjust``, ``give-up`` (retries exhausted) or
    ``hold`` (the exposure is at its limit); ``source_seq_num`` is the raw
    event whose QC flag caused it.
    """

    action = Cpt(Signal, value="", kind="hinted")
    flag = Cpt(Signal, value="", kind="hinted")
    reason = Cpt(Signal, value="", kind="normal")
    angle = Cpt(Signal, value=math.nan, kind="normal")
    exposure_time = Cpt(Signal, value=math.nan, kind="normal")
    source_seq_num = Cpt(Signal, value=0, kind="normal")

    def describe(self) -> Any:
        out = super().describe()
        out[self.angle.name]["units"] = "deg"
        out[self.exposure_time.name]["units"] = "s"
        return out
