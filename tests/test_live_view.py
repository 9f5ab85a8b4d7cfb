"""LiveDenoisedView: the newest denoised frame beside its raw one, from the documents alone."""

from __future__ import annotations

import logging

import bluesky.plans as bp
import matplotlib
import numpy as np
import pytest
from ophyd.sim import SynSignal

from bluesky_tomogan.callbacks import LiveDenoisedView, TomoGANCallback
from bluesky_tomogan.callbacks.live_view import shows_windows
from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
from bluesky_tomogan.hdf5_frames import StreamFrameReader

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def close_figures():
    """Each view makes its figure with pyplot, which keeps it until closed."""
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def camera(values=None, shape=(40, 48)):
    rng = np.random.default_rng(0)
    return SynSignal(func=values or (lambda: rng.poisson(500, shape).astype(np.uint16)), name="cam")


def detector(directory, asset_mode):
    return SimTomoDetector(name="det", stage=SimTomoStage(name="stage"), shape=(40, 48), directory=directory,
                           asset_mode=asset_mode, seed=3, simulate_timing=False)


def scan(RE, cb, view, det=None, num=5):
    """Run a scan through ``cb`` with ``view`` subscribed; the documents, for the expected frames."""
    docs = []
    cb.subscribe(lambda name, doc: docs.append((name, doc)))
    cb.subscribe(view)
    RE.subscribe(cb)
    if det is None:
        RE(bp.count([camera()], num=num))
    else:
        RE(bp.scan([det], det.sample_stage.theta, 0, 40, num))
    return docs


def raw_frame(docs, field, seq_num):
    """The raw frame of ``seq_num`` as the documents announce it: inside the event or in the detector's file."""
    for name, doc in docs:
        if name == "event" and doc["seq_num"] == seq_num and field in doc["data"] and doc["filled"].get(field, True):
            return np.asarray(doc["data"][field])
    sres = [d for n, d in docs if n == "stream_resource" and d["data_key"] == field]
    if sres:
        return StreamFrameReader(sres[0])(seq_num - 1, seq_num)[0]
    (res,) = [d for n, d in docs if n == "resource"]
    read = StreamFrameReader({"mimetype": "application/x-hdf5", "uri": "file:///" + res["resource_path"],
                              "parameters": res["resource_kwargs"]})
    return read(seq_num - 1, seq_num)[0]


def denoised_frame(docs, field, row):
    """Derived row ``row``'s frame: inside its event page, or in the file its StreamDatum names."""
    derived = {d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "denoised"}
    for name, doc in docs:  # rows come in as many pages as the worker's timing makes: the one holding ``row``
        if (name == "event_page" and doc["descriptor"] in derived and f"{field}_denoised" in doc["data"]
                and row in doc["seq_num"]):
            return np.asarray(doc["data"][f"{field}_denoised"][doc["seq_num"].index(row)])
    (sres,) = [d for n, d in docs if n == "stream_resource" and d["data_key"] == f"{field}_denoised"]
    return StreamFrameReader(sres)(row - 1, row)[0]


@pytest.mark.parametrize(("raw", "inline"), [("event", True), ("event", False), ("stream", False),
                                             ("resource", False)])
def test_each_page_shows_its_newest_rows_raw_and_denoised_frame_however_they_travel(RE, denoiser, tmp_path, raw,
                                                                                     inline):
    det = None if raw == "event" else detector(tmp_path, raw)
    field = "cam" if det is None else "det_image"
    view = LiveDenoisedView(interval=0, use_teleporter=False)
    cb = TomoGANCallback(denoiser, streams=["primary"], inline=inline)
    docs = scan(RE, cb, view, det)
    assert cb.errors == []
    derived = {d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "denoised"}
    pages = [d for n, d in docs if n == "event_page" and d["descriptor"] in derived]
    assert view.frames_shown == len(pages) and view.field == field  # with no interval, every page's newest row
    shown = view.shown
    assert shown is not None and shown.seq_num == 5 and shown.error == "" and shown.model == "tomogan-projection"
    np.testing.assert_array_equal(shown.raw, raw_frame(docs, field, 5))
    np.testing.assert_array_equal(shown.denoised, denoised_frame(docs, field, 5))
    fig = view.figure
    raw_image, denoised_image = (ax.images[0] for ax in fig.axes)
    np.testing.assert_array_equal(np.asarray(denoised_image.get_array()), shown.denoised)
    assert raw_image.get_clim() == denoised_image.get_clim()  # one scale: what denoising removed shows
    assert "frame 5" in fig._suptitle.get_text() and "QC: " in fig._suptitle.get_text()


