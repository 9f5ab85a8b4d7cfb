"""The IPython profile starts a working beamline session (run non-interactively)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "profile_tomogan"


def test_profile_runs_a_tomography_scan_stored_with_its_denoised_stream(tmp_path):
    from bluesky_tomogan.inference.catalogue import install_model

    install_model("tomogan-projection-light", "bm-session")  # a beamline's own model, chosen by TOMOGAN_MODEL
    ipython = Path(sys.executable).parent / "ipython"  # a core dependency
    profile = tmp_path / "profile_tomogan"  # a copy: IPython writes its history and logs into the profile
    shutil.copytree(PROFILE / "startup", profile / "startup")
    code = ("det.exposure_time.put(0.001); "
            "uid, = RE(tomo_scan(det, stage, [0, 45, 90, 135], n_darks=1, n_flats=1)); reconstruction.wait(); "
            "run = client[uid]; "
            "print('STREAMS', sorted(run)); "
            "print('SHAPE', run['denoised']['det_image_denoised'].shape, run['denoised']['det_image_denoised'].dtype); "
            "print('ERRORS', tomogan.errors, tomogan.dropped); "
            "print('QC', type(qc).__name__, [s._sig.name for s in feedback.suspenders], RE.record_interruptions); "
            "print('MODEL', denoiser.provenance()['model'], reconstruction.slice_denoiser.provenance()['model']); "
            "print('QCCOLUMNS', len(run['denoised']['det_image_qc_flags'].read())); "
            "reprocess(client, uid, denoiser, streams=['primary']); "  # the session's stored run, denoised again
            "print('AGAIN', list(client[uid]['denoised_2']['det_image_denoised'].shape)); "
            # the fly-scan beamline (ophyd-async) of the same session, into the same store
            "fly, = RE(tomo_fly_scan(fly_det, rot, 0, 180, 6, exposure=0.01, shutter=shutter, sample_x=sample_x, "
            "n_darks=1, n_flats=1, capture=[panda])); reconstruction.wait(); "
            "print('FLY', list(client[fly]['denoised']['fly_det_denoised'].shape), tomogan.errors, "
            "reconstruction.errors)")
    env = {**os.environ, "TOMOGAN_DATA": str(tmp_path / "data"), "TOMOGAN_MODEL": "bm-session",
           "TOMOGAN_FRAME_DTYPE": "source", "TOMOGAN_COMPRESSION": "lz4", "TOMOGAN_TILED_BATCH": "1"}
    env.pop("TOMOGAN_TILED_URI", None)
    done = subprocess.run([str(ipython), f"--profile-dir={profile}", "--no-banner", "--colors=nocolor", "-c", code],
                          stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "bluesky-tomogan session" in done.stdout
    assert f"embedded Tiled in {tmp_path / 'data'}; each row stored as it comes)" in done.stdout
    assert "other processes (bluesky-tomogan view --tiled URI) reach it at server_of(client).uri" in done.stdout
    assert "`live_view`, `slice_view`: the newest raw and denoised frame, the newest slice, not shown (no window " \
        "here; %matplotlib qt, then tomogan.subscribe(LiveDenoisedView()), " \
        "reconstruction.subscribe(LiveSliceView()))" in done.stdout  # agg here
    assert ("STREAMS ['dark', 'denoised', 'flat', 'flat_denoised', 'interruptions', 'primary', 'reconstruction']"
            in done.stdout)
    assert "SHAPE (4, 512, 512) uint16" in done.stdout  # the detector's counts, compressed (TOMOGAN_FRAME_DTYPE)
    assert "ERRORS [] 0" in done.stdout
    assert "QC QCMonitor ['qc_beam_lost'] True" in done.stdout  # QC monitor, its suspender, interruptions recorded
    assert "MODEL bm-session tomogan-slice" in done.stdout
    assert "QCCOLUMNS 4" in done.stdout
    assert "AGAIN [4, 512, 512]" in done.stdout
    assert ("fly_det (ophyd-async camera, 512x512), rot, sample_x, shutter, panda (position capture): "
            "tomo_fly_scan" in done.stdout)
    assert "FLY [6, 512, 512] [] []" in done.stdout  # the captured angles: no note of the plan's nominal ones
