"""The live views read from Tiled (``bluesky-tomogan view --tiled``): rows stored so far, while the run is written."""

from __future__ import annotations

import logging
import threading
import time

import matplotlib
import numpy as np
import pytest
from bluesky_tiled_plugins import TiledWriter

from bluesky_tomogan import TomoGANCallback, TomoReconstruction, load_denoiser
from bluesky_tomogan.cli import main
from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
from bluesky_tomogan.plans import tomo_scan
from bluesky_tomogan.serve import tiled_view
from bluesky_tomogan.serve.tiled_view import TiledLiveViews
from bluesky_tomogan.simulate.tomography import angles_deg
from bluesky_tomogan.storage import close_local_tiled, frames_directory, local_tiled, server_of, stored_frames

matplotlib.use("Agg")

ANGLES = 48


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def wired(RE, store, tmp_path, denoiser, timing=False, batch_size=1):
    """A detector whose frames, denoised rows and live slices are all stored in ``store`` (each row as it comes,
    with ``batch_size=1``; with ``timing``, a frame each 50 ms, as a camera takes them)."""
    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(64, 64), directory=frames_directory(tmp_path / "store"),
                          simulate_timing=timing, seed=7)
    det.exposure_time.put(0.05)
    det.photon_flux.put(500 / 0.05)  # 500 photons a pixel
    cb = TomoGANCallback(denoiser, streams=["primary", "flat"], policy="block")
    rec = TomoReconstruction(load_denoiser("tomogan-slice", backend="onnxruntime"), every=16)
    cb.subscribe(rec)
    rec.subscribe(TiledWriter(store, batch_size=batch_size))
    RE.subscribe(cb)
    return det, stage, rec


def title(fig):
    return fig._suptitle.get_text()


