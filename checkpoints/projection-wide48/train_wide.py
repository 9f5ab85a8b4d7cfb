"""Train a widened projection model (``widen.py``) with the shipped model's loss and data.

    .venv/bin/python -u checkpoints/projection-wide48/train_wide.py /tmp/wide48.pt runs/proj-wide48 110 1.5e-4
"""
import logging
import sys

import torch

from bluesky_tomogan.model.network import GeneratorConfig
from bluesky_tomogan.model.train import TrainConfig, train

logging.basicConfig(level=logging.INFO)
init, out, minutes, lr = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
arch = GeneratorConfig.from_dict(torch.load(init, weights_only=True)["arch"])
cfg = TrainConfig(data="data/sim_projection_all2.h5", out_dir=out, name="tomogan-projection",
                  domain="projection", arch=arch, steps_per_epoch=150, max_epochs=80, patience=10,
                  time_budget_s=minutes * 60, lr=lr, pixel="l1+ssim", adv_weight=0.0, feat_weight=0.0,
                  threads=1, init_weights=init)
result = train(cfg, resume="--resume" in sys.argv, progress=True)
print(result.stopped, result.best_epoch, result.weights)
