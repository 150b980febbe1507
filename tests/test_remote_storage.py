"""Remote storage and concurrent pushes: the pusher, the report and serving on an object store.

``ram://`` (TensorFlow's in-memory filesystem) stands in for ``gs://``: like an object store it
is reached only through ``tf.io.gfile`` (``os``/``open``/``shutil`` on a ``ram://`` path write a
local directory named ``ram:``) and it has no atomic directory rename. It lives in this process,
so everything that touches it runs here. Beam cannot write ``ram://``, so Beam-made inputs (the
Examples) are made locally by the shared fixtures and copied there. The ServingPusher and
RunReportGen components on ``ram://`` are tested with the Evaluator's output, in
tests/test_evaluation.py.
"""

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from components.run_report import component as run_report
from components.serving_pusher import layout, warmup
from pipeline import config as config_lib
from pipeline import features, storage
from serving import client
from serving.models import ModelVersions, replay_warmup
from serving.server import Predictor, Server
from tests.conftest import feature, png_indices, read_examples
from tests.test_evaluation import _files, _ram, _read, _saved_model
from trainer.export import SERVING_DEFAULT

MODEL = "deeplab"


@pytest.fixture(autouse=True)
def _no_local_ram_directory(tmp_path, monkeypatch):
    """Runs each test in an empty directory, and checks that no code wrote ``ram://`` paths with
    ``os``/``open`` (which makes a local directory named ``ram:``)."""
    monkeypatch.chdir(tmp_path)
    yield
    assert not os.path.exists(tmp_path / "ram:"), "something wrote a ram:// path to local disk"


def _eval_images(examples_uri: str, count: int) -> list:
    """The first ``count`` eval images, read with the tests' own reader."""
    examples = read_examples(examples_uri, features.EVAL_SPLIT)[:count]
    return [feature(e, features.IMAGE_KEY)[0] for e in examples]


# serving/client.py


def test_prediction_results_are_written_through_gfile():
    out = _ram("predictions") + "/masks"
    mask = np.arange(6 * 8, dtype=np.uint8).reshape(6, 8) % features.NUM_CLASSES
    jpeg = io.BytesIO()
    Image.fromarray(np.full((6, 8, 3), 90, np.uint8)).save(jpeg, format="JPEG")
    mask_path, overlay_path = client.write_results("photos/2007_000032.jpg", jpeg.getvalue(), mask, out)
    assert (mask_path, overlay_path) == (f"{out}/2007_000032.png", f"{out}/2007_000032_overlay.jpg")
    np.testing.assert_array_equal(png_indices(_read(mask_path)), mask)
    with Image.open(io.BytesIO(_read(overlay_path))) as overlay:
        assert (overlay.format, overlay.size) == ("JPEG", (8, 6))


# The run report's publish


def _report_dir(root: str, run: str, figures_drawn: dict) -> str:
    """A report as ``build`` leaves it: figures (``{key: what it shows}``), and report.json and
    index.html naming them."""
    out = f"{root}/artifacts/{run}"
    tf.io.gfile.makedirs(out)
    figures = {}
    for key, shows in figures_drawn.items():
        png = io.BytesIO()
        pixels = np.frombuffer(shows.encode().ljust(16), np.uint8)[:16].reshape(4, 4)
        Image.fromarray(pixels).save(png, format="PNG")
        figures[key] = run_report.figure_name(key, png.getvalue())
        with tf.io.gfile.GFile(f"{out}/{figures[key]}", "wb") as f:
            f.write(png.getvalue())
    with tf.io.gfile.GFile(f"{out}/{run_report.REPORT_JSON}", "w") as f:
        json.dump({"run": run, "figures": figures}, f)
    with tf.io.gfile.GFile(f"{out}/{run_report.INDEX}", "w") as f:
        f.write("".join(f"<img src='{name}'>" for name in figures.values()) + f"<p>{run}</p>")
    return out


def _published(publish_dir: str) -> tuple:
    report = json.loads(_read(f"{publish_dir}/{run_report.REPORT_JSON}"))
    page = _read(f"{publish_dir}/{run_report.INDEX}").decode()
    return report, page, set(tf.io.gfile.listdir(publish_dir))