def test_rows_closer_than_the_interval_are_skipped_and_the_last_is_shown_at_the_stop(RE, denoiser, tmp_path):
    view = LiveDenoisedView(interval=3600, use_teleporter=False)
    scan(RE, TomoGANCallback(denoiser, streams=["primary"]), view, detector(tmp_path, "stream"), num=6)
    assert view.frames_shown <= 2  # the first page's newest row, then nothing until the stop drew the last
    assert view.shown is not None and view.shown.seq_num == 6


def test_a_frame_that_was_not_denoised_shows_why_in_red(RE, denoiser):
    import matplotlib.pyplot as plt

    fig = plt.figure()
    view = LiveDenoisedView(interval=0, fig=fig, use_teleporter=False)
    cb = TomoGANCallback(denoiser, streams=["primary"])
    cb.subscribe(view)
    RE.subscribe(cb)
    RE(bp.count([camera(lambda: np.zeros((40, 48), np.uint16))], num=3))
    shown = view.shown
    assert shown is not None and shown.denoised is None and "dead_pixels" in shown.error
    assert shown.raw is not None and not shown.raw.any()
    assert "dead_pixels" in fig._suptitle.get_text() and fig._suptitle.get_color() == "red"
    assert fig.axes[1].get_title() == "denoised: not available"


class BrokenHandler:
    def __init__(self, path, **kwargs):
        raise OSError(f"disk unplugged: {path}")


