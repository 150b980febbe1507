"""Remote storage and concurrent pushes: the pusher, the report and serving on an object store.

``ram://`` (TensorFlow's in-memory filesystem) stands in for ``gs://``: like an object store it
is reached only through ``tf.io.gfile`` (``os``/``open``/``shutil`` on a ``ram://`` path write a
local directory named ``ram:``) and it has no atomic directory rename. It lives in this process,
so everything that touches it runs here. Beam cannot write ``ram://``, so Beam-made inputs (the
Examples) are made locally by the shared fixtures and copied there; a pusher killed in another
process writes to a ``file://`` URI instead, pushed the object-store way too
(``storage.is_local``) on a disk both processes see. The ServingPusher and
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
from core import artifacts, features, paths, signatures, storage
from core.dataset_spec import VOC_SPEC
from serving import client, layout, warmup
from serving.models import ModelVersions, replay_warmup
from serving.server import Predictor, Server
from tests.conftest import feature, png_indices, read_examples
from tests.helpers.ram_store import fake_saved_model, files_under, ram_root, read_bytes
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


# core/storage.py


@pytest.mark.parametrize(
    "path, local",
    [
        ("/tmp/pipeline/serving", True),
        ("relative/serving", True),
        ("/gcsx/serving", True),  # only the /gcs/ mount itself is Cloud Storage
        ("/gcs/bucket/serving", False),  # gcsfuse, as Vertex AI mounts buckets
        ("/gcs", False),
        ("gs://bucket/serving", False),
        ("s3://bucket/serving", False),
        ("ram://serving", False),
        ("file:///tmp/serving", False),  # a URI: the safe side
    ],
)
def test_only_plain_paths_off_the_gcsfuse_mount_count_as_local_disk(path, local):
    assert storage.is_local(path) is local


@pytest.mark.parametrize("filesystem", ["local", "object store"])
def test_every_writer_replaces_a_file_instead_of_appending_to_it(filesystem, tmp_path):
    # TF 2.16's ram:// appends to a file written again; storage's writers must replace it there
    # as they do on local disk and real object stores.
    root = str(tmp_path / "out") if filesystem == "local" else ram_root("writers")
    tf.io.gfile.makedirs(f"{root}/src")
    for name, text in (("long.txt", "a longer first text"), ("short.txt", "short")):
        with tf.io.gfile.GFile(f"{root}/src/{name}", "w") as f:
            f.write(text)

    storage.write_file(f"{root}/written", "a longer first text")
    storage.write_file(f"{root}/written", b"short")
    storage.replace_file(f"{root}/src/long.txt", f"{root}/replaced")
    storage.replace_file(f"{root}/src/short.txt", f"{root}/replaced")
    storage.copy_tree(f"{root}/src", f"{root}/copy")
    storage.replace_file(f"{root}/src/long.txt", f"{root}/src/short.txt")
    storage.copy_tree(f"{root}/src", f"{root}/copy")  # over the files it copied before

    assert storage.read_file(f"{root}/written") == b"short"
    assert storage.read_file(f"{root}/replaced", binary=False) == "short"
    assert read_bytes(f"{root}/copy/short.txt") == b"a longer first text"
    assert read_bytes(f"{root}/copy/long.txt") == b"a longer first text"
    # Nothing else is left: no partial files beside the ones written.
    assert files_under(root) == {"written", "replaced", "src/long.txt", "src/short.txt", "copy/long.txt",
                                 "copy/short.txt"}  # fmt: skip


# serving/client.py


def test_prediction_results_are_written_through_gfile():
    out = ram_root("predictions") + "/masks"
    mask = np.arange(6 * 8, dtype=np.uint8).reshape(6, 8) % VOC_SPEC.num_classes
    jpeg = io.BytesIO()
    Image.fromarray(np.full((6, 8, 3), 90, np.uint8)).save(jpeg, format="JPEG")
    mask_path, overlay_path = client.write_results(
        "photos/2007_000032.jpg", jpeg.getvalue(), mask, out, VOC_SPEC
    )
    assert (mask_path, overlay_path) == (f"{out}/2007_000032.png", f"{out}/2007_000032_overlay.jpg")
    np.testing.assert_array_equal(png_indices(read_bytes(mask_path)), mask)
    with Image.open(io.BytesIO(read_bytes(overlay_path))) as overlay:
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
    report = json.loads(read_bytes(f"{publish_dir}/{run_report.REPORT_JSON}"))
    page = read_bytes(f"{publish_dir}/{run_report.INDEX}").decode()
    return report, page, set(tf.io.gfile.listdir(publish_dir))


@pytest.mark.parametrize("filesystem", ["local", "object store"])
def test_each_published_report_names_only_files_that_are_there(filesystem, tmp_path):
    root = str(tmp_path) if filesystem == "local" else ram_root("report")
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


def _versions_and_sources(base: str) -> dict:
    return {v: layout.provenance(f"{base}/{v}").get("source") for v in layout.versions(base)}


def test_a_push_that_sees_a_version_complete_finds_its_marker_whole(tmp_path, monkeypatch):
    # A re-run of the same model while its version is being completed on an object store: the
    # moment saved_model.pb is there, the version's provenance must be too, or the re-run
    # pushes a duplicate version (or fails on a half-written marker).
    base = ram_root("marker") + "/deeplab"
    model = fake_saved_model(tmp_path)
    real_copy = tf.io.gfile.copy
    rerun = []

    def copy(src, dst, overwrite=False):
        real_copy(src, dst, overwrite)
        if dst == f"{base}/1/saved_model.pb" and not rerun:
            rerun.append(layout.push(model, base, source="model/a"))

    monkeypatch.setattr(tf.io.gfile, "copy", copy)
    assert layout.push(model, base, source="model/a") == (1, True)
    assert rerun == [(1, False)]
    assert _versions_and_sources(base) == {1: "model/a"}


@pytest.mark.parametrize("window", ["after seeing the number free", "after writing their claims"])
def test_two_pushers_in_the_claim_window_never_share_a_version(tmp_path, monkeypatch, window):
    # Two pushers are held together (barriers) while claiming version 1: both have seen that it
    # does not exist; and, in the second case, both have also written their claim file into it
    # before either lists it, and listed it before either acts on what it saw. Whatever the
    # order after, they must not both take version 1. (Without the listing of the claims, both
    # take it every time.)
    base = ram_root("claims") + "/deeplab"
    first = f"{base}/1"
    models = {f"model/{name}": fake_saved_model(tmp_path, name) for name in ("a", "b")}
    points = ["exists"] + (
        ["claims written", "claims listed"] if window == "after writing their claims" else []
    )
    barriers = {point: threading.Barrier(len(models), timeout=60) for point in points}
    held = {point: set() for point in points}

    def hold_once(point):
        me = threading.current_thread().name
        if point in barriers and me in models and me not in held[point]:
            held[point].add(me)
            barriers[point].wait()

    real_exists, real_listdir = tf.io.gfile.exists, tf.io.gfile.listdir

    def exists(path):
        found = real_exists(path)
        if path == first:
            hold_once("exists")
        return found

    def listdir(path):
        if path == first:
            hold_once("claims written")
        names = real_listdir(path)
        if path == first:
            hold_once("claims listed")
        return names

    monkeypatch.setattr(tf.io.gfile, "exists", exists)
    monkeypatch.setattr(tf.io.gfile, "listdir", listdir)
    results, errors = {}, []

    def push(source):
        try:
            results[source] = layout.push(models[source], base, source)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=push, args=(source,), name=source) for source in models]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert held == {point: set(models) for point in points}, "both pushers went through the window"
    versions = sorted(version for version, new in results.values() if new)
    assert len(versions) == 2 and versions[0] != versions[1], results
    assert _versions_and_sources(base) == {results[s][0]: s for s in models}
    for source, (version, _) in results.items():
        assert files_under(f"{base}/{version}") == {
            "saved_model.pb",
            "variables/variables.index",
            layout.PROVENANCE_FILE,
        }
        assert read_bytes(f"{base}/{version}/saved_model.pb") == f"graph of {source[-1]}".encode()
    if window == "after writing their claims":
        # Each saw the other's claim: both withdrew theirs and moved on, leaving a gap.
        assert 1 not in versions and files_under(first) == set()


def test_a_push_failing_on_an_object_store_removes_its_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # code that wrote ram:// paths with os would write here
    # The directory it claimed is its own: left there without saved_model.pb it would be the
    # highest number, which TF Serving's `latest` policy tries, alone, after a restart.
    base = ram_root("failed") + "/deeplab"
    model = fake_saved_model(tmp_path)

    def fail(version_dir):
        assert tf.io.gfile.exists(f"{version_dir}/variables/variables.index")
        raise RuntimeError("the warm-up requests cannot be written")

    with pytest.raises(RuntimeError, match="warm-up requests"):
        layout.push(model, base, source="model/a", add_files=fail)
    assert tf.io.gfile.listdir(base) == [] and layout.version_numbers(base) == []
    assert layout.push(model, base, source="model/a") == (1, True)
    assert _versions_and_sources(base) == {1: "model/a"}
    assert not os.path.exists(tmp_path / "ram:")


def _claims(version_dir: str) -> list:
    return [name for name in tf.io.gfile.listdir(version_dir) if name.startswith(layout.CLAIM_PREFIX)]


# How late a pusher's clock runs to write heartbeats already older than the stale age: a push
# killed, or stopped, that long ago.
STALE_BY = layout.STALE_SECONDS + 60


def _stale_clock() -> float:
    return time.time() - STALE_BY


def test_a_push_whose_heartbeat_went_stale_loses_its_number_and_writes_nothing_more(tmp_path):
    # A push stopped mid-way for longer than the stale age (a suspended machine; its clock set
    # back plays the wait), above a complete version. Were it left, it would be the highest
    # number, which TF Serving's `latest` policy tries alone after a restart.
    base = ram_root("stale") + "/deeplab"
    model = fake_saved_model(tmp_path)
    assert layout.push(model, base, source="model/a") == (1, True)
    holding, go, errors = threading.Event(), threading.Event(), []

    def hold(version_dir):
        holding.set()
        go.wait(60)

    def push_stale():
        try:
            layout.push(fake_saved_model(tmp_path, "b"), base, "model/b", add_files=hold, clock=_stale_clock)
        except Exception as e:  # noqa: BLE001 - checked below
            errors.append(e)

    stale = threading.Thread(target=push_stale)
    stale.start()
    try:
        assert holding.wait(60)
        assert layout.version_numbers(base) == [1, 2] and layout.versions(base) == [1]
        assert len(_claims(f"{base}/2")) == 1
        # A re-run of model/a adds no version, but removes the abandoned one above it.
        assert layout.push(model, base, source="model/a") == (1, False)
        assert layout.version_numbers(base) == [1]
    finally:
        go.set()
        stale.join(60)
    # The stale push, resumed, finds its claim gone: it fails, writes nothing more and removes
    # nothing (a directory of that number would be another push's).
    assert [type(e) for e in errors] == [layout.ClaimLostError], errors
    assert files_under(base) == {
        "1/saved_model.pb",
        "1/variables/variables.index",
        f"1/{layout.PROVENANCE_FILE}",
    }


def test_a_push_renews_its_heartbeat_and_never_brings_back_a_removed_claim(tmp_path, monkeypatch):
    # The heartbeat thread takes its times from the push's clock: here a count, one a call,
    # each beat held in the clock until the test lets it go on, so it is known when a beat has
    # been written.
    monkeypatch.setattr(layout, "HEARTBEAT_SECONDS", 0.01)
    base = ram_root("heartbeat") + "/deeplab"
    test_thread, ticks = threading.current_thread(), iter(range(100))
    beat_waiting, beat_may_go = threading.Semaphore(0), threading.Semaphore(0)

    def clock():
        if threading.current_thread() is not test_thread:
            beat_waiting.release()
            beat_may_go.acquire(timeout=30)
        return float(next(ticks))

    def heartbeat(claim):
        return json.loads(read_bytes(claim))[layout.HEARTBEAT]

    def hold(version_dir):
        (name,) = _claims(version_dir)
        claim = f"{version_dir}/{name}"
        claimed = heartbeat(claim)
        assert beat_waiting.acquire(timeout=30)
        beat_may_go.release()
        assert beat_waiting.acquire(timeout=30)  # the next beat: the first is written
        assert heartbeat(claim) == claimed + 1
        tf.io.gfile.remove(claim)  # as a push that judged it abandoned would
        beat_may_go.release()
        assert not beat_waiting.acquire(timeout=0.2), "a beat after the claim was gone"
        assert _claims(version_dir) == [], "the claim was brought back"

    with pytest.raises(layout.ClaimLostError):
        layout.push(fake_saved_model(tmp_path), base, "model/a", add_files=hold, clock=clock)
    # Nothing more written there, nothing removed: the directory is no longer the push's.
    assert files_under(base) == {"1/variables/variables.index"}


def test_concurrent_pushes_to_an_object_store_never_share_a_version(tmp_path):
    base = ram_root("concurrent") + "/deeplab"
    models = {f"model/{i}": fake_saved_model(tmp_path, f"m{i}") for i in range(8)}
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
        assert read_bytes(f"{version_dir}/saved_model.pb") == b"graph of m" + source[-1].encode()
        assert layout.provenance(version_dir) == {"source": source}
        assert files_under(version_dir) == {
            "saved_model.pb",
            "variables/variables.index",
            layout.PROVENANCE_FILE,
        }


@pytest.fixture(scope="module")
def eval_images(learning_data):
    return _eval_images(learning_data[0], 4)


@pytest.mark.slow
def test_the_server_loads_an_object_store_version_only_once_complete(
    untrained_model, learning_data, eval_images, tmp_path
):
    examples_uri, _ = learning_data
    root = ram_root("serving")
    base = f"{root}/{MODEL}"
    examples = f"{root}/examples"
    storage.copy_tree(examples_uri, examples)
    model = f"{root}/model"
    storage.copy_tree(untrained_model, model)

    def add_warmup(version_dir):
        warmup.write(version_dir, warmup.prediction_logs(warmup.eval_images(examples, 2), MODEL))

    # 1. A push that fails partway (a file of the model cannot be read) removes what it wrote.
    # A pusher killed partway cannot: it leaves an integer directory with some of the files but
    # no saved_model.pb (made here as it would), which is not a version.
    broken = shutil.copytree(untrained_model, tmp_path / "broken")
    os.symlink(tmp_path / "nowhere", broken / "variables" / "zz-unreadable")
    with pytest.raises((tf.errors.OpError, OSError)):
        layout.push(str(broken), base, source="model/broken", add_files=add_warmup)
    assert layout.version_numbers(base) == []
    storage.copy_tree(untrained_model, f"{base}/1", exclude=[artifacts.SAVED_MODEL_FILE])
    assert layout.version_numbers(base) == [1] and layout.versions(base) == []
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
    assert files_under(f"{base}/2") == files_under(untrained_model) | {
        warmup.WARMUP_FILE,
        layout.PROVENANCE_FILE,
    }
    logs = warmup.read(f"{base}/2")
    assert [tf.make_ndarray(log.predict_log.request.inputs[signatures.IMAGES])[0] for log in logs] == (
        eval_images[:2]
    )

    # 3. `deeplab-tfx serve` over the object store: version 2, warmed up, answering Predict.
    server = Server(MODEL, base, port=0, poll_seconds=0.1)
    server.start()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.signature_name = MODEL, SERVING_DEFAULT
        request.inputs[signatures.IMAGES].CopyFrom(tf.make_tensor_proto(eval_images[:1], dtype=tf.string))
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


# ServingPusher's layout on local disk


def test_versions_increase_and_old_ones_stay(tmp_path):
    base = str(tmp_path / "serving" / "deeplab")
    a, b = fake_saved_model(tmp_path, "a"), fake_saved_model(tmp_path, "b")
    assert layout.push(a, base, source="model/1") == (1, True)
    assert layout.push(b, base, source="model/2") == (2, True)
    # The same model artifact again (a re-run re-blessed it): no duplicate version.
    assert layout.push(b, base, source="model/2") == (2, False)
    assert layout.versions(base) == [1, 2]
    assert open(os.path.join(base, "1", "saved_model.pb"), "rb").read() == b"graph of a"
    assert open(os.path.join(base, "2", "saved_model.pb"), "rb").read() == b"graph of b"
    # A version made by someone else is never written to: the next push goes above it, even
    # when that directory is not a version a server would load (no saved_model.pb yet).
    os.makedirs(os.path.join(base, "7"))
    assert layout.push(a, base, source="model/3") == (8, True)
    assert os.listdir(os.path.join(base, "7")) == []
    assert layout.versions(base) == [1, 2, 8]


def test_a_crash_mid_push_leaves_no_version_a_server_would_load(tmp_path):
    base = str(tmp_path / "deeplab")
    model = fake_saved_model(tmp_path)

    def fail(staging_dir):
        assert os.path.exists(os.path.join(staging_dir, "variables", "variables.index")), "after the copy"
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        layout.push(model, base, source="model/1", add_files=fail)
    assert os.listdir(base) == []
    # A staging directory left by a process that died (no cleanup ran) is not a version, and
    # the next push removes it.
    os.makedirs(os.path.join(base, layout.STAGING_PREFIX + "dead", "variables"))
    assert layout.versions(base) == []
    assert layout.push(model, base, source="model/1") == (1, True)
    assert sorted(os.listdir(base)) == ["1"]


# Pushers in other processes, killed mid-push


_PUSHER = """
import os, sys, threading, time
from serving import layout