@pytest.mark.parametrize("filesystem", ["local", "object store"])
def test_each_published_report_names_only_files_that_are_there(filesystem, tmp_path):
    root = str(tmp_path) if filesystem == "local" else _ram("report")
    publish_dir = f"{root}/pipeline/report"
    runs = {
        "first": {"class_iou": "iou 1", "data": "data"},
        "second": {"class_iou": "iou 2", "data": "data", "samples": "samples 2"},
        "third": {"class_iou": "iou 3", "confusion_matrix": "matrix 3"},
    }
    shown = {}
    for run, drawn in runs.items():
        run_report.publish(_report_dir(root, run, drawn), publish_dir)
        report, page, names = _published(publish_dir)
        shown[run] = report["figures"]
        # index.html and report.json are this run's, and every figure they name is there.
        assert report["run"] == run and page.endswith(f"<p>{run}</p>")
        assert set(re.findall(r"src='([^']+)'", page)) == set(shown[run].values()) <= names
    # Figures are named by their content: one that did not change keeps its name; a new one
    # never overwrites a file that the page a reader is loading names.
    assert shown["first"]["data"] == shown["second"]["data"]
    assert shown["first"]["class_iou"] != shown["second"]["class_iou"]
    # The previous run's figures stay for one more publish, older ones go; nothing else is left.
    kept = {*shown["second"].values(), *shown["third"].values()}
    assert names == kept | {run_report.INDEX, run_report.REPORT_JSON}
    assert shown["first"]["class_iou"] not in names


# ServingPusher's layout on an object store


def test_concurrent_pushes_to_an_object_store_never_share_a_version(tmp_path):
    base = _ram("concurrent") + "/deeplab"
    models = {f"model/{i}": _saved_model(tmp_path, f"m{i}") for i in range(8)}
    results, errors = {}, []

    def push(source):
        try:
            results[source] = layout.push(models[source], base, source)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=push, args=(source,)) for source in models]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    pushed = {version: source for source, (version, new) in results.items() if new}
    assert len(pushed) == len(models)
    assert layout.versions(base) == sorted(pushed)
    for version, source in pushed.items():
        version_dir = f"{base}/{version}"
        # One pusher per version: its graph, its provenance, nothing of another's.
        assert _read(f"{version_dir}/saved_model.pb") == b"graph of m" + source[-1].encode()
        assert layout.provenance(version_dir) == {"source": source}
        assert _files(version_dir) == {"saved_model.pb", "variables/variables.index", layout.PROVENANCE_FILE}


@pytest.fixture(scope="module")
def eval_images(learning_data):
    return _eval_images(learning_data[0], 4)


