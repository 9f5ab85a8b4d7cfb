"""Why pruning alone does not make the network fast here, and what the space-to-depth network does.

Usage::

    python benchmarks/space_to_depth.py [--sizes 512 1024]
        [--weights checkpoints/space-to-depth/tomogan-projection-s2d.pt --data data/sim_projection_dose.h5]

1. Plain OpenVINO bf16 (2 threads, median of 7 after 3 warm-up calls, no Denoiser around it)
   of: the full network; its All-in-One ratios 50 and 75 (shipped `tomogan-projection-aio`
   plan) with widths in multiples of 4 (as shipped) and rounded up to multiples of 16; the
   space-to-depth network (untrained weights: speed does not depend on them) and its
   ratio 50. Prints MACs per pixel and ms per frame, CPU named.
2. With ``--weights`` and ``--data``: a space-to-depth model against the shipped full model
   on 12 evenly spaced test frames (PSNR, largest error: where the gap comes from), and the
   mean SSIM/PSNR of both over 24 test frames with and without isolated spikes (zingers)
   removed from the input by a 3x3-median rule (how much of the gap zingers are).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time

import numpy as np
import torch

from bluesky_tomogan.bench import cpu_name
from bluesky_tomogan.export.onnx import export_onnx
from bluesky_tomogan.inference.load import shipped_weights_dir
from bluesky_tomogan.metrics import psnr, ssim
from bluesky_tomogan.model import allinone
from bluesky_tomogan.model.network import GeneratorConfig, TomoGANGenerator
from bluesky_tomogan.model.train import load_generator


def ms_per_frame(net: TomoGANGenerator, size: int) -> float:
    import openvino as ov

    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(net.correction_network(), f"{tmp}/m.onnx")
        model = core.compile_model(core.read_model(str(path)), "CPU",
                                   {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": 2})
    x = np.random.default_rng(0).random((1, 3, size, size), np.float32)
    for _ in range(3):
        model(x)
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def networks() -> dict[str, TomoGANGenerator]:
    pt = shipped_weights_dir() / "tomogan-projection-aio.pt"
    plan = allinone.PrunePlan.from_dict(torch.load(pt, map_location="cpu", weights_only=True)["prune_plan"])
    full = load_generator(pt)
    nets = {"full network": full}
    for r in (50, 75):
        widths = plan.widths[str(r)]
        nets[f"ratio {r}, widths x4 (shipped)"] = allinone.prune(full, plan.kept(r))
        x16 = {n: min(len(plan.order[n]), 16 * math.ceil(k / 16)) for n, k in widths.items()}
        nets[f"ratio {r}, widths x16"] = allinone.prune(full, {n: sorted(plan.order[n][: x16[n]]) for n in widths})
    torch.manual_seed(0)
    s2d = TomoGANGenerator(GeneratorConfig(input_downscale=2, downscale="space-to-depth")).eval()
    x = torch.rand(2, 3, 64, 64)
    importance = allinone.channel_importance(s2d, [(x, x[:, 1:2])], lambda p, t: (p - t).abs().mean())
    s2d_plan = allinone.plan_pruning(s2d, importance, [50])
    nets["space-to-depth"] = s2d
    nets["space-to-depth, ratio 50"] = allinone.prune(s2d, s2d_plan.kept(50))
    return nets


def errors(weights: str, data: str) -> None:
    from bluesky_tomogan.model.data import normalised_frames
    from bluesky_tomogan.simulate.datasets import read_dataset

    test = read_dataset(data).split("test")
    small, full = load_generator(weights), load_generator(shipped_weights_dir() / "tomogan-projection-aio.pt")
    print("\n| test frame | raw PSNR | space-to-depth PSNR | full PSNR | largest error (space-to-depth) |")
    print("|---|---|---|---|---|")
    for i in np.linspace(0, len(test.ns) - 1, 12).astype(int):
        x, y = normalised_frames(test, int(i), 3)
        with torch.no_grad():
            a = small(torch.from_numpy(x[None]))[0, 0].numpy()
            b = full(torch.from_numpy(x[None]))[0, 0].numpy()
        print(f"| {i} | {psnr(y[0], x[1]):.1f} | {psnr(y[0], a):.1f} | {psnr(y[0], b):.1f} | "
              f"{np.abs(a - y[0]).max():.2f} |")
    print("\nMean over 24 test frames, the input as it is and with isolated spikes removed (a pixel more than"
          f" {SPIKE_SIGMAS} robust sigmas above its 3x3 median takes the median, in each input frame):\n")
    print("| network | SSIM | PSNR | SSIM, spikes removed | PSNR, spikes removed |")
    print("|---|---|---|---|---|")
    for label, net in (("space-to-depth", small), ("full", full)):
        scores: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for i in np.linspace(0, len(test.ns) - 1, 24).astype(int):
            x, y = normalised_frames(test, int(i), 3)
            for despiked in (False, True):
                with torch.no_grad():
                    out = net(torch.from_numpy(remove_spikes(x) if despiked else x)[None])[0, 0].numpy()
                scores[despiked].append((ssim(y[0], out), psnr(y[0], out)))
        (s0, p0), (s1, p1) = (np.mean(scores[d], axis=0) for d in (False, True))
        print(f"| {label} | {s0:.4f} | {p0:.2f} | {s1:.4f} | {p1:.2f} |")


SPIKE_SIGMAS = 12.0


def remove_spikes(x: np.ndarray) -> np.ndarray:
    """Each frame of ``x`` with pixels far above their 3x3 median (zingers) replaced by it."""
    from scipy.ndimage import median_filter

    out = x.copy()
    for frame in out:
        median = median_filter(frame, 3)
        excess = frame - median
        sigma = max(1.4826 * float(np.median(np.abs(excess))), 1e-6)
        spike = excess > SPIKE_SIGMAS * sigma
        frame[spike] = median[spike]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--weights")
    ap.add_argument("--data")
    args = ap.parse_args(argv)
    nets = networks()
    print(f"CPU: {cpu_name()}; plain OpenVINO bf16, 2 threads, median of 7\n")
    print("| network | MACs / pixel | " + " | ".join(f"ms at {s}x{s}" for s in args.sizes) + " |")
    print("|---|---|" + "---|" * len(args.sizes))
    for label, net in nets.items():
        cells = " | ".join(f"{ms_per_frame(net, s):.1f}" for s in args.sizes)
        print(f"| {label} | {net.macs_per_pixel():,.0f} | {cells} |")
    if args.weights and args.data:
        errors(args.weights, args.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