def test_raw_frames_it_cannot_read_leave_the_denoised_ones_and_one_warning(RE, denoiser, tmp_path, caplog):
    view = LiveDenoisedView(interval=0, handler_registry={"hdf5": BrokenHandler}, use_teleporter=False)
    with caplog.at_level(logging.WARNING, logger="bluesky_tomogan.callbacks.live_view"):
        docs = scan(RE, TomoGANCallback(denoiser, streams=["primary"]), view, detector(tmp_path, "resource"))
    assert view.frames_shown >= 1 and view.shown is not None and view.shown.raw is None
    np.testing.assert_array_equal(view.shown.denoised, denoised_frame(docs, "det_image", 5))
    warnings = [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(warnings) == 1 and "disk unplugged" in warnings[0]


def test_only_the_newest_inline_raw_frames_are_held(RE, denoiser):
    view = LiveDenoisedView(interval=3600, keep=2, use_teleporter=False)
    scan(RE, TomoGANCallback(denoiser, streams=["primary"]), view, num=8)
    assert len(view._raw_inline) <= 2
    assert view.shown is not None and view.shown.seq_num == 8 and view.shown.raw is not None


def test_a_new_run_starts_a_new_picture(RE, denoiser, tmp_path):
    view = LiveDenoisedView(interval=0, use_teleporter=False)
    cb = TomoGANCallback(denoiser, streams=["primary"])
    scan(RE, cb, view, detector(tmp_path, "stream"), num=4)
    RE(bp.count([camera()], num=2))  # another run, inline frames of another field
    assert view.shown is not None and view.shown.seq_num == 2 and view.shown.raw.shape == (40, 48)
    assert view.field == "cam"  # each run's own field, where none was asked for


@pytest.mark.parametrize(("option", "message"), [({"interval": -1}, "interval"), ({"keep": 0}, "keep")])
def test_settings_it_cannot_use_are_refused(option, message):
    with pytest.raises(ValueError, match=message):
        LiveDenoisedView(use_teleporter=False, **option)


def test_a_backend_without_windows_is_told_apart_from_one_with_them(monkeypatch):
    assert not shows_windows()  # agg: no display here
    monkeypatch.setattr(matplotlib, "get_backend", lambda: "QtAgg")
    assert shows_windows()
    monkeypatch.setattr(matplotlib, "get_backend", lambda: "module://matplotlib_inline.backend_inline")
    assert not shows_windows()  # a notebook's inline figures show only once the cell is done


def test_documents_replayed_elsewhere_show_the_same_frames(RE, denoiser, tmp_path):
    """As a consumer of the documents ``serve`` publishes gets them: in order, in another object, later."""
    docs = scan(RE, TomoGANCallback(denoiser, streams=["primary"]), LiveDenoisedView(use_teleporter=False),
                detector(tmp_path, "stream"))
    remote = LiveDenoisedView(interval=0, use_teleporter=False)
    for name, doc in docs:
        remote(name, doc)
    assert remote.shown is not None and remote.shown.seq_num == 5
    np.testing.assert_array_equal(remote.shown.raw, raw_frame(docs, "det_image", 5))
    np.testing.assert_array_equal(remote.shown.denoised, denoised_frame(docs, "det_image", 5))


def test_on_the_derived_only_stream_serve_publishes_it_shows_the_denoised_frames(RE, denoiser, tmp_path):
    from bluesky_tomogan.serve.worker import DerivedOnly

    docs = scan(RE, TomoGANCallback(denoiser, streams=["primary"]), LiveDenoisedView(use_teleporter=False),
                detector(tmp_path, "stream"))
    remote = LiveDenoisedView(interval=0, use_teleporter=False)
    published = DerivedOnly(remote)  # what `serve --zmq-out` sends on
    for name, doc in docs:
        published(name, doc)
    assert remote.shown is not None and remote.shown.seq_num == 5 and remote.shown.raw is None
    np.testing.assert_array_equal(remote.shown.denoised, denoised_frame(docs, "det_image", 5))


def test_a_window_closed_between_runs_is_opened_again_at_the_next_run(RE, denoiser):
    import matplotlib.pyplot as plt

    view = LiveDenoisedView(interval=0, use_teleporter=False)
    scan(RE, TomoGANCallback(denoiser, streams=["primary"]), view, num=3)
    first = view.figure
    plt.close(first)
    RE(bp.count([camera()], num=3))
    assert view.figure is not first and plt.fignum_exists(view.figure.number)
    assert len(view.figure.axes) == 2 and view.shown is not None and view.shown.seq_num == 3


def test_a_large_frame_is_drawn_with_every_kth_pixel_in_detector_coordinates():
    from bluesky_tomogan.callbacks.live_view import DISPLAY_PIXELS, Panels

    panels = Panels(None, ("raw", "denoised"))
    frame = np.arange(2000 * 3000, dtype=np.float32).reshape(2000, 3000)
    panels.draw([frame, frame], frame, "a large detector", False)
    image = panels.fig.axes[0].images[0]
    drawn = np.asarray(image.get_array())
    assert max(drawn.shape) <= DISPLAY_PIXELS and drawn[0, 1] == frame[0, 4]  # every 4th pixel of 3000
    assert image.get_extent() == [-0.5, 2999.5, 1999.5, -0.5]  # the axes still count detector pixels


QT_SCAN = """
import threading
import matplotlib
matplotlib.use("QtAgg")
import matplotlib.pyplot as plt
from bluesky import RunEngine
from bluesky_tomogan import TomoGANCallback, TomoReconstruction, load_denoiser
from bluesky_tomogan.callbacks import LiveDenoisedView, LiveSliceView
from bluesky_tomogan.callbacks.live_view import shows_windows
from bluesky_tomogan.devices import SimTomoDetector, SimTomoStage
from bluesky_tomogan.plans import tomo_scan
from bluesky_tomogan.simulate.tomography import angles_deg

plt.ion()
stage = SimTomoStage(name="stage")
det = SimTomoDetector(name="det", stage=stage, shape=(64, 64), directory={raw!r}, simulate_timing=False)
cb = TomoGANCallback(load_denoiser("tomogan-projection", backend="onnxruntime"), streams=["primary", "flat"])
rec = TomoReconstruction(load_denoiser("tomogan-slice", backend="onnxruntime"), every=12)
frames, slices = LiveDenoisedView(interval=0), LiveSliceView(interval=0)
threads = set()
draw = frames._draw
frames._draw = lambda shown: (threads.add(threading.current_thread().name), draw(shown))
cb.subscribe(frames)
cb.subscribe(rec)
rec.subscribe(slices)
RE = RunEngine()
RE.subscribe(cb)
RE(tomo_scan(det, stage, list(angles_deg(24)), n_darks=1, n_flats=1))
rec.wait()
for _ in range(20):
    plt.pause(0.05)  # the documents handed to the Qt thread, and their draws
visible = [plt.figure(n).canvas.manager.window.isVisible() for n in plt.get_fignums()]
print("RESULT", shows_windows(), frames.shown.seq_num, slices.shown.final, sorted(threads), visible)
"""


def test_in_a_qt_window_the_views_draw_on_the_gui_thread(tmp_path):
    """With a display: Qt windows, documents handed from the RunEngine's thread to the Qt (main) thread."""
    import shutil
    import subprocess
    import sys

    if shutil.which("xvfb-run") is None:
        pytest.skip("needs a virtual display: apt-get install xvfb libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 "
                    "libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-cursor0")
    if subprocess.run([sys.executable, "-c", "import PyQt5.QtWidgets"], capture_output=True).returncode != 0:
        pytest.skip("needs Qt bindings: pip install PyQt5")
    done = subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", sys.executable, "-c",
                           QT_SCAN.format(raw=str(tmp_path / "raw"))], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RESULT True 24 True ['MainThread'] [True, True]" in done.stdout, done.stdout[-2000:]


