"""bluesky-queueserver runs the beamline's tomography plans with the callback subscribed.

``start-re-manager --startup-dir profiles/profile_tomogan/startup --keep-re``: the IPython
profile's startup code is the queue server's startup directory, unchanged. Redis comes
from the system packages (``redis-server``) and is started and stopped by the test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bluesky_tomogan.storage import close_local_tiled, local_tiled, server_of

from .processes import free_port, listening, wait_until

STARTUP = Path(__file__).resolve().parents[1] / "profiles" / "profile_tomogan" / "startup"
BIN = Path(sys.executable).parent

pytest.importorskip("bluesky_queueserver", reason="needs bluesky-queueserver (test extra)")
pytest.importorskip("bluesky_queueserver_api", reason="needs bluesky-queueserver-api (test extra)")
if shutil.which("redis-server") is None:
    pytest.skip("needs redis-server (Debian package redis-server; .ci/run installs it)", allow_module_level=True)




@pytest.fixture
def redis(tmp_path):
    port = free_port()
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", str(tmp_path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    try:
        wait_until(lambda: listening(port), 20, "redis-server")
        yield f"localhost:{port}"
    finally:
        process.terminate()
        process.wait(10)


#: The client side, in its own process like a real one (and because bluesky-queueserver's client leaves its
#: zmq.Context to the garbage collector, whose ResourceWarning would fail whichever test ran next here).
CLIENT = """
import json, sys
from bluesky_queueserver_api import BPlan
from bluesky_queueserver_api.zmq import REManagerAPI

control, info = sys.argv[1], sys.argv[2]
RM = REManagerAPI(zmq_control_addr=control, zmq_info_addr=info)
RM.wait_for_idle(timeout=60)
RM.environment_open()
RM.wait_for_idle(timeout=180)
status = RM.status()
assert status["worker_environment_exists"], status
RM.item_add(BPlan("tomo_scan", "det", "stage", [0, 45, 90, 135], n_darks=1, n_flats=1))
# the adaptive plan with the session's QC feedback (the profile's qc_tomo_scan_with(feedback))
RM.item_add(BPlan("tomo_scan_with_qc", "det", "stage", [0, 60, 120], n_darks=1, n_flats=1, final_wait=5))
# a fly scan of the ophyd-async devices, each named as the others are, each frame's angle captured by the PandA
RM.item_add(BPlan("tomo_fly_scan", "fly_det", "rot", 0, 180, 8, exposure=0.02, shutter="shutter",
                  sample_x="sample_x", n_darks=1, n_flats=1, capture=["panda"]))
# the same with the session's QC feedback: it would fly again over frames QC found unusable
RM.item_add(BPlan("fly_scan_with_qc", "fly_det", "rot", 0, 180, 8, exposure=0.02, shutter="shutter",
                  sample_x="sample_x", n_darks=1, n_flats=1, capture=["panda"], final_wait=5))
RM.queue_start()
RM.wait_for_idle(timeout=240)
items = RM.history_get()["items"][-4:]
RM.environment_close()
RM.wait_for_idle(timeout=60)
RM.close()
print("RESULT", json.dumps([item["result"] for item in items]))
"""


def test_a_queued_tomography_plan_runs_and_its_denoised_stream_is_in_tiled(redis, tmp_path):
    store = tmp_path / "store"
    client = local_tiled(store)
    control, info = free_port(), free_port()
    env = dict(os.environ, TOMOGAN_TILED_URI=server_of(client).uri, TOMOGAN_DATA=str(store),
               TOMOGAN_BACKEND="onnxruntime")
    with open(tmp_path / "re-manager.log", "w") as log:  # the child keeps its own descriptor
        manager = subprocess.Popen(
            [str(BIN / "start-re-manager"), "--startup-dir", str(STARTUP), "--keep-re", "--redis-addr", redis,
             "--redis-name-prefix", f"tomogan-test-{control}",
             "--zmq-control-addr", f"tcp://127.0.0.1:{control}", "--zmq-info-addr", f"tcp://127.0.0.1:{info}",
             "--existing-plans-devices", str(tmp_path / "existing_plans_and_devices.yaml"),
             "--update-existing-plans-devices", "ENVIRONMENT_OPEN", "--use-ipython-kernel", "OFF",
             "--user-group-permissions", str(STARTUP / "user_group_permissions.yaml")],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        wait_until(lambda: listening(control), 60, "the RE manager")
        done = subprocess.run([sys.executable, "-c", CLIENT, f"tcp://127.0.0.1:{control}",
                               f"tcp://127.0.0.1:{info}"], capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stderr[-3000:] + (tmp_path / "re-manager.log").read_text()[-3000:]
        result, qc_result, fly_result, fly_qc_result = json.loads(done.stdout.split("RESULT", 1)[1])
        assert result["exit_status"] == "completed", result
        assert qc_result["exit_status"] == "completed", qc_result
        (uid,) = result["run_uids"]
        # the final reconstruction and the stop follow the plan's end (TomoReconstruction finishes them)
        run = wait_until(lambda: "stop" in client[uid].metadata and client[uid], 60, "the stored run's stop")
        assert run["denoised"]["det_image_denoised"].shape == (4, 512, 512)
        assert run.metadata["stop"]["exit_status"] == "success"
        assert len(run["reconstruction"]["slice"].read()) == 3
        (qc_uid,) = qc_result["run_uids"]
        qc_run = wait_until(lambda: "stop" in client[qc_uid].metadata and client[qc_uid], 60, "the QC run's stop")
        assert qc_run.metadata["start"]["plan_name"] == "qc_tomo_scan"
        assert qc_run["denoised"]["det_image_denoised"].shape[0] >= 3  # and any angle QC had re-taken
        assert fly_result["exit_status"] == "completed", fly_result
        (fly_uid,) = fly_result["run_uids"]
        fly_run = wait_until(lambda: "stop" in client[fly_uid].metadata and client[fly_uid], 60, "the fly run's stop")
        assert fly_run.metadata["start"]["plan_name"] == "tomo_fly_scan"
        assert fly_run["denoised"]["fly_det_denoised"].shape == (8, 512, 512)
        assert fly_run.metadata["start"]["plan_args"]["capture"] == ["panda"]
        assert np.ravel(fly_run["primary"]["panda-inenc-1-val"].read()).shape == (8,)  # the profile's angle_field
        assert all("nominal" not in str(n) for n in fly_run["reconstruction"]["note"].read())
        assert fly_qc_result["exit_status"] == "completed", fly_qc_result
        (fly_qc_uid,) = fly_qc_result["run_uids"]
        fly_qc_run = wait_until(lambda: "stop" in client[fly_qc_uid].metadata and client[fly_qc_uid], 60,
                                "the QC fly run's stop")
        assert fly_qc_run.metadata["start"]["plan_args"]["max_retakes"] == 1  # the feedback was bound
        assert fly_qc_run["denoised"]["fly_det_denoised"].shape[0] >= 8  # and any frame flown again
    finally:
        manager.terminate()
        try:
            manager.wait(30)
        except subprocess.TimeoutExpired:
            manager.kill()
        close_local_tiled(client)
