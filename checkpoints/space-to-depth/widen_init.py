"""Experiment (issue 20): start a wider space-to-depth network from the shipped one.

The space-to-depth network has no full-resolution layer, so it could run every layer in
int8, but it is 0.015-0.018 SSIM below the full network at 25,000 MACs per pixel against
92,700. In the All-in-One model quality followed the MACs (ratio 50, 46,000 MACs, within
0.003). A space-to-depth network of width 1.5 (56,000 MACs) runs every layer in int8 at
141-147 ms per 1024x1024 frame on an AMD EPYC, 6.7-6.8x Keras fp32
(``benchmarks/architecture_speed.py``). This writes the shipped ``tomogan-projection-s2d-aio``
(ratio 0) widened to ``width`` with :func:`bluesky_tomogan.model.allinone.widen` (the same
function to start with; the new channels start fresh) as initial weights for
``bluesky-tomogan train --init``:

    .venv/bin/python checkpoints/space-to-depth/widen_init.py 1.5 runs/s2d-w15-init.pt
    .venv/bin/bluesky-tomogan -v train data/sim_projection_all2.h5 --out runs/s2d-w15 \\
        --name tomogan-projection-s2d-w15 --domain projection --init runs/s2d-w15-init.pt \\
        --input-downscale 2 --downscale space-to-depth --width 1.5 --pixel l1+ssim \\
        --adv-weight 0 --feat-weight 0 --lr 2e-4 --steps-per-epoch 100 --patience 8 --threads 1
"""
import sys

import torch

from bluesky_tomogan.model.allinone import widen
from bluesky_tomogan.model.network import GeneratorConfig
from bluesky_tomogan.model.train import load_generator, resolve_weights

width, out = float(sys.argv[1]), sys.argv[2]
small = load_generator(resolve_weights("tomogan-projection-s2d-aio"))
big = widen(small, GeneratorConfig.from_dict(small.config.to_dict() | {"width": width}))
torch.save({"arch": big.config.to_dict(), "generator": big.state_dict()}, out)
print(f"{out}: {small.macs_per_pixel():,.0f} -> {big.macs_per_pixel():,.0f} MACs per pixel")