TK_SCAN = QT_SCAN.replace('matplotlib.use("QtAgg")', 'matplotlib.use("TkAgg")').replace(
    "RE = RunEngine()", "from bluesky_tomogan.callbacks.live_view import LiveViewDuringTask\n"
                        "RE = RunEngine(during_task=LiveViewDuringTask())").replace(
    "draw = frames._draw\nframes._draw = lambda shown: (threads.add(threading.current_thread().name), draw(shown))",
    "import bluesky_tomogan.callbacks.live_view as lv\ndraw_now = lv.Panels._draw_now\n"
    "lv.Panels._draw_now = lambda self, *a: (threads.add(threading.current_thread().name), draw_now(self, *a))"
).replace("window.isVisible()", "window.winfo_viewable() == 1") + """
plt.figure(); plt.plot([0, 1]); plt.pause(0.05)  # the session's own plots still work on its main thread
print("OWN PLOT", threading.current_thread().name)
"""


def test_in_a_tk_window_the_views_draw_on_the_main_thread(tmp_path):
    """With a display and Tk (matplotlib's choice where no Qt bindings are installed): no teleporter, so the views
    keep their newest picture for the main thread, which LiveViewDuringTask draws during the scan and each
    window's timer after it; the session's own plots still work after the scan."""
    import shutil
    import subprocess
    import sys

    if shutil.which("xvfb-run") is None:
        pytest.skip("needs a virtual display: apt-get install xvfb")
    if subprocess.run([sys.executable, "-c", "import tkinter"], capture_output=True).returncode != 0:
        pytest.skip("needs Tk: a Python built with tkinter (Debian: python3-tk)")
    done = subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", sys.executable, "-c",
                           TK_SCAN.format(raw=str(tmp_path / "raw"))], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RESULT True 24 True ['MainThread'] [True, True]" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    assert "OWN PLOT MainThread" in done.stdout
    assert "main thread is not in main loop" not in done.stderr


def test_off_the_main_thread_a_windowed_view_keeps_its_newest_picture_for_the_main_thread(monkeypatch, caplog):
    """A GUI toolkit's windows (Tk, GTK, wx) are touched from the main thread only: a picture drawn from the
    RunEngine's or the worker's thread waits there, the newest only, until LiveViewDuringTask draws it."""
    import threading

    from bluesky_tomogan.callbacks import live_view
    from bluesky_tomogan.callbacks.live_view import LiveViewDuringTask, draw_deferred

    monkeypatch.setattr(live_view, "shows_windows", lambda: True)  # agg here, standing in for Tk
    monkeypatch.setattr(live_view, "_pumped", threading.Event())
    monkeypatch.setattr(live_view, "_told_no_pump", threading.Event())
    panels = live_view.Panels(None, ("raw", "denoised"))
    drew_on = []
    draw_now = panels._draw_now
    panels._draw_now = lambda *a: (drew_on.append(threading.current_thread().name), draw_now(*a))

    def from_the_worker(title):
        worker = threading.Thread(target=panels.draw, args=([np.ones((4, 4)), None], None, title, False))
        worker.start()
        worker.join()

    with caplog.at_level(logging.WARNING, logger="bluesky_tomogan.callbacks.live_view"):
        from_the_worker("frame 1")
        from_the_worker("frame 2")
    assert panels.fig is None and drew_on == []
    assert caplog.text.count("give the RunEngine during_task=LiveViewDuringTask()") == 1
    assert draw_deferred() == 1 and drew_on == ["MainThread"]  # the newest picture only
    assert panels.fig._suptitle.get_text() == "frame 2"
    assert draw_deferred() == 0

    done = threading.Event()

    def plan():  # what the RunEngine's thread does while the main thread blocks in the during task
        panels.draw([np.zeros((4, 4)), None], None, "frame 3", False)
        done.set()

    threading.Thread(target=plan).start()
    LiveViewDuringTask(poll=0.01).block(done)
    assert panels.fig._suptitle.get_text() == "frame 3" and drew_on == ["MainThread", "MainThread"]
    failures = []

    def drawing_off_the_main_thread():
        try:
            draw_deferred()
        except RuntimeError as exc:
            failures.append(str(exc))

    worker = threading.Thread(target=drawing_off_the_main_thread)
    worker.start()
    worker.join()
    assert failures == ["draw_deferred() draws windows: call it on the main thread"]


