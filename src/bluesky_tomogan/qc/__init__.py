"""QC of live frames: metrics per frame, a policy of thresholds and actions, and feedback to the scan.

See docs/qc.md. The pieces:

* :mod:`.metrics`: what is measured on every frame (cheap: a few ms at 512x512).
* :class:`QCPolicy`: a threshold and an action per flag, in code or from a TOML file.
* :class:`QCFeedback`: carries the actions out, off the RunEngine's thread: a
  :class:`~bluesky_tomogan.devices.QCMonitor` for suspenders, ``RE.request_pause``,
  ``RE.abort``, and recommendations for :func:`~bluesky_tomogan.plans.qc_tomo_scan`.
"""

from .feedback import QCFeedback, Recommendation, Verdict
from .metrics import FrameMetrics
from .policy import ACTIONS, FLAGS, QCPolicy, QCPolicyError, Rule

__all__ = ["QCPolicy", "Rule", "QCFeedback", "Recommendation", "Verdict", "FrameMetrics", "ACTIONS", "FLAGS",
           "QCPolicyError"]
