"""Experiment (issue 20): does a small full-resolution refinement close the space-to-depth gap?

The space-to-depth network runs its U-Net at half resolution; its gap to the full network
(0.013-0.024 SSIM) was put down to capacity at full resolution. This adds a cheap
full-resolution tail to the shipped ``tomogan-projection-s2d-aio`` weights (ratio 0):

    correction = s2d_correction(x)
    correction += refine(concat(x, correction))   # 3x3 convs, ``width`` channels, full resolution
    out = centre + correction

The last refine convolution starts at zero, so training starts from the shipped network's
function. Validation numbers of the full network and the shipped space-to-depth network on
the same frames are logged first, as the reference.

    .venv/bin/python -u checkpoints/space-to-depth/refine_experiment.py runs/s2d-refine 16 55
"""
import logging
import sys

import torch
from torch import nn

import bluesky_tomogan.model.train as train_mod
from bluesky_tomogan.model.network import GeneratorConfig, TomoGANGenerator
from bluesky_tomogan.model.train import TrainConfig, _validate, load_generator, resolve_weights
from bluesky_tomogan.simulate.datasets import read_dataset

log = logging.getLogger("refine")
DATA = "data/sim_projection_all2.h5"
WIDTH = int(sys.argv[2])


class RefinedGenerator(TomoGANGenerator):
    def __init__(self, config: GeneratorConfig | None = None) -> None:
        super().__init__(config)
        c = self.config.in_channels + 1
        self.refine = nn.Sequential(nn.Conv2d(c, WIDTH, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.Conv2d(WIDTH, WIDTH, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.Conv2d(WIDTH, 1, 3, padding=1))
        nn.init.zeros_(self.refine[4].weight)
        nn.init.zeros_(self.refine[4].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.config.in_channels // 2
        centre = x[:, k:k + 1]
        correction = super().forward(x) - centre
        correction = correction + self.refine(torch.cat([x, correction], dim=1))
        return correction + centre


def _load_initial(gen: TomoGANGenerator, name_or_path: str) -> None:
    state = torch.load(resolve_weights(name_or_path), map_location="cpu", weights_only=True)
    missing, unexpected = gen.load_state_dict(state["generator"], strict=False)
    assert not unexpected and all(k.startswith("refine.") for k in missing), (missing, unexpected)
    log.info("initial weights from %s (new: %s)", name_or_path, missing)


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    out, minutes = sys.argv[1], float(sys.argv[3])
    torch.set_num_threads(1)
    test = read_dataset(DATA).split("test")
    for name in ("tomogan-projection", "tomogan-projection-s2d-aio"):
        log.info("reference %s: %s", name, _validate(load_generator(resolve_weights(name)), test, 48))
    arch = GeneratorConfig.from_dict(torch.load(resolve_weights("tomogan-projection-s2d-aio"),
                                                weights_only=True)["arch"])
    train_mod.TomoGANGenerator = RefinedGenerator  # type: ignore[misc]
    train_mod._load_initial_weights = _load_initial
    cfg = TrainConfig(data=DATA, out_dir=out, name="tomogan-projection-s2d-refine", domain="projection",
                      arch=arch, steps_per_epoch=100, max_epochs=60, patience=8, time_budget_s=minutes * 60,
                      lr=1e-4, pixel="l1+ssim", adv_weight=0.0, feat_weight=0.0, threads=1,
                      init_weights="tomogan-projection-s2d-aio")
    result = train_mod.train(cfg, resume="--resume" in sys.argv, progress=False)
    log.info("%s best epoch %s: %s", result.stopped, result.best_epoch, result.weights)


if __name__ == "__main__":
    main()