def test_a_frame_announced_but_not_in_its_file_yet_is_not_waited_for(tmp_path, monkeypatch):
    """A view reads on the thread that feeds it documents (the RunEngine's, in process): it never waits."""
    import event_model

    from bluesky_tomogan import hdf5_frames, stream_readers
    from bluesky_tomogan.hdf5_frames import FrameFile

    file = FrameFile(tmp_path / "det.h5", (8, 8), np.uint16)
    file.append(np.ones((1, 8, 8), np.uint16))  # one frame written, three announced
    bundle = event_model.compose_run()
    resource = bundle.compose_stream_resource(mimetype="application/x-hdf5", uri=file.uri, data_key="det",
                                              parameters={"dataset": file.dataset, "chunk_shape": [1, 8, 8]})
    view = LiveDenoisedView(use_teleporter=False)
    view("start", bundle.start_doc)
    view("stream_resource", resource.stream_resource_doc)
    (key, read), = view._readers.values()

    def no_sleep(seconds):
        raise AssertionError(f"a live view's reader slept {seconds} s")

    monkeypatch.setattr(hdf5_frames.time, "sleep", no_sleep)
    monkeypatch.setattr(stream_readers.time, "sleep", no_sleep)
    with pytest.raises(IndexError, match="has 1 frames"):
        read(2, 3)
    np.testing.assert_array_equal(read(0, 1)[0], np.ones((8, 8)))
    file.close()


@pytest.mark.parametrize("said_in", ["events", "file"])
def test_a_frame_its_event_calls_a_dark_or_flat_is_titled_so(RE, denoiser, tmp_path, said_in):
    """Darks and flats among the projections (an ``image_key`` per event, or in the file beside the frames as
    a fly scan writes it: tests/fly_scan.py): a black frame in the view is said to be a dark, not left for
    the scientist to wonder about. (The run's documents are replayed with one derived row per event, so
    that every row is drawn.)"""
    import event_model

    from .fly_scan import as_fly_scan
    from .keyed_scan import keyed_tomo_scan

    det = detector(tmp_path, "stream")
    cb = TomoGANCallback(denoiser, inline=True)
    docs = []
    cb.subscribe(lambda name, doc: docs.append((name, doc)))
    RE.subscribe(cb)
    RE(keyed_tomo_scan(det, det.sample_stage, [0, 20, 40], n_darks=2, n_flats=2))
    if said_in == "file":
        docs = as_fly_scan(docs, tmp_path, angle=det.sample_stage.theta.name, moved={"image_key": "det-image_key"})
    view = LiveDenoisedView(interval=0, use_teleporter=False)
    titles = {}
    for name, doc in docs:
        for one in event_model.unpack_event_page(doc) if name == "event_page" else [doc]:
            view("event" if name == "event_page" else name, one)
            if view.shown is not None and view.shown.seq_num not in titles:
                titles[view.shown.seq_num] = view.figure._suptitle.get_text().split("  ")[1]
    assert titles == {1: "primary/det_image frame 1 (dark)", 2: "primary/det_image frame 2 (dark)",
                      3: "primary/det_image frame 3 (flat)", 4: "primary/det_image frame 4 (flat)",
                      5: "primary/det_image frame 5", 6: "primary/det_image frame 6",
                      7: "primary/det_image frame 7"}
