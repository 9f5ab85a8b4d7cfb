"""``QCPolicy``: a threshold and an action per QC flag, in code or from a TOML file.

Flags and their default rules (the reason for each default is in
:data:`DEFAULT_REASONS` and docs/qc.md):

=====================  ==========================  =========  ===========
flag                   metric                      threshold  action
=====================  ==========================  =========  ===========
``beam_lost``          ``intensity_ratio`` below   0.2        suspend
``saturated``          ``saturated_fraction`` above 0.001     adjust
``dead_pixels``        ``dead_fraction`` above     0.25       reacquire
``nonfinite``          ``nonfinite_fraction`` above 0.0       reacquire
``noisy``              ``snr`` below               5.0        adjust
``motion``             ``motion_px`` above         3.0        warn
``out_of_distribution`` ``residual_structure`` above 0.15     warn
``signal_removed``     ``residual_repeat`` above   0.5        warn
``lagging``            ``latency_s`` above         5.0        warn
=====================  ==========================  =========  ===========

Actions: ``ignore`` (record only), ``warn`` (log a warning), ``suspend`` (raise
the flag's signal on the :class:`~bluesky_tomogan.devices.QCMonitor` that a
suspender watches), ``pause`` (``RE.request_pause(defer=True)``), ``abort``
(``RE.abort(reason)``), ``reacquire`` and ``adjust`` (recommendations that
:func:`~bluesky_tomogan.plans.qc_tomo_scan` reads between points).

A policy file (TOML) has one table per flag to change, and ``[options]``::

    [motion]
    threshold = 1.5
    action = "pause"

    [options]
    saturation_level = 4095
    dark_level = 100

Anything it does not set keeps its default. A malformed file raises
:class:`QCPolicyError` naming the file, the key and its line.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from ..errors import QCPolicyError
from .metrics import FrameMetrics

__all__ = ["QCPolicy", "Rule", "Action", "ACTIONS", "FLAGS", "DEFAULT_REASONS", "QCPolicyError"]

Action = Literal["ignore", "warn", "suspend", "pause", "abort", "reacquire", "adjust"]
ACTIONS: tuple[str, ...] = get_args(Action)

#: flag -> (metric, direction): the flag is raised when the metric is "below" or "above" the threshold.
FLAGS: Mapping[str, tuple[str, Literal["below", "above"]]] = {
    "beam_lost": ("intensity_ratio", "below"),
    "saturated": ("saturated_fraction", "above"),
    "dead_pixels": ("dead_fraction", "above"),
    "nonfinite": ("nonfinite_fraction", "above"),
    "noisy": ("snr", "below"),
    "motion": ("motion_px", "above"),
    "out_of_distribution": ("residual_structure", "above"),
    "signal_removed": ("residual_repeat", "above"),
    "lagging": ("latency_s", "above"),
}
#: Flags that make a frame unusable: it is not denoised and stays out of its neighbours' context.
UNUSABLE = frozenset({"beam_lost", "dead_pixels", "nonfinite"})

DEFAULT_REASONS: Mapping[str, str] = {
    "beam_lost": "mean intensity under 20 % of the recent frames' means is no beam or a closed shutter, not "
                 "the sample (a projection's mean changes far less with angle); suspend, because nothing "
                 "useful can be measured until the beam is back and the scan should resume by itself",
    "saturated": "0.1 % clipped pixels already bias the flat-field correction in the brightest region; the "
                 "cure is a shorter exposure, so adjust",
    "dead_pixels": "a quarter of the pixels that had light at zero is a readout failure or a dropped frame, not "
                   "the sample; the angle is worth taking again, so reacquire",
    "nonfinite": "any NaN/inf pixel breaks reconstruction; reacquire the angle",
    "noisy": "an SNR under 5 is about 25 photons per pixel above the dark level, where even the denoised "
             "frame scores 0.07-0.18 SSIM below what it does at 1000 photons; a longer exposure is the cure, "
             "so adjust",
    "motion": "a shift over 3 pixels against the previous angle, beyond the sideways shift that rotation "
              "makes between neighbouring angles on this scan, is the sample or the stage moving; a false "
              "pause costs beam time, so warn and let the scientist decide (set pause for a fine angular step)",
    "out_of_distribution": "a residual whose neighbouring pixels correlate beyond what the camera's own noise does "
                           "(its blur), by 0.15 of the way to 1, holds structure, so the denoiser removed signal; "
                           "warn, since the raw frame is still good",
    "signal_removed": "photon noise is new in every frame, so a residual that correlates above 0.5 with the "
                      "previous frame's is something both frames show (a sample's fine texture, a detector's "
                      "fixed pattern) that the denoiser flattened as noise; on simulated scans it stays under "
                      "0.11; warn, since the raw frame is still good",
    "lagging": "results more than 5 s behind the detector no longer steer the scan; warn (the queue "
               "policy decides what happens to frames)",
}


@dataclass(frozen=True)
class Rule:
    """When a flag is raised (``threshold``) and what is done then (``action``)."""

    threshold: float
    action: Action

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise QCPolicyError(f"unknown action {self.action!r}; choose from {', '.join(ACTIONS)}")
        if not isinstance(self.threshold, (int, float)) or isinstance(self.threshold, bool) \
                or math.isnan(self.threshold):
            raise QCPolicyError(f"threshold must be a number, got {self.threshold!r}")


def _default_rules() -> dict[str, Rule]:
    return {
        "beam_lost": Rule(0.2, "suspend"),
        "saturated": Rule(0.001, "adjust"),
        "dead_pixels": Rule(0.25, "reacquire"),
        "nonfinite": Rule(0.0, "reacquire"),
        "noisy": Rule(5.0, "adjust"),
        "motion": Rule(3.0, "warn"),
        "out_of_distribution": Rule(0.15, "warn"),
        "signal_removed": Rule(0.5, "warn"),
        "lagging": Rule(5.0, "warn"),
    }


@dataclass(frozen=True)
class QCPolicy:
    """Thresholds and actions of the QC flags (see the module docstring for the defaults and why).

    Parameters
    ----------
    rules : mapping of flag to Rule
        Rules that replace the defaults (the others keep theirs).
    saturation_level : float, optional
        Pixel value counted as saturated (default: the top of an integer
        frame's dtype, or of a narrower camera where the frame reaches it, e.g.
        4095 for a 12-bit camera in ``uint16``: :func:`~.metrics.narrower_top`;
        65535 for floating-point frames, where only pixels at exactly the frame's
        highest reading count: a clipped camera's plateau, not a sum of exposures).
    exposure_step : float
        Factor by which ``adjust`` changes the exposure time (down for
        saturation, up for noise).
    dark_level : float, optional
        The camera's dark offset in counts, subtracted from a frame's mean and
        from the reference before their ratio (``intensity_ratio``) and from
        the mean over the noise (``snr``): at low dose the offset is a large
        part of the signal, and a frame without beam still reads it. Default:
        the median mean of the run's dark frames (``tomo_scan``'s ``dark`` stream, ``darks``, ...),
        or of the last run's that had any, else 0.

    Examples
    --------
    >>> policy = QCPolicy({"motion": Rule(1.5, "pause")})
    >>> policy.rules["motion"].action
    'pause'
    """

    rules: Mapping[str, Rule] = field(default_factory=_default_rules)
    saturation_level: float | None = None
    exposure_step: float = 2.0
    dark_level: float | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.rules) - set(FLAGS))
        if unknown:
            raise QCPolicyError(f"unknown QC flags {unknown}; choose from {', '.join(FLAGS)}")
        object.__setattr__(self, "rules", {**_default_rules(), **self.rules})
        if self.exposure_step <= 1:
            raise QCPolicyError(f"exposure_step must be > 1, got {self.exposure_step}")

    def evaluate(self, metrics: FrameMetrics) -> dict[str, Action]:
        """The flags ``metrics`` raise, each with its action (``ignore`` flags included: they are recorded).

        An unusable frame (``beam_lost``, ``dead_pixels``, ``nonfinite``) does not also raise
        ``noisy``: its low SNR says nothing about the exposure.
        """
        values = metrics.as_dict()
        raised: dict[str, Action] = {}
        for flag, (metric, direction) in FLAGS.items():
            value = values.get(metric, math.nan)
            rule = self.rules[flag]
            if math.isnan(value):
                continue
            if (value < rule.threshold) if direction == "below" else (value > rule.threshold):
                raised[flag] = rule.action
        if UNUSABLE & set(raised):  # a frame without beam or readout is not "noisy": no exposure change for it
            raised.pop("noisy", None)
        return raised

    def saturation_for(self, dtype: Any) -> float:
        """The saturation level for frames of ``dtype``."""
        import numpy as np

        if self.saturation_level is not None:
            return float(self.saturation_level)
        dt = np.dtype(dtype)
        return float(np.iinfo(dt).max) if dt.kind in "ui" else 65535.0

    def with_rules(self, **rules: Rule) -> QCPolicy:
        """A copy with some rules replaced."""
        return dataclasses.replace(self, rules={**self.rules, **rules})

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> QCPolicy:
        """Read a policy from a TOML file (see the module docstring).

        Raises
        ------
        QCPolicyError
            The file cannot be read or parsed, or a key or value is wrong; the
            message names the file, the key and its line.
        """
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise QCPolicyError(f"cannot read the QC policy {path}: {exc}") from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise QCPolicyError(f"{path}: not valid TOML: {exc}") from exc
        rules: dict[str, Rule] = {}
        options: dict[str, Any] = {}
        for table, body in data.items():
            where = f"{path}:{_line_of(text, table)}"
            if table == "options":
                for key, value in _table(body, table, where).items():
                    if key not in ("saturation_level", "exposure_step", "dark_level"):
                        raise QCPolicyError(f"{path}:{_line_of(text, table, key)}: unknown option "
                                            f"'options.{key}'; known: saturation_level, exposure_step, "
                                            "dark_level")
                    if not isinstance(value, (int, float)) or isinstance(value, bool):
                        raise QCPolicyError(f"{path}:{_line_of(text, table, key)}: 'options.{key}' must be a "
                                            f"number, got {value!r}")
                    options[key] = float(value)
                continue
            if table not in FLAGS:
                raise QCPolicyError(f"{where}: unknown QC flag [{table}]; choose from {', '.join(FLAGS)}")
            body = _table(body, table, where)
            for key in body:
                if key not in ("threshold", "action"):
                    raise QCPolicyError(f"{path}:{_line_of(text, table, key)}: unknown key '{table}.{key}'; "
                                        "a flag has 'threshold' and 'action'")
            default = _default_rules()[table]
            try:
                rules[table] = Rule(body.get("threshold", default.threshold), body.get("action", default.action))
            except QCPolicyError as exc:
                key = "action" if "action" in str(exc) else "threshold"
                raise QCPolicyError(f"{path}:{_line_of(text, table, key)}: '{table}.{key}': {exc}") from None
        try:
            return cls(rules, **options)
        except QCPolicyError as exc:
            raise QCPolicyError(f"{path}:{_line_of(text, 'options')}: {exc}") from None


def _table(body: Any, table: str, where: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise QCPolicyError(f"{where}: '{table}' must be a table ([{table}]), got {body!r}")
    return body


def _line_of(text: str, table: str, key: str | None = None) -> int:
    """1-based line of ``[table]`` (or of ``key`` inside it, or of a dotted ``table.key``); 0 if not found."""
    lines = text.splitlines()
    start = None
    for i, line in enumerate(lines):
        if re.match(rf"^\s*\[\s*{re.escape(table)}\s*\]", line):
            start = i
            break
        if key is None and re.match(rf"^\s*{re.escape(table)}\s*[.=]", line):
            return i + 1
        if key is not None and re.match(rf"^\s*{re.escape(table)}\s*\.\s*{re.escape(key)}\s*=", line):
            return i + 1
    if start is None:
        return 0
    if key is None:
        return start + 1
    for j in range(start + 1, len(lines)):
        if re.match(r"^\s*\[", lines[j]):
            break
        if re.match(rf"^\s*{re.escape(key)}\s*=", lines[j]):
            return j + 1
    return start + 1
