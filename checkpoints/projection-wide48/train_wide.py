"""Train a widened projection model (``widen.py``) with the shipped model's loss and data.

    .venv/bin/python -u checkpoints/projection-wide48/train_wide.py /tmp/wide48.pt runs/proj-wide48 110 1.5e-4

``--slice``: the slice models' data (``data/sim_slice.h5``) and domain instead.
``--data H5``: train on that dataset instead (session 23: ``data/sim_slice_mix2.h5``, the shipped
slice model's ideal + beamline-like mixture).
``--teacher NAME [--distill W]``: also learn the output of NAME (a shipped model's name or weights),
``W`` (default 0.5) of the pixel loss (``TrainConfig.teacher``).
``--patience N`` (default 10), ``--min-delta D`` (default 0.0005): early stopping and the plateau
that halves the step size (two epochs without a gain of ``D``); session 32 fine-tuned with 1e-4,
where gains of a few 1e-4 per epoch had halved the step size to its floor within 9 epochs.
``--context-dropout P`` (default 0): ``TrainConfig.context_dropout`` (session 33).
``--dose-balance G`` (default 0): ``TrainConfig.dose_balance``; below 0 the noisiest patches count
for more.
``--threads N`` (default 1): torch threads (session 46: 2, the machine to itself).
``--ema D`` (default 0): ``TrainConfig.ema_decay``, a moving average of the weights (session 49).
"""
import logging
import sys

import torch

from bluesky_tomogan.model.network import GeneratorConfig
from bluesky_tomogan.model.train import TrainConfig, train

logging.basicConfig(level=logging.INFO)
init, out, minutes, lr = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])


def option(name: str, default: float) -> float:
    return float(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


arch = GeneratorConfig.from_dict(torch.load(init, weights_only=True)["arch"])
domain = "slice" if "--slice" in sys.argv else "projection"
data = {"slice": "data/sim_slice.h5", "projection": "data/sim_projection_all2.h5"}[domain]
if "--data" in sys.argv:
    data = sys.argv[sys.argv.index("--data") + 1]
cfg = TrainConfig(data=data, out_dir=out, name=f"tomogan-{domain}",
                  domain=domain, arch=arch, steps_per_epoch=150, max_epochs=80, patience=int(option("--patience", 10)),
                  min_delta=option("--min-delta", 0.0005), dose_balance=option("--dose-balance", 0.0),
                  context_dropout=option("--context-dropout", 0.0),
                  time_budget_s=minutes * 60, lr=lr, pixel="l1+ssim", adv_weight=0.0, feat_weight=0.0,
                  threads=int(option("--threads", 1)), init_weights=init,
                  teacher=sys.argv[sys.argv.index("--teacher") + 1] if "--teacher" in sys.argv else "",
                  distill_weight=option("--distill", 0.5), ema_decay=option("--ema", 0.0))
result = train(cfg, resume="--resume" in sys.argv, progress=True)
print(result.stopped, result.best_epoch, result.weights)
