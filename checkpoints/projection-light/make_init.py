"""The starting point of ``tomogan-projection-light``: the shipped All-in-One projection model at ratio 50,
its full-resolution layers cut to 16 channels (the most important ones, in the model's own order).
``--parent tomogan-slice-aio --name tomogan-slice-light`` makes the slice model's the same way.

At ratio 50 the full-resolution convolutions (``enc1.2``, ``dec1.0``, ``dec1.2``: 24, 24 and 20
channels) are most of the int8 time on a CPU without AMX, and OpenVINO's int8 kernels pad
their channels to multiples of 16 anyway. Cut to 16 they cost 36,396 MACs per pixel instead
of 46,308; the cut network is not trained as such (held-out SSIM 0.9548 before fine-tuning),
so it is fine-tuned with the shipped model's loss and data::

    .venv/bin/python checkpoints/projection-light/make_init.py runs/light16-init.pt
    .venv/bin/python -u checkpoints/projection-wide48/train_wide.py runs/light16-init.pt runs/proj-light16 40 2e-4
    .venv/bin/python checkpoints/projection-light/make_init.py --card runs/proj-light16 runs/light-src
    bluesky-tomogan export runs/light-src --out runs/light-export --data data/sim_projection_dose.h5
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from bluesky_tomogan.export.pipeline import torch_plan
from bluesky_tomogan.model.allinone import prune
from bluesky_tomogan.model.train import load_generator, resolve_weights

FULL_RESOLUTION_WIDTHS = {"enc1.2": 16, "dec1.0": 16, "dec1.2": 16}


def initial_weights(out: Path, parent: str, ratio: str = "50", cut: dict[str, int] | None = None) -> None:
    weights = resolve_weights(parent)
    plan = torch_plan(weights)
    assert plan is not None, f"{parent} is not an All-in-One model"
    widths = dict(plan.widths[ratio]) | FULL_RESOLUTION_WIDTHS | (cut or {})
    kept = {n: sorted(plan.order[n][: widths[n]]) for n in plan.order}
    small = prune(load_generator(weights), kept)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"generator": small.state_dict(), "arch": small.config.to_dict()}, out)
    print(f"{out}: {small.macs_per_pixel():.0f} MACs per pixel, widths {widths}")


def pruning(macs: float, parent: str, cut: dict[str, int] | None = None) -> dict[str, object]:
    """The card's ``pruning`` entry: the percent of the full network's MACs removed is the frames' ``ratio``.

    ``cut``: the layers' widths cut further from the trained light model
    (``checkpoints/projection-light-cut/cut.py``, session 35).
    """
    full = load_generator(resolve_weights(parent)).macs_per_pixel()
    entry: dict[str, object] = {
        "ratio": round(100 * (1 - macs / full), 1), "mac_fraction": macs / full, "parent": parent,
        "parent_ratio_widths": 50, "full_resolution_widths": FULL_RESOLUTION_WIDTHS,
        "method": "All-in-One ratio 50, full-resolution layers cut to 16 channels, fine-tuned"}
    if cut:
        entry["cut_from_light_model"] = cut
        entry["method"] += ("; then the channels of least weight magnitude cut from the trained light model "
                            "(cut_from_light_model), fine-tuned again")
    return entry


def named_model(run: Path, out: Path, name: str, parent: str, last_epoch: bool = False,
                cut: dict[str, int] | None = None) -> None:
    """Copy a training run's weights and card under the model's name, ready for ``bluesky-tomogan export``.

    ``last_epoch``: the run's last epoch (its ``checkpoint.pt``) instead of the kept weights, for a
    run whose validation score kept rising by less than ``min_delta`` (the distilled light model).
    """
    trained = next(run.glob("*.json")).stem  # the name the run trained under (``train_wide.py``'s)
    card = json.loads((run / f"{trained}.json").read_text())
    card["name"] = name
    out.mkdir(parents=True, exist_ok=True)
    if last_epoch:
        ck = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
        torch.save({"generator": ck["generator"], "arch": ck["config"]["arch"]}, out / f"{name}.pt")
        last = ck["history"][-1]
        card["training"]["weights_from"] = (f"checkpoint.pt: the last epoch ({last['epoch']}, validation SSIM "
                                            f"{last['val_ssim']:.4f}), not the kept epoch {ck['best_epoch']}")
    else:
        shutil.copy2(run / f"{trained}.pt", out / f"{name}.pt")
    card["pruning"] = pruning(load_generator(out / f"{name}.pt").macs_per_pixel(), parent, cut)
    (out / f"{name}.json").write_text(json.dumps(card, indent=2))
    print(f"{out / name}.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--card", type=Path, help="a finished training run: copy it under the model's name into OUT")
    ap.add_argument("--parent", default="tomogan-projection-aio", help="the All-in-One model whose ratio 50 is cut")
    ap.add_argument("--name", default="tomogan-projection-light", help="the light model's name (with --card)")
    ap.add_argument("--last-epoch", action="store_true", help="with --card: the run's last epoch (checkpoint.pt)")
    ap.add_argument("--cut", default="", help="more layers' widths, e.g. stem.0=4,enc1.0=16 (session 23); with "
                    "--card: the widths cut.py cut from the trained light model, recorded in the card (session 35)")
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    cut = {k: int(v) for k, v in (kv.split("=") for kv in args.cut.split(",") if kv)}
    if args.card:
        named_model(args.card, args.out, args.name, args.parent, args.last_epoch, cut)
    else:
        initial_weights(args.out, args.parent, cut=cut)


if __name__ == "__main__":
    main()
