"""``bluesky-tomogan`` command line: simulate, merge, train, average, export, denoise, reprocess, center, bench,
demo, models, serve, view."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import TomoGANError
from .frames import COMPRESSION_NAMES, FRAME_DTYPES
from .inference.registry import PRECISIONS, backend_names, configurations
from .inference.self_ensemble import SELF_ENSEMBLE_SIZES

__all__ = ["main", "build_parser", "version_report", "REPORTED_PACKAGES"]

log = logging.getLogger("bluesky_tomogan.cli")
ANGLE_FIELD_HELP = ("the data key of each frame's angle, where it is not the start document's first 'motors' entry "
                    "(a fly scan's encoder capture, such as panda-inenc-1-val): for the denoising context, QC and, "
                    "with --reconstruct, the slices")


#: The packages whose versions decide what a run does, by what they do: ``--version`` prints them,
#: for a bug report.
REPORTED_PACKAGES: dict[str, tuple[str, ...]] = {
    "Bluesky": ("bluesky", "event-model", "ophyd", "ophyd-async", "tiled", "bluesky-tiled-plugins"),
    "inference": ("numpy", "openvino", "onnxruntime", "ai-edge-litert", "tensorrt"),
    "training and export": ("torch", "tensorflow-cpu", "nncf"),
}


def version_report() -> str:
    """``bluesky-tomogan --version``: this package's version, then Python, the CPU and its speed
    instruction sets, and the version of each of :data:`REPORTED_PACKAGES` (or that it is not installed), a
    line per group."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__
    from .cpu import SPEED_FLAGS, cpu_flags, cpu_name

    def installed(name: str) -> str:
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            return f"{name} (not installed)"

    flags = " ".join(f for f in SPEED_FLAGS if f in cpu_flags()) or "none of " + " ".join(SPEED_FLAGS)
    return "\n".join([
        f"bluesky-tomogan {__version__}",
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}",
        f"CPU: {cpu_name()} ({flags})",
        *(f"{group}: " + ", ".join(installed(name) for name in names) for group, names in REPORTED_PACKAGES.items()),
    ])