def test_during_the_scan_the_views_show_what_is_stored_so_far_and_at_its_end_the_last_rows(RE, store, tmp_path,
                                                                                        denoiser):
    det, stage, rec = wired(RE, store, tmp_path, denoiser, timing=True)
    views = TiledLiveViews(store, save=tmp_path / "views")
    (tmp_path / "views").mkdir()
    mid_scan = []
    done = threading.Event()

    def watch():
        """Another thread, as another process would: the first row seen while the run is still being written."""
        while not done.is_set() and not mid_scan:
            assert views.poll() is False  # following the newest run: never "ended"
            if views.shown is not None:
                mid_scan.append((views.shown, time.monotonic()))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        (uid,) = RE(tomo_scan(det, stage, list(angles_deg(ANGLES)), n_darks=3, n_flats=3))
        scan_returned = time.monotonic()
        assert rec.wait(timeout=60)
    finally:
        done.set()
        watcher.join(30)

    ((shown, seen),) = mid_scan
    assert seen < scan_returned and 1 <= shown.seq_num < ANGLES  # a row stored while the scan ran
    run = store[uid]
    raw = stored_frames(run["primary"]["det_image"])
    np.testing.assert_array_equal(shown.raw, raw[shown.seq_num - 1])
    np.testing.assert_array_equal(shown.denoised, run["denoised"]["det_image_denoised"][shown.seq_num - 1])

    views.poll()
    assert views.shown.seq_num == ANGLES and views.shown.model.startswith("tomogan-projection")
    np.testing.assert_array_equal(views.shown.raw, raw[ANGLES - 1])
    s = views.shown_slice
    assert s is not None and s.final and s.projections == ANGLES
    np.testing.assert_array_equal(s.slice, run["reconstruction"]["slice"][s.seq_num - 1])
    np.testing.assert_array_equal(s.fbp, run["reconstruction"]["slice_fbp"][s.seq_num - 1])
    frames_fig, slices_fig = views.figures
    assert f"({uid[:8]})" in title(frames_fig) and f"primary/det_image frame {ANGLES}" in title(frames_fig)
    assert f"from {ANGLES} projections (final)" in title(slices_fig)
    for picture in ("frames.png", "slices.png"):
        assert (tmp_path / "views" / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_running_scan_with_nothing_stored_is_explained_once(RE, store, tmp_path, denoiser, monkeypatch, caplog):
    """bluesky-tiled-plugins' TiledWriter batches 10,000 rows by default: a view of such a run sees nothing
    until the stop, and says why that may be."""
    monkeypatch.setattr(tiled_view, "NOTHING_STORED_HINT_S", 0.3)
    det, stage, rec = wired(RE, store, tmp_path, denoiser, timing=True, batch_size=10_000)
    views = TiledLiveViews(store)
    done = threading.Event()

    def watch():
        while not done.is_set():
            views.poll()
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    with caplog.at_level(logging.WARNING, logger="bluesky_tomogan.serve.tiled_view"):
        watcher.start()
        try:
            RE(tomo_scan(det, stage, list(angles_deg(24)), n_darks=1, n_flats=1))
            assert rec.wait(timeout=60)
        finally:
            done.set()
            watcher.join(30)
    hints = [r.getMessage() for r in caplog.records if "is stored after" in r.getMessage()]
    assert len(hints) == 1 and "batch_size=1" in hints[0]
    views.poll()
    assert views.shown.seq_num == 24  # all of it, once the stop has written the rest


def test_a_run_asked_for_is_shown_until_it_ends_and_the_newest_is_followed_otherwise(RE, store, tmp_path,
                                                                                     denoiser):
    det, stage, rec = wired(RE, store, tmp_path, denoiser, batch_size=10_000)  # viewed once ended
    (first,) = RE(tomo_scan(det, stage, list(angles_deg(16)), n_darks=1, n_flats=1))
    assert rec.wait(timeout=60)
    following, pinned = TiledLiveViews(store), TiledLiveViews(store, first)
    assert following.poll() is False
    assert pinned.poll() is True  # it has ended, and its last rows are drawn
    assert pinned.shown.seq_num == 16

    (second,) = RE(tomo_scan(det, stage, list(angles_deg(24)), n_darks=1, n_flats=1))
    assert rec.wait(timeout=60)
    following.poll()
    pinned.poll()
    assert f"({second[:8]})" in title(following.figures[0]) and following.shown.seq_num == 24
    assert f"({first[:8]})" in title(pinned.figures[0]) and pinned.shown.seq_num == 16


def test_a_run_without_denoised_rows_yet_draws_nothing_and_an_empty_catalog_is_waited_on(RE, store, tmp_path):
    views = TiledLiveViews(store)
    assert views.poll() is False and views.shown is None  # no run at all
    stage = SimTomoStage(name="stage")
    det = SimTomoDetector(name="det", stage=stage, shape=(32, 32), directory=tmp_path / "raw",
                          simulate_timing=False)
    RE.subscribe(TiledWriter(store))  # stored, never denoised
    RE(tomo_scan(det, stage, list(angles_deg(4)), n_darks=0, n_flats=0))
    assert views.poll() is False and views.shown is None and views.figures == (None, None)


def test_a_server_that_stops_answering_is_said_once_and_asked_again(tmp_path, caplog, monkeypatch):
    import tiled.client.utils
    from tiled.client import from_uri

    # Tiled's client retries a refused request for up to 45 s (TILED_RETRY_TIMEOUT) before it raises
    monkeypatch.setattr(tiled.client.utils, "TILED_RETRY_TIMEOUT", 1.0)
    client = local_tiled(tmp_path / "gone")
    viewers = from_uri(server_of(client).uri)  # a viewer's own connection
    views = TiledLiveViews(viewers)
    assert views.poll() is False
    close_local_tiled(client)  # the server goes away (its open connections a moment later)

    def said():
        return [r.getMessage() for r in caplog.records if r.name == "bluesky_tomogan.serve.tiled_view"]

    with caplog.at_level(logging.WARNING, logger="bluesky_tomogan.serve.tiled_view"):
        deadline = time.monotonic() + 30
        while not said() and time.monotonic() < deadline:
            assert views.poll() is False
            time.sleep(0.2)
        for _ in range(3):
            assert views.poll() is False
    viewers.context.close()
    said = said()
    assert len(said) == 1 and "Tiled does not answer" in said[0] and "ConnectError" in said[0]


def test_view_tiled_writes_a_finished_runs_pictures_and_ends(RE, store, tmp_path, denoiser, capsys):
    det, stage, rec = wired(RE, store, tmp_path, denoiser, batch_size=10_000)  # viewed once ended
    (uid,) = RE(tomo_scan(det, stage, list(angles_deg(16)), n_darks=1, n_flats=1))
    assert rec.wait(timeout=60)
    uri = server_of(store).uri
    views = tmp_path / "views"
    assert main(["view", "--tiled", uri, "--run", uid, "--save", str(views), "--interval", "0.1"]) == 0
    for picture in ("frames.png", "slices.png"):
        assert (views / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(["view", "--tiled", uri, "--run", "no-such-run", "--save", str(views)]) == 2
    assert "run no-such-run in http" in (err := capsys.readouterr().err) and "no such run" in err
    assert "api_key" not in err  # the key stays out of what is printed
    assert main(["view", "--zmq-in", "localhost:1", "--run", uid, "--save", str(views)]) == 2
    assert "--run picks a run of a Tiled catalog" in capsys.readouterr().err
    assert main(["view", "--tiled", str(tmp_path / "store"), "--save", str(views)]) == 2  # the store itself
    assert "is a directory: watch a running server instead, by its URI" in capsys.readouterr().err


def test_the_embedded_servers_tables_are_read_while_rows_are_appended_without_a_failure(RE, store):
    """One DuckDB connection serves every thread of the embedded server: a reader of a stream's table beside
    TiledWriter's appends got 500s, "No active transaction, cannot commit" and, in the end, a segmentation fault
    of the process (``benchmarks/tiled_table_race.py --guard off``). ``local_tiled`` lends it one thread at a
    time (``tiled_tables``)."""
    import bluesky.plans as bp
    from ophyd.sim import SynSignal
    from tiled.client import from_uri

    from bluesky_tomogan.tiled_tables import lends_one_at_a_time

    assert lends_one_at_a_time(server_of(store).storage)  # a Tiled that changed its pool fails here, not in a scan
    reader = from_uri(server_of(store).uri)
    RE.subscribe(TiledWriter(store, batch_size=1))
    done, reads, failures = threading.Event(), [0], []

    def read():
        while not done.is_set():
            try:
                runs = reader.values()
                run = runs.last() if len(runs) else None
                if run is not None and "primary" in run and "x" in run["primary"]:
                    column = run["primary"]["x"]
                    assert column[column.shape[0] - 1] == 1.0
                    reads[0] += 1
            except Exception as exc:  # noqa: PERF203 - each failure is the finding
                failures.append(exc)

    thread = threading.Thread(target=read)
    thread.start()
    try:
        (uid,) = RE(bp.count([SynSignal(func=lambda: 1.0, name="x")], num=80))
    finally:
        done.set()
        thread.join(60)
        reader.context.close()
    assert not failures and reads[0] > 0
    assert store[uid]["primary"]["x"].read().tolist() == [1.0] * 80  # every row once
