"""Shared fixtures: small real datasets and models, never mocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bluesky import RunEngine

from bluesky_tomogan import load_denoiser
from bluesky_tomogan.callbacks.frame_writer import DATA_ENV
from bluesky_tomogan.inference.catalogue import MODELS_ENV
from bluesky_tomogan.simulate.datasets import PairSet, Recipe, simulate_pairs, write_dataset


@pytest.fixture(scope="session")
def tiny_recipe() -> Recipe:
    return Recipe(domain="slice", size=32, n_angles=48, view_fractions=(1 / 4,), photons=(200.0, 400.0))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory, tiny_recipe: Recipe):
    """A real simulated slice-domain file: 2 training phantoms, 1 held out, 32x32."""
    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    train = simulate_pairs(tiny_recipe, 2, seed=1)
    test = simulate_pairs(tiny_recipe, 1, seed=99)
    write_dataset(path, train, test, {"domain": "slice"})
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def pairs_of(n: int, h: int, w: int) -> PairSet:
    r = np.random.default_rng(n)
    return PairSet(r.random((n, h, w), np.float32), r.random((n, h, w), np.float32), np.zeros(n, np.int32))


def copy_of_shipped_model(name: str, directory: Path) -> Path:
    """A model directory holding a copy of the shipped model ``name``'s card and files (each IR's
    ``.bin`` too), for tests that damage or re-measure them."""
    import shutil

    from bluesky_tomogan.inference import load_card

    card = load_card(name)
    directory.mkdir(parents=True, exist_ok=True)
    for entry in card.files.values():
        shutil.copy2(entry.path, directory)
        if entry.path.suffix == ".xml":
            shutil.copy2(entry.path.with_suffix(".bin"), directory)
    shutil.copy2(card.directory / f"{name}.json", directory)
    return directory


def installed_package(site: Path, name: str, entry_points: dict[str, dict[str, str]],
                      modules: dict[str, str] | None = None) -> Path:
    """A package as pip would leave it in ``site`` (put ``site`` on ``sys.path``): its ``.dist-info`` announcing
    ``entry_points`` (group -> name -> value) and its ``modules`` (file name -> source)."""
    dist = site / f"{name.replace('-', '_')}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()) for group, points in entry_points.items()))
    for file, source in (modules or {}).items():
        (site / file).parent.mkdir(parents=True, exist_ok=True)
        (site / file).write_text(source)
    return site


@pytest.fixture(autouse=True)
def derived_frames_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Derived frames without a ``directory`` go to the per-user data directory: a temporary one in tests."""
    path = tmp_path / "tomogan-data"
    monkeypatch.setenv(DATA_ENV, str(path))
    return path


@pytest.fixture(autouse=True)
def user_models_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Models are found by name in the per-user model directory (platformdirs: under ``$XDG_DATA_HOME`` on
    Linux, so subprocesses see it too) and in ``$BLUESKY_TOMOGAN_MODELS``: neither is the user's in tests."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.delenv(MODELS_ENV, raising=False)
    return tmp_path / "xdg-data" / "bluesky-tomogan" / "models"


@pytest.fixture
def patient_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The live callback's two waits, for a stream's next frame (``CONTEXT_WAIT``: after it, a frame is denoised
    with mirrored context) and for a frame's event (``ANGLE_WAIT``: after it, its angle counts as unknown), made
    longer than any stall of a loaded machine, for tests that compare two runs of the same documents frame for
    frame. The waits are latency bounds of a live scan: where the thread that hands over documents gets no CPU
    for longer than 2 s (a CI machine runs two workers on two cores), a frame mid-scan is denoised without its
    next neighbour (a 2.5 s pause before one document of a fly scan moved its reconstruction's centre by 0.0003
    px). Not for scans paced by QC verdicts: a stream's last frame gets its verdict only after ``CONTEXT_WAIT``."""
    from bluesky_tomogan.callbacks import run as run_module

    monkeypatch.setattr(run_module, "CONTEXT_WAIT", 60.0)
    monkeypatch.setattr(run_module, "ANGLE_WAIT", 60.0)


@pytest.fixture
def RE():
    """A fresh RunEngine per test, halted at teardown (as bluesky's own tests do)."""
    re = RunEngine({})
    yield re
    if re.state != "idle":
        re.halt()


@pytest.fixture(scope="session")
def denoiser():
    """The shipped projection model on ONNX Runtime fp32 (the same numbers on every CPU)."""
    return load_denoiser("tomogan-projection", backend="onnxruntime")


@pytest.fixture
def store(tmp_path: Path):
    """An embedded Tiled server under tmp_path, closed at teardown."""
    from bluesky_tomogan.storage import close_local_tiled, local_tiled

    client = local_tiled(tmp_path / "store")
    yield client
    close_local_tiled(client)