@pytest.mark.slow
def test_the_server_loads_an_object_store_version_only_once_complete(
    untrained_model, learning_data, eval_images, tmp_path
):
    examples_uri, _ = learning_data
    root = _ram("serving")
    base = f"{root}/{MODEL}"
    examples = f"{root}/examples"
    storage.copy_tree(examples_uri, examples)
    model = f"{root}/model"
    storage.copy_tree(untrained_model, model)

    def add_warmup(version_dir):
        warmup.write(version_dir, warmup.prediction_logs(warmup.eval_images(examples, 2), MODEL))

    # 1. A push that fails partway (a file of the model cannot be read) leaves an integer
    # directory with some of the files but no saved_model.pb: not a version.
    broken = shutil.copytree(untrained_model, tmp_path / "broken")
    os.symlink(tmp_path / "nowhere", broken / "variables" / "zz-unreadable")
    with pytest.raises((tf.errors.OpError, OSError)):
        layout.push(str(broken), base, source="model/broken", add_files=add_warmup)
    assert tf.io.gfile.exists(f"{base}/1/variables/variables.index")
    assert not tf.io.gfile.exists(f"{base}/1/saved_model.pb")
    assert layout.versions(base) == []
    models = ModelVersions(MODEL, base, warm=lambda s: replay_warmup(s, Predictor.call), poll_seconds=0.1)
    assert not models.poll() and models.states() == {}

    # 2. The next push takes the next number. While its files are being written, before
    # saved_model.pb, the server sees no version to load; once it is complete, it loads it.
    def add_warmup_and_look(version_dir):
        add_warmup(version_dir)
        assert version_dir == f"{base}/2" and not tf.io.gfile.exists(f"{version_dir}/saved_model.pb")
        assert not models.poll() and models.states() == {}

    assert layout.push(model, base, source="model/good", add_files=add_warmup_and_look) == (2, True)
    assert layout.versions(base) == [2] and layout.provenance(f"{base}/2") == {"source": "model/good"}
    assert _files(f"{base}/2") == _files(untrained_model) | {warmup.WARMUP_FILE, layout.PROVENANCE_FILE}
    logs = warmup.read(f"{base}/2")
    assert [tf.make_ndarray(log.predict_log.request.inputs[warmup.IMAGES_INPUT])[0] for log in logs] == (
        eval_images[:2]
    )

    # 3. `deeplab-tfx serve` over the object store: version 2, warmed up, answering Predict.
    server = Server(MODEL, base, port=0, poll_seconds=0.1)
    server.start()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.signature_name = MODEL, SERVING_DEFAULT
        request.inputs[warmup.IMAGES_INPUT].CopyFrom(tf.make_tensor_proto(eval_images[:1], dtype=tf.string))
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
        width, height = Image.open(io.BytesIO(eval_images[0])).size
        assert response.model_spec.version.value == 2
        assert tf.make_ndarray(response.outputs["class_ids"]).shape == (1, height, width)
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec=request.model_spec), timeout=10
        )
        assert [(s.version, s.state) for s in status.model_version_status] == [
            (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE)
        ]
        channel.close()
    finally:
        server.stop()


# Concurrent pushes on local disk


_PUSHER = """
import os, sys, time
from components.serving_pusher import layout

model, base, source, ready = sys.argv[1:]

def hold(staging_dir):
    with open(ready + ".partial", "w") as f:
        f.write(staging_dir)
    os.rename(ready + ".partial", ready)
    while not os.path.exists(ready + ".go"):
        time.sleep(0.05)

print(layout.push(model, base, source, add_files=hold), flush=True)
"""


def _start_pusher(model: str, base: str, source: str, ready: str) -> subprocess.Popen:
    """Another process pushing ``model``: it writes its staging dir's path to ``ready`` and waits,
    mid-push, until ``ready + ".go"`` appears."""
    return subprocess.Popen(
        [sys.executable, "-c", _PUSHER, model, base, source, ready], cwd=config_lib.PROJECT_ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_until_pushing(proc, ready: str) -> str:
    deadline = time.time() + 120
    while not os.path.exists(ready):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    return open(ready).read()


@pytest.mark.slow
def test_a_push_removes_the_staging_of_dead_pushers_only(tmp_path):
    base = str(tmp_path / MODEL)
    live_ready, dead_ready = str(tmp_path / "live.ready"), str(tmp_path / "dead.ready")
    live = _start_pusher(_saved_model(tmp_path, "live"), base, "model/live", live_ready)
    dead = _start_pusher(_saved_model(tmp_path, "dead"), base, "model/dead", dead_ready)
    try:
        live_staging = _wait_until_pushing(live, live_ready)
        dead_staging = _wait_until_pushing(dead, dead_ready)
        dead.send_signal(signal.SIGKILL)  # no cleanup can run
        dead.communicate(timeout=60)
        assert os.path.isdir(dead_staging) and os.path.isdir(live_staging)

        assert layout.push(_saved_model(tmp_path, "mine"), base, source="model/mine") == (1, True)
        assert os.path.isdir(live_staging), "removed the staging directory of a push in progress"
        assert not os.path.exists(dead_staging), "kept the staging directory of a killed push"

        open(live_ready + ".go", "w").close()
        out, err = live.communicate(timeout=120)
        assert live.returncode == 0, err[-3000:]
        assert out.strip() == "(2, True)"
    finally:
        for proc in (live, dead):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert layout.versions(base) == [1, 2]
    sources = [layout.provenance(os.path.join(base, v))["source"] for v in ("1", "2")]
    assert sources == ["model/mine", "model/live"]
    # Nothing else is left: no staging directory, no lock file.
    assert sorted(os.listdir(base)) == ["1", "2"]