class _VersionAction(argparse.Action):
    """``--version``: print :func:`version_report` and exit (made only when asked: it reads package metadata)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:  # noqa: A002 (argparse's name)
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(version_report())
        parser.exit()


def _path_pair(text: str) -> tuple[str, str]:
    """An argparse type: ``THERE=HERE``, two non-empty paths."""
    there, sep, here = text.partition("=")
    if not sep or not there or not here:
        raise argparse.ArgumentTypeError(f"expected THERE=HERE (two paths), got {text!r}")
    return there, here


def _context_frames(text: str) -> int:
    """An argparse type: an odd number of frames, at least 1 (the centre frame and as many on each side)."""
    frames = count(1)(text)
    if frames % 2 == 0:
        raise argparse.ArgumentTypeError(f"the context is the centre frame and as many on each side: an odd "
                                         f"number, got {frames}")
    return frames


def count(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum`` (a clear usage error otherwise, not a traceback
    from deep inside the command)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {value}")
        return value

    parse.__name__ = f"count >= {minimum}"
    return parse


def row_range(text: str) -> tuple[int, int]:
    """An argparse type: detector rows ``FIRST:STOP``, as a Python slice reads them.

    Only the form is checked here; ``FinetuneConfig`` refuses a range that is empty or
    starts below 0, with the same words wherever the rows come from.
    """
    first, sep, stop = text.partition(":")
    try:
        if sep:
            return int(first), int(stop)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected detector rows FIRST:STOP (two integers), got {text!r}")


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .simulate.datasets import Recipe, make_dataset

    try:
        recipe = Recipe(
        domain=args.domain, size=args.size, families=tuple(args.families or ()) or Recipe().families,
        photons=tuple(args.photons), max_attenuation=tuple(args.max_attenuation),
        frames_per_scan=args.frames_per_scan, psf_sigma=tuple(args.psf), zinger_rate=args.zingers,
        fringes=tuple(args.fringes), column_gain_error=tuple(args.column_gain_error), filters=tuple(args.filters),
        pixel_gain_error=tuple(args.pixel_gain_error), sample_grain=tuple(args.sample_grain),
        eight_bit=args.eight_bit,
        realistic_fraction=args.realistic_fraction, beyond_view=args.beyond_view,
        beyond_width=tuple(args.beyond_width),
        view_fractions=tuple(args.view_fractions), n_angles=args.n_angles,
        )
    except ValueError as exc:
        print(f"bluesky-tomogan simulate: error: {exc}", file=sys.stderr)
        return 2
    path = make_dataset(args.out, recipe, args.n_train, args.n_test, args.seed, args.workers)
    print(f"wrote {path}")
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from .simulate.datasets import merge_datasets

    path = merge_datasets(args.out, args.sources)
    print(f"wrote {path}")
    return 0


def _cmd_average(args: argparse.Namespace) -> int:
    from .model.average import average_models

    path = average_models(args.first, args.second, args.out, weight=args.weight, name=args.name)
    print(f"wrote {path} and its weights; measure and export it: bluesky-tomogan export {path.parent} --data <a "
          "dataset of its domain>")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .model.network import GeneratorConfig
    from .model.train import TrainConfig, train

    arch = GeneratorConfig(upsample=args.upsample, input_downscale=args.input_downscale, downscale=args.downscale,
                           width=args.width, residual=not args.no_residual, in_channels=args.context)
    # All-in-One training takes the pixel loss only: the critic's weights default to 0 with --ratios
    adv = args.adv_weight if args.adv_weight is not None else (0.0 if args.ratios else 1e-3)
    feat = args.feat_weight if args.feat_weight is not None else (0.0 if args.ratios else 0.05)
    try:
        cfg = TrainConfig(
            data=args.data, out_dir=args.out, name=args.name, domain=args.domain, arch=arch, patch=args.patch,
            batch=args.batch, steps_per_epoch=args.steps_per_epoch, max_epochs=args.epochs, patience=args.patience,
            min_delta=args.min_delta,
            time_budget_s=args.time_budget * 60, lr=args.lr, pixel=args.pixel, dose_balance=args.dose_balance,
            context_dropout=args.context_dropout,
            adv_weight=adv, feat_weight=feat, precision=args.precision, threads=args.threads, seed=args.seed,
            qat_steps=args.qat_steps, init_weights=args.init or "", ratios=tuple(args.ratios or ()),
            teacher=args.teacher or "", distill_weight=args.distill_weight, ema_decay=args.ema_decay,
        )
    except ValueError as exc:
        print(f"bluesky-tomogan train: error: {exc}", file=sys.stderr)
        return 2
    result = train(cfg, resume=args.resume, progress=not args.no_progress)
    # the epoch whose weights were written: the last one that beat the one before by min_delta,
    # not necessarily the highest validation score (a later, smaller gain is not kept)
    best = next((h for h in result.history if h["epoch"] == result.best_epoch), {})
    print(f"stopped: {result.stopped}")
    if best:
        print(f"best epoch {best['epoch']} (its weights written): val PSNR {best['val_psnr']:.2f} dB, "
              f"SSIM {best['val_ssim']:.4f}")
    print(f"weights: {result.weights}\nmodel card: {result.card}\ncheckpoint: {result.checkpoint}")
    return 0


def _print_quality(card: dict) -> None:
    for key, q in sorted(card.get("quantization", {}).items()):
        drop, worst = q.get("ssim_drop"), q.get("ssim_drop_worst")
        extra = f"  (SSIM loss vs fp32: mean {drop:+.4f}, worst frame {worst:+.4f})" if drop is not None else ""
        print(f"  {key:18s} SSIM {q['ssim']:.4f}  PSNR {q['psnr']:.2f} dB{extra}")


def _cmd_quality(args: argparse.Namespace) -> int:
    from .export.pipeline import record_quality, record_ratio_quality
    from .inference.load import load_card
    from .simulate.datasets import read_dataset

    card = load_card(args.model)
    test = read_dataset(args.data).split("test")
    # an All-in-One model's ratios are part of it: each has its own card and precision losses
    for each in card.ratio_cards().values():
        path = record_quality(each.directory / f"{each.name}.json", test, args.frames,
                              source=f"{Path(args.data).name} (test split)", only=args.only)
        print(f"model card: {path}")
        _print_quality(json.loads(path.read_text()))
    if card.ratios and args.only is None:  # the ratios' summary in the model's own card, from what was just measured
        record_ratio_quality(card.directory / f"{card.name}.json")
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .finetune import FinetuneConfig, finetune
    from .inference.catalogue import check_install, install_model

    cfg = FinetuneConfig(source=args.source, out_dir=args.out, domain=args.domain, uid=args.uid, field=args.field,
                         key=args.key, angle_field=args.angle_field, model=args.model, minutes=args.minutes,
                         splits=args.splits, threads=args.threads, formats=tuple(args.format), seed=args.seed,
                         rows=args.rows, angles=args.angles, flats=args.flats, darks=args.darks)
    if args.install is not None:  # a name that cannot be installed is said before the training, not after
        check_install(args.install, force=args.force_install)
    result = finetune(cfg, resume=args.resume, progress=not args.no_progress)
    data = json.loads(result.card.read_text())
    print(f"stopped: {result.stopped} after {result.wall_time_s:.0f} s")
    print(f"model card: {result.card}")
    for kind, entry in sorted(data["files"].items()):
        print(f"  {kind:14s} {entry['path']}")
    where = str(result.card.parent)
    if args.install is not None:
        installed = install_model(result.card, args.install, force=args.force_install)
        print(f"installed as {installed.name!r} ({installed.card.parent})")
        where = installed.name
    if args.domain == "slice":
        print(f"use it: TomoReconstruction(load_denoiser({where!r})), in a 0MQ worker: bluesky-tomogan serve ... "
              f"--reconstruct --slice-model {where}, or on a stored run: bluesky-tomogan "
              f"reprocess TILED --uid UID --into new --reconstruct --slice-model {where}")
    else:
        print(f"use it: TomoGANCallback(load_denoiser({where!r})), or on a stored run: bluesky-tomogan "
              f"reprocess TILED --uid UID --model {where}")
    return 0


#: Detector rows ``bluesky-tomogan center`` reads by default: the middle ones, at most this many.
CENTER_ROWS = 64


def _cmd_center(args: argparse.Namespace) -> int:
    from .errors import ScanError
    from .finetune import read_scan
    from .finetune.pairs import scan_center, scan_offset_axis
    from .reconstruction import extended_width

    def band(shape: tuple[int, int, int]) -> slice:
        rows = shape[1]
        if args.rows is None:
            keep = min(rows, CENTER_ROWS)
            return slice((rows - keep) // 2, (rows - keep) // 2 + keep)
        first, stop = args.rows
        if not 0 <= first < min(stop, rows):
            raise ScanError(f"rows {first}:{stop} hold none of the scan's {rows} detector rows (0..{rows - 1})")
        return slice(first, min(stop, rows))

    scan = read_scan(args.source, args.uid, args.field, args.key, band, args.angle_field, angles=args.angles,
                     flats=args.flats, darks=args.darks)
    center, how = scan_center(scan)
    span = float(scan.angles.max() - scan.angles.min())
    print(f"rotation centre {center:.2f} px, by {how} ({len(scan.angles)} projections over {span:.1f} degrees, "
          f"{scan.shape[2]} columns, {scan.shape[1]} detector rows read)")
    if scan_offset_axis(scan, center):
        wide = extended_width(scan.shape[2], center)
        print(f"an offset axis (half acquisition): {abs(center - (scan.shape[2] - 1) / 2):.1f} px off the middle; "
              f"the live reconstruction and finetune make its slices over the doubled field of view, {wide} px wide")
    print(f"use it: TomoReconstruction(center={center:.2f}), or tomopy.recon(..., center={center:.2f})")
    return 0


def _slice_geometry_arguments(s: argparse.ArgumentParser, found: str) -> None:
    """``--center`` and ``--binning`` of ``serve`` and ``reprocess``: TomoReconstruction's ``center`` and ``binning``
    (by default the centre is ``found``)."""
    s.add_argument("--center", type=float, metavar="PX",
                   help=f"with --reconstruct: the rotation centre in pixels (default: {found}; bluesky-tomogan "
                        "center prints it for a stored scan)")
    s.add_argument("--binning", type=int, metavar="N",
                   help="with --reconstruct: average N detector columns before reconstructing (default: none up to "
                        "2048 columns, else to 2048; 1: full width)")


def _layer_copies(text: str) -> tuple[str, int]:
    name, sep, k = text.partition("=")
    if not sep or not name or not k.isdigit() or int(k) < 1:
        raise argparse.ArgumentTypeError(f"expected LAYER=K with K >= 1 (e.g. stem.0=4), got {text!r}")
    return name, int(k)


def _cmd_export(args: argparse.Namespace) -> int:
    formats = tuple(args.format)
    if "tensorrt" in formats:
        from .export.tensorrt import build_engine_from_card

        for precision in args.trt_precision:
            path = build_engine_from_card(args.model, precision=precision, tile=args.tile,
                                          calibration_data=args.data)
            print(f"wrote {path}")
        formats = tuple(f for f in formats if f != "tensorrt")
    if formats:
        from .export.pipeline import DEFAULT_TILE, export_model

        copies = None if args.activation_copies is None else dict(args.activation_copies)
        card = export_model(args.model, args.out or args.model, args.data, formats, tile=args.tile or DEFAULT_TILE,
                            n_calibration=args.calibration, measure=not args.no_measure,
                            activation_copies=copies, float_weights=args.float_weights,
                            openvino_copies=None if args.openvino_copies is None else dict(args.openvino_copies),
                            input_despike=args.input_despike, openvino_qat_steps=args.openvino_qat_steps,
                            qat_data=args.qat_data, qat_lr=args.qat_lr, qat_float=tuple(args.qat_float),
                            qat_copies=None if args.qat_copies is None else dict(args.qat_copies),
                            qat_distill=args.qat_distill, qat_float_sums=args.qat_float_sums,
                            qat_weight_bits=args.qat_weight_bits)
        data = json.loads(Path(card).read_text())
        print(f"model card: {card}")
        for kind, entry in sorted(data["files"].items()):
            print(f"  {kind:14s} {entry['path']}")
        _print_quality(data)
    return 0


def _cmd_denoise(args: argparse.Namespace) -> int:
    import dataclasses

    from tqdm.auto import tqdm

    from .frame_files import check_output, denoise_file, open_frames, read_angles
    from .frames import NEIGHBOUR_DEGREES
    from .inference import load_denoiser

    dest = check_output(args.output, args.input)  # before any work: a typo must not cost a long run
    with open_frames(args.input, args.key) as source:
        if args.angles is not None:
            source = dataclasses.replace(source, angles=read_angles(args.angles, source.shape[0]))
        den = load_denoiser(args.model, backend=args.backend, precision=args.precision, threads=args.threads,
                            ratio=args.ratio, self_ensemble=args.self_ensemble)
        if source.projections:
            from .callbacks.tomogan import warn_if_domain_is_not

            warn_if_domain_is_not(den, "projection", f"{args.input} holds a detector's frames (flat fields or an "
                                                     "image_key beside them)")
        with tqdm(total=source.shape[0], unit="frame", disable=None, desc="denoise") as bar:
            denoise_file(den, source, dest, keep_dtype=args.keep_dtype, frames_only=args.frames_only,
                         progress=bar.update, compression=args.compression)
    shape = source.shape[1:] if source.single else source.shape
    context = ("" if source.single else f"; context: neighbours within {NEIGHBOUR_DEGREES:g} degrees of each frame's "
               "angle" if source.angles is not None else "; context: neighbours in the order stored")
    print(f"denoised {shape} with {den!r}{context} -> {dest}")
    return 0


def _cmd_reprocess(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .callbacks import SCAN_STREAMS
    from .inference import load_denoiser
    from .reprocess import REPROCESSED_FROM, ReprocessError, reprocess
    from .storage import close_tiled, open_tiled

    den = load_denoiser(args.model, backend=args.backend, precision=args.precision, threads=args.threads,
                        self_ensemble=args.self_ensemble)
    slices = (load_denoiser(args.slice_model, backend=args.backend, threads=args.threads,
                            self_ensemble=args.self_ensemble) if args.reconstruct else None)
    client = open_tiled(args.tiled, ReprocessError, create=False)
    try:
        before = set(client[args.uid]) if args.uid in client else set()
        with tqdm(unit="doc", disable=None, desc="replay") as bar:
            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            # the callback's notes (streams renamed, frames that failed) are logged as they come
            written, _ = reprocess(client, args.uid, den, into=args.into, streams=args.streams or SCAN_STREAMS,
                                   fields=args.fields, directory=args.directory, root_map=dict(args.root_map),
                                   reconstruct=slices, progress=progress, frame_dtype=args.frame_dtype,
                                   compression=args.compression, angle_field=args.angle_field, center=args.center,
                                   binning=args.binning)
        if args.into == "run":
            added = sorted(set(client[written]) - before)
            print(f"run {args.uid} denoised with {den!r}; streams added to it: {added}")
        else:
            print(f"run {args.uid} denoised with {den!r} into the new run {written} (streams {list(client[written])})")
            print(f"every reprocessing of the scan: client.search(Key('start.{REPROCESSED_FROM}') == {args.uid!r})")
    finally:
        close_tiled(client)
    return 0


def _quality_line(key: str, q: Mapping[str, Any]) -> str:
    """One measured entry of a card: SSIM, and the mean and worst-frame loss against fp32."""
    line = f"    {key:22s} SSIM {q['ssim']:.4f}"
    if "ssim_drop" in q:
        line += f"  loss {q['ssim_drop']:+.4f} mean"
        if "ssim_drop_worst" in q:
            line += f", {q['ssim_drop_worst']:+.4f} worst frame"
    return line + (f"  ({q['cpu']})" if "cpu" in q else "")


def _cmd_models(args: argparse.Namespace) -> int:
    from .inference.catalogue import installed_models, model_directories
    from .inference.load import load_card, load_denoiser

    if args.models_command == "install":
        return _cmd_models_install(args)
    if args.models_command == "remove":
        return _cmd_models_remove(args)
    for entry in installed_models():
        try:
            card = load_card(entry.card)
        except TomoGANError as exc:
            print(f"{entry.name}: unreadable ({exc}) [{entry.source}: {entry.card}]")
            continue
        m = card.metrics
        where = "" if entry.source == "shipped" else f" [{entry.source}: {entry.card.parent}]"
        print(f"{entry.name}: {card.domain} domain, files {sorted(card.files)}, "
              f"val SSIM {m.get('val_ssim', float('nan')):.4f} (raw {m.get('val_raw_ssim', float('nan')):.4f})"
              + where)
        for key, q in sorted(card.quantization.items()):
            print(_quality_line(key, q))
        if args.here:
            try:
                den = load_denoiser(entry.card)
                print(f"    auto here: {den.backend}/{den.precision}")
            except TomoGANError as exc:
                print(f"    auto here: none ({str(exc).splitlines()[0]})")
        for key in sorted(card.ratios, key=float):  # an All-in-One model: every pruning ratio
            r = card.ratios[key]
            loss = r.get("ssim_drop_vs_full")
            print(f"    ratio {key:>4s}%  {r.get('macs_per_pixel', float('nan')):8.0f} MACs/pixel "
                  f"({r.get('mac_fraction', float('nan')):.2f} of ratio 0)"
                  + (f", SSIM loss vs ratio 0 {loss:+.4f}" if loss is not None else ""))
    print("models by name are looked up in: the shipped weights, then "
          + ", ".join(f"{source} ({path})" for source, path in model_directories()))
    return 0


def _cmd_models_install(args: argparse.Namespace) -> int:
    from .inference.catalogue import install_model

    entry = install_model(args.model, args.name, into=args.into, force=args.force)
    print(f"installed {entry.name!r} in {entry.card.parent}: load_denoiser({entry.name!r}), "
          f"or --model {entry.name} on the command line")
    return 0


def _cmd_models_remove(args: argparse.Namespace) -> int:
    from .inference.catalogue import remove_model

    removed = remove_model(args.name, into=args.into)
    print(f"removed {removed}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    argv = ["--sizes", *map(str, args.sizes), "--repeats", str(args.repeats), "--model", args.model]
    if args.json:
        argv += ["--json", args.json]
    return bench_main(argv)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    metrics = run_demo(Path(args.out).expanduser(), size=args.size, n_angles=args.angles, photons=args.photons,
                       backend=args.backend, exposure=args.exposure, faults=args.faults, policy=args.policy,
                       report=print, live_view=args.live_view, fly=args.fly, capture=args.capture,
                       zingers=args.zingers, blur=args.blur, sample_width=args.sample_width, turn=args.turn,
                       axis_offset=args.axis_offset)
    ok = metrics["exit_status"] == "success" and (args.faults or metrics["qc_errors"] == 0)
    return 0 if ok else 1


def _kafka_cluster(args: argparse.Namespace) -> Any:
    """The ``KafkaCluster`` that ``--kafka-bootstrap`` and ``--kafka-config`` name, or None."""
    if not (args.kafka_bootstrap or args.kafka_config):
        return None
    from .serve.kafka import KafkaCluster

    if args.kafka_config:
        return KafkaCluster.from_file(args.kafka_config, bootstrap_servers=args.kafka_bootstrap)
    return KafkaCluster(args.kafka_bootstrap)


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve import ServeError, serve

    try:
        return serve(args.zmq_in, kafka=_kafka_cluster(args), kafka_in=args.kafka_in or (), kafka_out=args.kafka_out,
                     kafka_group=args.kafka_group, tiled=args.tiled, store=args.store, zmq_out=args.zmq_out,
                     republish_raw=args.republish == "all", model=args.model,
                     backend=args.backend, streams=args.streams, fields=args.fields, policy=args.policy,
                     reconstruct=args.reconstruct, reconstruct_every=args.every, directory=args.directory,
                     state_dir=args.state_dir, share=args.share, grace=args.grace, prefix=args.prefix.encode(),
                     ioc_prefix=args.ioc_prefix, retry_after=args.retry_after, fallback=args.fallback,
                     warm_up=tuple(args.warm_up) if args.warm_up else None,
                     abandon_after=args.abandon_after or None, root_map=dict(args.root_map),
                     slice_model=args.slice_model, slice_self_ensemble=args.slice_self_ensemble,
                     frame_dtype=args.frame_dtype, compression=args.compression, angle_field=args.angle_field,
                     center=args.center, binning=args.binning)
    except (ServeError, ValueError) as exc:
        log.error("%s", exc)
        print(f"bluesky-tomogan serve: error: {exc}", file=sys.stderr)
        return 2


def _cmd_qc_ioc(args: argparse.Namespace) -> int:
    from .serve.ioc import run_qc_ioc
    from .serve.transport import Unreachable

    try:
        return run_qc_ioc(args.zmq_in, args.prefix, retry_after=args.retry_after, kafka=_kafka_cluster(args),
                          kafka_in=args.kafka_in or (), kafka_group=args.kafka_group)
    except (Unreachable, ValueError) as exc:
        print(f"bluesky-tomogan qc-ioc: error: {exc}", file=sys.stderr)
        return 2


def _cmd_view(args: argparse.Namespace) -> int:
    from .serve.transport import Unreachable
    from .serve.viewer import run_viewer

    if args.run is not None and args.tiled is None:
        print("bluesky-tomogan view: error: --run picks a run of a Tiled catalog: give --tiled too", file=sys.stderr)
        return 2
    try:
        if args.tiled is not None:
            from .serve.tiled_view import run_tiled_viewer

            return run_tiled_viewer(args.tiled, run=args.run, stream=args.stream, row=args.row, save=args.save,
                                    interval=1.0 if args.interval is None else args.interval)
        return run_viewer(args.zmq_in, stream=args.stream, row=args.row, root_map=dict(args.root_map),
                          save=args.save, interval=0.5 if args.interval is None else args.interval,
                          kafka=_kafka_cluster(args), kafka_in=args.kafka_in or (), kafka_group=args.kafka_group)
    except (Unreachable, ValueError, TomoGANError) as exc:
        print(f"bluesky-tomogan view: error: {exc}", file=sys.stderr)
        return 2


def _stream_arguments(s: argparse.ArgumentParser, zmq_help: str, topics_help: str, group_help: str,
                      tiled_help: str | None = None) -> None:
    """Where a command reads documents: ``--zmq-in HOST:PORT`` or ``--kafka-in TOPIC...`` (with the brokers:
    ``--kafka-bootstrap``, ``--kafka-config``) and ``--kafka-group``; with ``tiled_help``, ``--tiled URI``
    is a third choice."""
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument("--zmq-in", metavar="HOST:PORT", help=zmq_help)
    where.add_argument("--kafka-in", nargs="+", metavar="TOPIC", help=topics_help)
    if tiled_help is not None:
        where.add_argument("--tiled", metavar="URI", help=tiled_help)
    s.add_argument("--kafka-bootstrap", metavar="HOST:PORT[,HOST:PORT]",
                   help="the Kafka brokers (or bootstrap_servers in --kafka-config)")
    s.add_argument("--kafka-config", metavar="FILE",
                   help="a beamline's Kafka YAML (as /etc/bluesky/kafka.yml: bootstrap_servers, "
                        "producer_consumer_security_config, runengine_producer_config, consumer_config)")
    s.add_argument("--kafka-group", metavar="ID", help=group_help)


def _storage_arguments(s: argparse.ArgumentParser) -> None:
    """``--frame-dtype`` and ``--compression``: how derived frames are stored, as ``TomoGANCallback`` takes them."""
    s.add_argument("--frame-dtype", choices=FRAME_DTYPES, default="float32",
                   help="store derived frames as float32 (default), as the raw frames' integer type (source), or as "
                        "an integer type: rounded, half the space of float32 for 16-bit detectors")
    s.add_argument("--compression", choices=COMPRESSION_NAMES, default=None,
                   help="lossless compression of each derived frame (lz4, zstd: bit shuffle as Eiger files; gzip); "
                        "default none")


def _denoiser_arguments(s: argparse.ArgumentParser, model_help: str) -> None:
    """``--model``, ``--backend``, ``--precision``, ``--threads`` and ``--self-ensemble``: what ``load_denoiser``
    takes."""
    s.add_argument("--model", default=None, help=model_help)
    s.add_argument("--backend", default="auto", choices=backend_names())
    s.add_argument("--precision", default="auto", choices=PRECISIONS)
    s.add_argument("--threads", type=count(1), default=None)
    s.add_argument("--self-ensemble", type=int, choices=SELF_ENSEMBLE_SIZES, default=1, metavar="N",
                   help="run the network on N mirrored and turned copies of each frame and average: N times the "
                        "time, less painted-in texture (1, 2, 4 or 8; default 1; docs/models.md, 'Self-ensemble')")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``bluesky-tomogan``."""
    p = argparse.ArgumentParser(prog="bluesky-tomogan", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    p.add_argument("--version", action=_VersionAction,
                   help="print the version, Python, the CPU and the versions of the runtimes, and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("demo", help="a simulated low-dose scan denoised live and stored in Tiled, with a figure")
    s.add_argument("--out", default="tomogan-demo", help="store and figure directory (default: ./tomogan-demo)")
    s.add_argument("--size", type=int, default=512, help="frame size (default 512)")
    s.add_argument("--exposure", type=float, default=0.1, help="simulated exposure per frame, s (default 0.1)")
    s.add_argument("--angles", type=int, default=180, help="projections over the turn (default 180)")
    s.add_argument("--photons", type=float, default=500.0, help="incident photons per pixel (dose)")
    s.add_argument("--backend", default="auto", choices=backend_names())
    s.add_argument("--faults", action="store_true",
                   help="lose the beam for 2 s and saturate three frames during the scan (see the QC timeline)")
    s.add_argument("--live-view", action="store_true",
                   help="show the newest raw and denoised projection and the newest live slice in windows during "
                        "the scan (needs a display)")
    s.add_argument("--policy", choices=["block", "adaptive"], default="block",
                   help="block: the full projection model denoises every frame and the scan waits for it (the "
                        "default); adaptive: the All-in-One ladder steps down to lighter networks while the "
                        "denoiser falls behind this CPU")
    s.add_argument("--fly", action="store_true",
                   help="a fly scan (tomo_fly_scan) of the simulated ophyd-async beamline: the sample turns at "
                        "constant speed while the camera takes a frame every --exposure seconds (needs the fly "
                        "extra: pip install -e '.[fly]')")
    s.add_argument("--capture", action="store_true",
                   help="with --fly: a simulated PandA captures each frame's angle beside the frames, and the "
                        "callback and the reconstruction take those (angle_field panda-inenc-1-val), not the plan's "
                        "nominal ones")
    s.add_argument("--zingers", type=float, default=0.0, metavar="RATE",
                   help="zingers per pixel and frame (e.g. 1e-3): specks of X-rays scattered into the scintillator, "
                        "new in every frame, which the despike and QC take out (default 0)")
    s.add_argument("--blur", type=float, default=0.0, metavar="SIGMA",
                   help="the camera's blur, a Gaussian's sigma in pixels (e.g. 0.8): a scintillator's, which "
                        "correlates the noise of neighbouring pixels (default 0)")
    s.add_argument("--sample-width", type=float, default=1.0, metavar="W",
                   help="the bead pack's width in fields of view (e.g. 1.8): the camera sees the middle of a wider "
                        "sample at every angle (local tomography: no open beam beside it), whose slices fill the "
                        "reconstruction circle (default 1: the whole sample in view)")
    s.add_argument("--turn", type=float, choices=[180.0, 360.0], default=180.0, metavar="DEGREES",
                   help="degrees the sample turns over the scan: 180 (default) or 360")
    s.add_argument("--axis-offset", type=float, default=0.0, metavar="PX",
                   help="where the rotation axis projects, in pixels right of the camera's middle (default 0); "
                        "with --turn 360 and --sample-width about 2, an offset-axis (half-acquisition) scan whose "
                        "live slices span the doubled field of view (e.g. --size 256 --turn 360 --angles 360 "
                        "--sample-width 1.8 --axis-offset 100)")
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser("serve", help="denoise runs from a bluesky 0MQ or Kafka stream in this process "
                                     "(docs/deployment.md)")
    _stream_arguments(s, "bluesky-0MQ-proxy out port to read",
                      "Kafka topics the RunEngine publishes to (bluesky_kafka.Publisher), e.g. "
                      "tst.bluesky.runengine.documents",
                      "Kafka consumer group (default bluesky-tomogan-serve-K-of-N for --share K/N); its offset is "
                      "committed after each finished run, so a restarted worker goes on from there")
    s.add_argument("--tiled", metavar="URI|DIR",
                   help="Tiled server of the runs (URI with ?api_key= if needed), or a directory for an embedded one")
    s.add_argument("--store", choices=["derived", "run", "none"], default="derived",
                   help="derived: add derived streams to the run the RunEngine host stores (default); "
                        "run: store the whole run here; none: store nothing")
    out = s.add_mutually_exclusive_group()
    out.add_argument("--zmq-out", metavar="HOST:PORT", help="a second proxy's in port: republish derived documents")
    out.add_argument("--kafka-out", metavar="TOPIC", help="a Kafka topic to republish derived documents to")
    s.add_argument("--republish", choices=["derived", "all"], default="derived",
                   help="with --zmq-out or --kafka-out: the derived documents only (default), or the raw ones too "
                        "(one stream that `view` shows whole)")
    s.add_argument("--model", default="tomogan-projection")
    s.add_argument("--backend", default="auto", choices=backend_names())
    s.add_argument("--streams", nargs="+", help="streams to denoise (default: primary flat)")
    s.add_argument("--fields", nargs="+", help="image fields to denoise (default: every 2-D field)")
    s.add_argument("--policy", default="block", choices=["block", "drop-oldest", "latest-only", "adaptive"],
                   help="when the denoiser falls behind; adaptive: switch the pruning ratio of an All-in-One "
                        "--model (e.g. tomogan-projection-aio)")
    s.add_argument("--fallback", metavar="MODEL",
                   help="with --policy adaptive: a lighter model to step down to after the lightest ratio "
                        "(e.g. tomogan-projection-s2d-aio)")
    s.add_argument("--warm-up", type=count(8), nargs=2, metavar=("H", "W"),
                   help="with --policy adaptive: run and time every network at the detector's frame shape at "
                        "start-up, so that the first scan does not wait for it")
    s.add_argument("--reconstruct", action="store_true", help="reconstruct and denoise three slices live")
    s.add_argument("--every", type=count(0), default=0, help="progressive reconstruction every N projections")
    s.add_argument("--slice-model", default="tomogan-slice",
                   help="with --reconstruct: the slice model (default tomogan-slice; or one fine-tuned on a scan "
                        "of the sample, bluesky-tomogan finetune)")
    _slice_geometry_arguments(s, "found for each run")
    s.add_argument("--angle-field", metavar="KEY", help=ANGLE_FIELD_HELP)
    s.add_argument("--slice-self-ensemble", type=int, choices=SELF_ENSEMBLE_SIZES, default=1, metavar="N",
                   help="with --reconstruct: denoise each slice as the mean of the slice model on N turned copies "
                        "(1, 2, 4 or 8; N times three slices' cost; docs/models.md, 'Self-ensemble')")
    s.add_argument("--directory", help="where derived frames are written (default: next to the raw frames)")
    s.add_argument("--root-map", nargs="+", type=_path_pair, default=[], metavar="THERE=HERE",
                   help="the detector's files written under THERE are read under HERE on this machine "
                        "(e.g. /ioc/data=/mnt/beamline): StreamResource paths and Resource roots")
    _storage_arguments(s)
    s.add_argument("--state-dir", default="~/.local/state/bluesky-tomogan", help="journal of runs in flight")
    s.add_argument("--share", default="0/1", metavar="K/N", help="serve share K of N runs (several workers)")
    s.add_argument("--grace", type=float, default=60.0, help="seconds runs in flight may take after SIGTERM")
    s.add_argument("--abandon-after", type=float, default=86400.0, metavar="SECONDS",
                   help="close a run that has sent no document for this long (its RunEngine host is gone), "
                        "default one day; 0: never; not with --store run")
    s.add_argument("--prefix", default="", help="the Publisher's prefix to listen to")
    s.add_argument("--ioc-prefix", metavar="PREFIX",
                   help="publish QC flags and metrics as EPICS PVs PREFIX<name> (caproto soft IOC)")
    s.add_argument("--retry-after", type=float, default=10.0,
                   help="seconds after which a suspending QC flag clears and the next frame tests again")
    s.set_defaults(func=_cmd_serve)

    s = sub.add_parser("qc-ioc", help="QC flags and metrics of a 0MQ or Kafka document stream as EPICS PVs "
                                      "(caproto IOC)")
    _stream_arguments(s, "a proxy's out port carrying denoised streams (e.g. serve --zmq-out's proxy)",
                      "Kafka topics carrying denoised streams (e.g. serve --kafka-out's)",
                      "Kafka consumer group (default: one of its own; never committed, so a restarted IOC "
                      "starts at the newest flags)")
    s.add_argument("--prefix", default="TOMOGAN:QC:", help="PV prefix (default TOMOGAN:QC:)")
    s.add_argument("--retry-after", type=float, default=10.0,
                   help="seconds after which a suspending QC flag clears and the next frame tests again")
    s.set_defaults(func=_cmd_qc_ioc)

    s = sub.add_parser("view", help="the live views (denoised frames, live slices) of a 0MQ or Kafka document "
                                    "stream, in windows or as PNG files")
    _stream_arguments(s, "a proxy's out port carrying denoised streams (serve --zmq-out's proxy)",
                      "Kafka topics carrying denoised streams (serve --kafka-out's)",
                      "Kafka consumer group (default: one of its own, never committed)",
                      tiled_help="a Tiled server's URI (?api_key=KEY where it needs one; a session's embedded "
                                 "server: storage.server_of(client).uri there): poll the runs stored there while "
                                 "they are written (the newest run, or --run)")
    s.add_argument("--run", metavar="UID", help="with --tiled: show this run, and end once it has ended "
                                                "(default: the newest run, followed from scan to scan)")
    s.add_argument("--stream", default="primary", help="the raw stream whose denoised frames are shown")
    s.add_argument("--row", type=int, help="the detector row of the slice view (default: the middle one)")
    s.add_argument("--root-map", nargs="+", type=_path_pair, default=[], metavar="THERE=HERE",
                   help="where this machine sees the worker's files")
    s.add_argument("--save", metavar="DIR", help="write the views to DIR/frames.png and DIR/slices.png after each "
                                                 "draw (required without a display)")
    s.add_argument("--interval", type=float, default=None,
                   help="seconds between redraws at the most (default 0.5); with --tiled, between polls (default 1)")
    s.set_defaults(func=_cmd_view)

    s = sub.add_parser("merge", help="one TomoGAN-style dataset of the frames of several (to train on all)")
    s.add_argument("out", help="output .h5 file")
    s.add_argument("sources", nargs="+", help="datasets to merge (same domain and frame shape)")
    s.set_defaults(func=_cmd_merge)

    s = sub.add_parser("average", help="one model between two fine-tunings of one network: their weights "
                                       "averaged (a model soup; needs the train extra)")
    s.add_argument("first", help="a model: shipped or installed name, model directory or card, with PyTorch "
                                 "weights (typically the one a fine-tuning started from)")
    s.add_argument("second", help="the other model (typically the fine-tuned one); its card is the new card's base")
    s.add_argument("--out", required=True, help="output directory: <name>.pt and <name>.json, for export")
    s.add_argument("--weight", type=float, default=0.5,
                   help="the second model's share, 0 to 1 (default 0.5: the midpoint)")
    s.add_argument("--name", help="the new model's name (default: the second's, with -avg)")
    s.set_defaults(func=_cmd_average)

    s = sub.add_parser("simulate", help="write a simulated TomoGAN-style HDF5 dataset")
    s.add_argument("out", help="output .h5 file")
    s.add_argument("--domain", choices=["slice", "projection"], default="slice")
    s.add_argument("--size", type=count(16), default=128)
    s.add_argument("--n-train", type=count(1), default=16, help="training phantoms")
    s.add_argument("--n-test", type=count(1), default=4, help="held-out phantoms")
    s.add_argument("--families", nargs="*", help="phantom families (default: all)")
    s.add_argument("--photons", type=float, nargs=2, default=[300.0, 3000.0], metavar=("LOW", "HIGH"),
                   help="dose range, photons/pixel (log-uniform per scan; default 300 3000)")
    s.add_argument("--max-attenuation", type=float, nargs=2, default=[1.5, 3.0], metavar=("LOW", "HIGH"),
                   help="range of the thickest ray's line integral (default 1.5 3.0)")
    s.add_argument("--frames-per-scan", type=count(0), default=0,
                   help="projection domain: consecutive angles kept per scan (0 = all)")
    s.add_argument("--psf", type=float, nargs=2, default=[0.0, 0.0], metavar=("LOW", "HIGH"),
                   help="detector blur range, pixels (default 0 0: none)")
    s.add_argument("--zingers", type=float, default=0.0, help="zingers per pixel and frame (default 0)")
    s.add_argument("--fringes", type=float, nargs=2, default=[0.0, 0.0], metavar=("LOW", "HIGH"),
                   help="phase-contrast edge fringe strength range, pixels^2 (default 0 0)")
    s.add_argument("--column-gain-error", type=float, nargs=2, default=[0.0, 0.0], metavar=("LOW", "HIGH"),
                   help="RMS range of uncorrected column gains: stripes and rings (default 0 0)")
    s.add_argument("--pixel-gain-error", type=float, nargs=2, default=[0.0, 0.0], metavar=("LOW", "HIGH"),
                   help="RMS range of a fixed pixel-to-pixel gain: a texture that stays from frame to frame, "
                        "kept in the targets (default 0 0)")
    s.add_argument("--sample-grain", type=float, nargs=2, default=[0.0, 0.0], metavar=("LOW", "HIGH"),
                   help="relative RMS range of a fine density variation inside the sample: a pixel-scale texture "
                        "that turns with it, kept in the targets (default 0 0)")
    s.add_argument("--filters", nargs="+", default=["ramp"],
                   help="slice domain: FBP filters drawn per scan (ramp shepp-logan cosine hamming hann)")
    s.add_argument("--eight-bit", type=float, default=0.0,
                   help="slice domain: fraction of scans stored 8-bit, percentile-clipped (default 0)")
    s.add_argument("--realistic-fraction", type=float, default=1.0,
                   help="fraction of scans that get the detector and storage effects above (default 1)")
    s.add_argument("--beyond-view", type=float, default=0.0,
                   help="fraction of scans whose sample is wider than the field of view at every angle (local "
                        "tomography; default 0)")
    s.add_argument("--beyond-width", type=float, nargs=2, default=[1.3, 2.2], metavar=("LOW", "HIGH"),
                   help="such a sample's phantom width over the field of view (default 1.3 2.2)")
    s.add_argument("--view-fractions", type=float, nargs="+", default=[0.5, 0.25, 0.125],
                   help="slice domain: sparse-view fractions drawn per scan (default 0.5 0.25 0.125)")
    s.add_argument("--n-angles", type=count(3), default=192, help="angles of the full scan (default 192)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=count(1), default=1)
    s.set_defaults(func=_cmd_simulate)

    s = sub.add_parser("train", help="train a TomoGAN generator on an HDF5 dataset (needs the train extra)")
    s.add_argument("data", help="HDF5 with train_ns, train_gt, test_ns, test_gt")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--name", default="tomogan")
    s.add_argument("--domain", default="slice")
    s.add_argument("--upsample", choices=["bilinear", "transposed"], default="bilinear")
    s.add_argument("--input-downscale", type=int, choices=[1, 2, 4], default=1,
                   help="run the U-Net at 1/N resolution, trained against full-resolution targets")
    s.add_argument("--downscale", choices=["space-to-depth", "area"], default="space-to-depth",
                   help="how the input reaches 1/N resolution: a strided stem and a sub-pixel head (no pixel "
                        "averaged away, the default), or area averaging with an upsampling tail")
    s.add_argument("--width", type=float, default=1.0, help="channel multiplier")
    s.add_argument("--context", type=_context_frames, default=3, metavar="FRAMES",
                   help="adjacent frames the network reads, odd (default 3); an --init that reads fewer "
                        "starts with zero weights for the outer ones, so it begins as it was")
    s.add_argument("--no-residual", action="store_true")
    s.add_argument("--patch", type=count(8), default=96)
    s.add_argument("--batch", type=count(1), default=16)
    s.add_argument("--steps-per-epoch", type=count(1), default=200)
    s.add_argument("--epochs", type=count(1), default=100)
    s.add_argument("--patience", type=count(1), default=4)
    s.add_argument("--min-delta", type=float, default=5e-4, metavar="GAIN",
                   help="smallest validation gain that counts as an improvement (default 5e-4); two epochs "
                        "without one halve the step size, --patience of them stop the run")
    s.add_argument("--time-budget", type=float, default=0, help="minutes (0 = none)")
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--pixel", choices=["l1", "mse", "l1+ssim"], default="l1",
                   help="pixel loss: l1, mse, or l1+ssim (0.84 (1 - SSIM) + 0.16 L1, Zhao et al. 2017)")
    s.add_argument("--dose-balance", type=float, default=0.0, metavar="GAMMA",
                   help="weight each patch's pixel loss by its noisy input's own loss to the power -GAMMA, so "
                        "high-dose patches count for more (0: plain mean, the default; 1: equal relative gains)")
    s.add_argument("--context-dropout", type=float, default=0.0, metavar="SHARE",
                   help="share of training patches whose neighbours are withheld (half of them all, half some), "
                        "so the network also denoises a frame without context: a single frame, or neighbours "
                        "that are not views of the same thing (default 0)")
    s.add_argument("--adv-weight", type=float, default=None, help="adversarial loss weight (default 1e-3; 0 "
                   "with --ratios)")
    s.add_argument("--feat-weight", type=float, default=None, help="feature-matching loss weight (default 0.05; "
                   "0 with --ratios)")
    s.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="autocast precision (default auto: bf16 where the CPU computes it natively, else fp32)")
    s.add_argument("--threads", type=int, default=0)
    s.add_argument("--qat-steps", type=count(0), default=0, help="int8-aware fine-tuning steps")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--init", metavar="WEIGHTS",
                   help="start from these weights (a .pt of the same architecture, another run's "
                        "checkpoint.pt for its last epoch, or a shipped model's name)")
    s.add_argument("--ratios", type=float, nargs="+", metavar="PERCENT",
                   help="All-in-One pruning ratios to train into one set of weights (percent of the MACs "
                        "removed, e.g. 0 25 50 75; pixel loss only; best from --init; an All-in-One --init at "
                        "the same ratios keeps its channels)")
    s.add_argument("--teacher", metavar="WEIGHTS",
                   help="distillation: also learn this larger network's output (a shipped model's name or "
                        "weights, as --init), e.g. tomogan-projection for a light model")
    s.add_argument("--distill-weight", type=float, default=0.5, metavar="W",
                   help="the teacher's share of the pixel loss, in [0, 1] (default 0.5)")
    s.add_argument("--ema-decay", type=float, default=0.0, metavar="DECAY",
                   help="validate and keep a moving average of the weights, updated after every step with "
                        "this decay (e.g. 0.999 when fine-tuning from --init; default 0: none)")
    s.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("export", help="export a trained model to ONNX, int8 TFLite, OpenVINO int8, TensorRT")
    s.add_argument("model", help="directory holding <name>.pt and <name>.json")
    s.add_argument("--format", nargs="+", choices=["onnx", "tflite", "openvino", "tensorrt"],
                   default=["onnx", "tflite", "openvino"])
    s.add_argument("--data", help="HDF5 dataset for int8 calibration and quality measurement")
    s.add_argument("--out", help="output directory (default: the model directory)")
    s.add_argument("--tile", type=int, default=None,
                   help="fixed tile of the model (default: 256 for TFLite, the registry's 512 for TensorRT, "
                        "the shape load_denoiser builds engines for)")
    s.add_argument("--calibration", type=count(1), default=200, help="int8 calibration samples")
    s.add_argument("--trt-precision", nargs="+", choices=["fp32", "fp16", "int8"], default=["fp16"])
    s.add_argument("--no-measure", action="store_true", help="skip the quality measurement")
    s.add_argument("--float-weights", action="store_true",
                   help="export the float weights from before the run's int8-aware steps (train --qat-steps), "
                        "recorded in the card as tried, not applied")
    s.add_argument("--input-despike", type=float, metavar="SIGMAS",
                   help="record in the card that the input is despiked on the host (pixels more than SIGMAS "
                        "robust sigmas above their 3x3 median: zingers, hot pixels); every ratio's card too "
                        "(default: what the card says, else 12 for a projection model, none for a slice model)")
    s.add_argument("--activation-copies", nargs="*", type=_layer_copies, metavar="LAYER=K",
                   help="offset copies of layers' outputs in the int8 TFLite model, e.g. stem.0=4 head.0=4 "
                        "(default: those the card records, else stem.0=4 head.0=4, and for a slice model "
                        "enc1.0=2 dec1.0=2 dec1.2=2 too; none given: no copies); see docs/backends.md")
    s.add_argument("--openvino-copies", nargs="*", type=_layer_copies, metavar="LAYER=K",
                   help="offset copies of layers' outputs in the post-training OpenVINO int8 IR (default: "
                        "stem.0=4; none given: no copies; each costs the layers reading it their input "
                        "channels again)")
    s.add_argument("--openvino-qat-steps", type=count(0), default=0, metavar="N",
                   help="make the OpenVINO int8 IR by N batches of quantisation-aware fine-tuning, every "
                        "convolution but the output layer in int8 (default 0: post-training quantisation with "
                        "accuracy control), for networks whose full-resolution layers post-training "
                        "quantisation cannot hold (the light slice model), "
                        "see docs/models.md")
    s.add_argument("--qat-data", metavar="H5", help="training pairs of that fine-tuning (default: --data)")
    s.add_argument("--qat-lr", type=float, default=2e-5, help="its learning rate (default 2e-5)")
    s.add_argument("--qat-float", nargs="*", default=[], metavar="MODULE",
                   help="modules it keeps in float besides the output layer, e.g. head (with fused decoders, one "
                        "half of a decoder too: dec1.0.skip, the full-resolution one)")
    s.add_argument("--qat-copies", nargs="*", type=_layer_copies, metavar="LAYER=K",
                   help="offset copies of layers' outputs in that IR (default: the post-training IR's stem.0=4; "
                        "none given: no copies; each costs the layers reading it their input channels again)")
    s.add_argument("--qat-distill", type=float, default=0.0, metavar="W",
                   help="share of that fine-tuning's loss taken against the float network's own output "
                        "rather than the clean target, in [0, 1] (default 0)")
    s.add_argument("--qat-float-sums", nargs="*", type=int, choices=(1, 2, 3), metavar="LEVEL",
                   help="decoder levels (1: full resolution, 3: the deepest) whose fused sum that IR keeps in "
                        "float, for a network with fused decoders (default: 1 2 3; none given: every sum in "
                        "int8, the fastest)")
    s.add_argument("--qat-weight-bits", type=int, choices=(8, 7), default=8,
                   help="7: that IR's weights on a 7-bit grid in every layer, trained so; none of its sums "
                        "saturates on an x86 CPU without VNNI, where it then runs in int8 as elsewhere "
                        "(default 8; docs/backends.md)")
    s.set_defaults(func=_cmd_export)

    s = sub.add_parser("reprocess", help="denoise a run stored in Tiled, into that run or a new one (a scan taken "
                                         "without the callback, or another model)")
    s.add_argument("tiled", metavar="URI|DIR",
                   help="Tiled server holding the run (URI with ?api_key= if needed), or the directory of an "
                        "embedded one (as the demo and the profile make)")
    s.add_argument("--uid", required=True, help="the stored run")
    s.add_argument("--into", choices=["run", "new"], default="run",
                   help="run: add the derived streams to the stored run, as the live callback does (default; "
                        "'denoised_2' if it has a 'denoised' already); new: write a new run beside it, found by "
                        "Key('start.tomogan_reprocessed_from') == UID")
    _denoiser_arguments(s, "shipped model name or model card path (e.g. a fine-tuned one)")
    s.add_argument("--streams", nargs="+",
                   help="streams to denoise (default: primary flat, as live)")
    s.add_argument("--fields", nargs="+", help="image fields to denoise (default: every 2-D field)")
    s.add_argument("--directory", help="where derived frames are written (default: next to the raw frames); "
                                       "the Tiled server must be able to read it")
    s.add_argument("--root-map", nargs="+", type=_path_pair, default=[], metavar="THERE=HERE",
                   help="the detector's files written under THERE are read under HERE on this machine")
    _storage_arguments(s)
    s.add_argument("--reconstruct", action="store_true",
                   help="also reconstruct and denoise three slices, as TomoReconstruction does live")
    s.add_argument("--slice-model", default="tomogan-slice",
                   help="with --reconstruct: the slice model (default tomogan-slice; or one fine-tuned on the scan)")
    _slice_geometry_arguments(s, "found")
    s.add_argument("--angle-field", metavar="KEY", help=ANGLE_FIELD_HELP)
    s.set_defaults(func=_cmd_reprocess)

    s = sub.add_parser("finetune", help="fine-tune a shipped model on your own noisy scan, no clean data "
                                        "(needs the export extra)")
    s.add_argument("source", help="HDF5 of projections (Data Exchange, NeXus NXtomo or plain keys), a Zeiss "
                                  ".txrm, projections stored alone (a .npy stack, a multi-page TIFF, a directory "
                                  "of TIFF files, one projection each, or a quoted pattern of their names: --angles, "
                                  "--flats, --darks), or a Tiled URI "
                                  "or the directory of an embedded store (the demo's, the profile's) with --uid")
    s.add_argument("--out", required=True, help="output directory (pairs, checkpoint, weights, exports, card)")
    s.add_argument("--domain", choices=["slice", "projection"], default="slice",
                   help="slice model (Noise2Inverse) or projection model (Neighbor2Neighbor); default slice")
    s.add_argument("--uid", help="run uid (with a Tiled URI)")
    s.add_argument("--angle-field", metavar="KEY",
                   help="with --uid: the data key of the projections' angles, where it is not the plan's rotation "
                        "axis (a fly scan's encoder capture, such as panda-inenc-1-val)")
    s.add_argument("--field", help="image field of the run's primary stream (default: its only image field)")
    s.add_argument("--key", help="HDF5 dataset of the projections (default: exchange/data, projections, data)")
    s.add_argument("--angles", metavar="FILE",
                   help="projections stored alone: their rotation angles in degrees, one per projection in their "
                        "order (a text file, one a line, or .npy); default: evenly over [0, 180), with a warning")
    s.add_argument("--flats", metavar="PATH", help="projections stored alone: open-beam frames (a .npy, TIFF, "
                                                   "directory of TIFF files or quoted pattern of their names, "
                                                   "'scan/flat_*.tif'; averaged)")
    s.add_argument("--darks", metavar="PATH", help="projections stored alone: dark frames (as --flats)")
    s.add_argument("--model", help="starting weights: a shipped model or a .pt (default tomogan-<domain>)")
    s.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget, export included (default 15)")
    s.add_argument("--splits", type=count(2), default=4, help="Noise2Inverse angle subsets (default 4)")
    s.add_argument("--rows", type=row_range, metavar="FIRST:STOP",
                   help="detector rows to fine-tune on (default: all if the pairs fit in memory, else the centred "
                        "rows that do)")
    s.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    s.add_argument("--format", nargs="+", choices=["onnx", "tflite", "openvino"],
                   default=["onnx", "tflite", "openvino"], help="export formats (default: all three)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in OUT, or train on the pairs an earlier run made there")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("--install", metavar="NAME",
                   help="when done, install the model under NAME (bluesky-tomogan models install), so that "
                        "--model NAME and load_denoiser(NAME) find it anywhere on this account")
    s.add_argument("--force-install", action="store_true", help="with --install: replace a model of that name")
    s.set_defaults(func=_cmd_finetune)

    s = sub.add_parser("center", help="the rotation centre of a stored scan (Vo's method; for a sample wider than "
                                      "the field of view where the projections 180 degrees apart agree)")
    s.add_argument("source", help="a scan as finetune reads it: HDF5 (Data Exchange, NeXus NXtomo or plain keys), a "
                                  "Zeiss .txrm, projections stored alone (.npy, TIFF, a directory or quoted pattern "
                                  "of TIFF files: --angles, --flats, --darks), or a Tiled URI or embedded store with "
                                  "--uid")
    s.add_argument("--uid", help="run uid (with a Tiled URI or store)")
    s.add_argument("--angle-field", metavar="KEY", help="with --uid: the data key of the projections' angles")
    s.add_argument("--field", help="image field of the run's primary stream (default: its only image field)")
    s.add_argument("--key", help="HDF5 dataset of the projections (default: exchange/data, projections, data)")
    s.add_argument("--angles", metavar="FILE", help="projections stored alone: their angles in degrees (as finetune)")
    s.add_argument("--flats", metavar="PATH", help="projections stored alone: open-beam frames (as finetune)")
    s.add_argument("--darks", metavar="PATH", help="projections stored alone: dark frames (as finetune)")
    s.add_argument("--rows", type=row_range, metavar="FIRST:STOP",
                   help=f"detector rows to read (default: the middle {CENTER_ROWS}); the search takes the middle "
                        "one, and for a wider sample 8 more of their middle half")
    s.set_defaults(func=_cmd_center)

    s = sub.add_parser("quality", help="re-measure a model's quality and precision losses on a dataset, into its "
                                       "card (and each pruning ratio's card)")
    s.add_argument("model", help="model directory or card (*.json)")
    s.add_argument("--data", required=True, help="HDF5 dataset whose test split is measured (use hard frames)")
    s.add_argument("--frames", type=count(1), default=48,
                   help="test frames measured (evenly spaced; of frames larger than 256x256, their centre 256x256)")
    s.add_argument("--only", nargs="+", metavar="BACKEND/PRECISION", choices=[f"{b}/{p}" for b, p in configurations()],
                   help="measure only these (and the fp32 reference), keeping the card's other entries and metrics: "
                        "e.g. openvino/int8 on an x86 CPU without VNNI, recorded as openvino/int8@no-vnni "
                        "(as openvino/int8 for an IR with 7-bit weights, whose int8 is the same on every CPU)")
    s.set_defaults(func=_cmd_quality)

    s = sub.add_parser("denoise", help="denoise frames from a .npy, HDF5 (Data Exchange, NeXus too), TIFF or Zeiss "
                                       ".txrm/.xrm file, or a directory of TIFF files")
    s.add_argument("input", help="frames (H, W) or (N, H, W): .npy, .h5/.hdf5/.nxs, a (multi-page) .tif, a Zeiss "
                                 ".txrm/.xrm, or a directory of .tif files, one frame each (in the order of their "
                                 "names' numbers), or a quoted pattern of such files' names ('scan/proj_*.tif')")
    s.add_argument("output", help=".npy, .h5 (dataset 'denoised', with the provenance; from an HDF5 input, a copy of "
                                  "it with the frames denoised at their place; from a Zeiss file, Data Exchange with "
                                  "its angles and reference), .tif, or a new or empty "
                                  "directory: one .tif per frame, named as the input directory's files")
    s.add_argument("--key", help="HDF5 dataset (default: exchange/data or another usual name for projections, "
                                 "else the file's only dataset)")
    s.add_argument("--angles", metavar="FILE",
                   help="each frame's rotation angle in degrees, one per frame (a text file, one a line, or .npy), "
                        "for frames stored without them (.npy, TIFF): a neighbour more than 4 degrees away is no "
                        "context (a golden-angle or interlaced scan in the order taken). Default: the angles the "
                        "input stores (exchange/theta, a NeXus or Zeiss scan's), else neighbours by order")
    _denoiser_arguments(s, "shipped model name or model card path")
    s.add_argument("--keep-dtype", action="store_true", help="cast the result back to the input dtype")
    s.add_argument("--compression", choices=COMPRESSION_NAMES, default=None,
                   help="into HDF5: lossless compression of each denoised frame (lz4, zstd: bit shuffle as Eiger "
                        "files; gzip); with --keep-dtype, a 16-bit scan's denoised copy takes a fifth of float32's "
                        "space")
    s.add_argument("--frames-only", action="store_true",
                   help="HDF5 to HDF5: write only the 'denoised' dataset (by default the output is a copy of the "
                        "input file, flats, darks and angles included, with the frames denoised at their place)")
    s.add_argument("--ratio", type=float, default=None, metavar="PERCENT",
                   help="pruning ratio of an All-in-One model (default: the full network)")
    s.set_defaults(func=_cmd_denoise)

    s = sub.add_parser("bench", help="speed of every available backend and precision")
    s.add_argument("--sizes", type=count(8), nargs="+", default=[512, 1024, 2048])
    s.add_argument("--repeats", type=count(1), default=10)
    s.add_argument("--model", default="tomogan-projection")
    s.add_argument("--json", help="also write results as JSON")
    s.set_defaults(func=_cmd_bench)

    s = sub.add_parser("models", help="list the models that load by name (shipped and installed) with their "
                                      "measured quality; install or remove one of your own")
    s.add_argument("--here", action="store_true",
                   help="also load each model as precision='auto' does on this machine and say what it runs on")
    s.set_defaults(func=_cmd_models, models_command=None)
    models = s.add_subparsers(dest="models_command", metavar="{install,remove}")
    m = models.add_parser("install", help="copy a model (a finetune/train/export output directory, or a card) "
                                          "under a name, so that --model NAME and load_denoiser(NAME) find it")
    m.add_argument("model", help="model directory, model card (*.json) or a model's name")
    m.add_argument("--name", help="the name to load it by (default: the name in its card); shipped names are "
                                  "reserved")
    m.add_argument("--into", metavar="DIR", help="model directory to install into (default: the per-user one; "
                                                 "a directory of $BLUESKY_TOMOGAN_MODELS shares it with the beamline)")
    m.add_argument("--force", action="store_true", help="replace a model of that name installed there")
    m = models.add_parser("remove", help="remove a model that `models install` installed")
    m.add_argument("name")
    m.add_argument("--into", metavar="DIR", help="the model directory it was installed into (default: the "
                                                 "per-user one)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bluesky-tomogan`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command == "export" and not args.data and "tensorrt" not in args.format:
        print("bluesky-tomogan export: --data is required (calibration and quality measurement)", file=sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except TomoGANError as exc:
        print(f"bluesky-tomogan {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:
        print(f"bluesky-tomogan {args.command}: error: {exc}; install the extra it needs, e.g. "
              "pip install 'bluesky-tomogan[train]' or '[export]'", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