model, source, age, *targets = sys.argv[1:]  # then base, ready, base, ready, ...
clock = lambda: time.time() - float(age)

def push(base, ready):
    def hold(version_dir):
        with open(ready + ".partial", "w") as f:
            f.write(version_dir)
        os.rename(ready + ".partial", ready)
        while not os.path.exists(ready + ".go"):
            time.sleep(0.05)

    print(layout.push(model, base, source, add_files=hold, clock=clock), flush=True)

pushes = [threading.Thread(target=push, args=targets[i : i + 2]) for i in range(0, len(targets), 2)]
for thread in pushes:
    thread.start()
for thread in pushes:
    thread.join()
"""


def _start_pusher(model: str, source: str, targets: list, age: float = 0.0) -> subprocess.Popen:
    """Another process pushing ``model``, a thread to each ``(base, ready)`` of ``targets``: each
    writes the directory it writes (staging on local disk) to its ``ready`` and waits, mid-push,
    until ``ready + ".go"`` appears. Its clock runs ``age`` seconds late: its heartbeats read as
    written that long ago."""
    args = [path for target in targets for path in target]
    return subprocess.Popen(
        [sys.executable, "-c", _PUSHER, model, source, str(age), *args], cwd=paths.PROJECT_ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_until_pushing(proc, ready: str) -> str:
    deadline = time.time() + 120
    while not os.path.exists(ready):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    return open(ready).read()


@pytest.mark.slow
def test_a_push_removes_what_killed_pushers_left_never_a_push_in_progress(tmp_path):
    # One pusher process SIGKILLed (preempted) mid-push, on local disk and on an object store at
    # once, its clock late by more than the stale age (killed that long ago), beside pushes in
    # progress there. On the object store it leaves an integer directory without saved_model.pb:
    # the highest, which TF Serving restarted would try alone, serving nothing of the model.
    local, store = str(tmp_path / MODEL), f"file://{tmp_path}/store/{MODEL}"
    models = {name: fake_saved_model(tmp_path, name) for name in ("live", "dead", "mine")}
    ready = {name: str(tmp_path / f"{name}.ready") for name in ("live", "dead local", "dead store")}
    # On the object store, a push in progress in this process: its heartbeat written just now.
    holding, go, store_live = threading.Event(), threading.Event(), []

    def hold(version_dir):
        holding.set()
        go.wait(120)

    store_push = threading.Thread(
        target=lambda: store_live.append(layout.push(models["live"], store, "model/live", hold))
    )
    store_push.start()
    assert holding.wait(60)
    live = _start_pusher(models["live"], "model/live", [(local, ready["live"])])
    dead = _start_pusher(
        models["dead"],
        "model/dead",
        [(local, ready["dead local"]), (store, ready["dead store"])],
        age=STALE_BY,
    )
    try:
        live_staging = _wait_until_pushing(live, ready["live"])
        dead_staging = _wait_until_pushing(dead, ready["dead local"])
        dead_version = _wait_until_pushing(dead, ready["dead store"])
        dead.send_signal(signal.SIGKILL)  # no cleanup can run
        dead.communicate(timeout=60)
        assert os.path.isdir(dead_staging) and os.path.isdir(live_staging)
        assert dead_version == f"{store}/2"
        assert layout.version_numbers(store) == [1, 2] and layout.versions(store) == []
        claim = _claims(dead_version)
        assert len(claim) == 1 and files_under(dead_version) == {"variables/variables.index", claim[0]}

        assert layout.push(models["mine"], local, source="model/mine") == (1, True)
        assert os.path.isdir(live_staging), "removed the staging directory of a push in progress"
        assert not os.path.exists(dead_staging), "kept the staging directory of a killed push"
        assert layout.push(models["mine"], store, source="model/mine") == (3, True)
        assert not tf.io.gfile.exists(dead_version), "kept the version of a killed push"
        assert layout.version_numbers(store) == [1, 3], "removed a push in progress"

        open(ready["live"] + ".go", "w").close()
        out, err = live.communicate(timeout=120)
        assert live.returncode == 0, err[-3000:]
        assert out.strip() == "(2, True)"
    finally:
        go.set()
        store_push.join(60)
        for proc in (live, dead):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert layout.versions(local) == [1, 2]
    sources = [layout.provenance(os.path.join(local, v))["source"] for v in ("1", "2")]
    assert sources == ["model/mine", "model/live"]
    # Nothing else is left: no staging directory, no lock file.
    assert sorted(os.listdir(local)) == ["1", "2"]
    # On the object store the push after the kill is the highest number and the highest version.
    assert store_live == [(1, True)]
    assert _versions_and_sources(store) == {1: "model/live", 3: "model/mine"}
    assert layout.version_numbers(store) == [1, 3]
    for version in (1, 3):  # whole, and no claim left behind
        assert files_under(f"{store}/{version}") == {
            "saved_model.pb",
            "variables/variables.index",
            layout.PROVENANCE_FILE,
        }
