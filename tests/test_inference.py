"""Batch inference (``deeplab-tfx infer``, ``inference/``): a Beam job over a folder of images or the
records of an Examples artifact, with the model's own ``serving_default`` as the reference.

The model is the untrained export the serving tests load (its masks vary from pixel to pixel,
which is what a pixel-exact comparison needs); the pipeline's node, with a trained and pushed
model and its lineage, is in tests/test_pipeline_local.py.
"""

import glob
import os
import re
import shutil

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from ml_metadata.proto import metadata_store_pb2
from PIL import Image, PngImagePlugin
from tfx.types import standard_artifacts

from components.segmentation_example_gen import spans
from components.segmentation_inferrer.component import (
    SegmentationInferrer,
    SegmentationMasks,
    folder_to_infer,
)
from core import artifacts, features
from core import config as config_lib
from core.signatures import crop_masks
from inference import inputs, job
from inference import model as model_lib
from pipeline import progress
from serving import layout
from tests.conftest import feature, read_examples
from tests.helpers import images, unlabelled


def _pushed(model_dir: str, base: str) -> str:
    assert layout.push(model_dir, base, source="model/1") == (1, True)
    return base


def _infer(main, model: str, patterns: list, out: str, *more) -> int:
    args = ["infer", "--model", model, "--output", out]
    return main([*args, *(arg for pattern in patterns for arg in ("--input", pattern)), *more])


def test_a_folder_is_segmented_and_a_rerun_keeps_every_mask(
    untrained_model, dataset_dir, tmp_path, cli_main, capsys
):
    """Mixed JPEG, PNG and BMP images of different sizes, one damaged, one not an image, two of
    one name, matched by two patterns, the output inside the folder: all in one batch, every mask
    equals ``serving_default``'s for that image alone; the rest are in the dead letter with their
    kind. A second run, in a Beam worker process (the DoFns unpickled there) and on batches of one
    image at most, writes nothing; masks of another model, of an input whose bytes changed, or
    missing their overlay, are redrawn."""
    jpegs = sorted(glob.glob(os.path.join(dataset_dir, "VOCdevkit", "VOC2012", "JPEGImages", "*.jpg")))[:3]
    folder = str(tmp_path / "images")
    made = unlabelled.make_folder(folder, jpegs)
    # One name, two images (masks/twin.png would be both): both are refused.
    png = next(path for path in made["good"] if path.endswith(".png"))
    twins = [os.path.join(folder, name) for name in ("twin.jpg", "twin.png")]
    for source, twin in zip((jpegs[1], png), twins, strict=True):
        shutil.copy(source, twin)
    base = _pushed(untrained_model, str(tmp_path / "serving" / "deeplab"))
    out = os.path.join(folder, "inferred")  # not read as input by the next runs
    patterns = [folder, os.path.join(folder, "*.jpg")]  # the JPEGs twice: each is read once
    accept = ["--overlay", "--max-rejected-fraction", "0.5"]
    in_memory = ["--direct-running-mode", "in_memory"]
    assert _infer(cli_main, base, patterns, out, "--batch-pixels", "100000000", *accept, *in_memory) == 0
    printed = capsys.readouterr()
    assert f"deeplab-tfx infer: model {base}/1 (version 1, 'voc', 21 classes)" in printed.out
    rows = unlabelled.check_outputs(out, os.path.join(base, "1"), made["good"], overlay=True)
    fingerprint = tf.saved_model.experimental.read_fingerprint(untrained_model).singleprint()
    assert {(row["model_version"], row["model_fingerprint"]) for row in rows} == {(1, fingerprint)}
    assert unlabelled.rejected(out) == {
        made["damaged"]: inputs.CORRUPT_IMAGE,
        made["not_image"]: inputs.NOT_AN_IMAGE,
        **dict.fromkeys(twins, inputs.DUPLICATE_NAME),
    }
    # Outputs sit where the images sit, relative to the folder.
    nested = made["good"].index(os.path.join(folder, "sub", "photo_0.jpg"))
    assert rows[nested]["mask"] == "masks/sub/photo_0.png"
    first = unlabelled.summary(out)
    n = len(made["good"])
    assert (first["masks"], first["written"], first["kept"], first["rejected"]) == (n, n, 0, 4)
    assert first["rejected_by_kind"] == {"corrupt_image": 1, "duplicate_name": 2, "not_an_image": 1}
    assert 1 <= first["batches"] <= n

    # Again, in a Beam worker process (the config's mode), batches of one image at most.
    before = unlabelled.snapshot(out)
    workers = ["--set", "beam.direct_num_workers=1", "--direct-running-mode", "multi_processing"]
    assert _infer(cli_main, base, patterns, out, "--batch-pixels", "1", *accept, *workers) == 0
    assert unlabelled.snapshot(out) == before
    assert unlabelled.check_outputs(out, os.path.join(base, "1"), made["good"], overlay=True) == rows
    again = unlabelled.summary(out)
    assert (again["masks"], again["written"], again["kept"], again["rejected"]) == (n, 0, n, 4)

    # A mask drawn by another model, an image whose file was replaced, an overlay lost: those three
    # inputs are redone, no other. At the default inference.max_rejected_fraction (0.1) the four
    # rejected of nine fail the command, after it wrote everything.
    redone = [os.path.join(out, rows[i][kind]) for i in (0, 1, 2) for kind in ("mask", "overlay")]
    with Image.open(redone[0]) as mask:
        mask.save(redone[0], pnginfo=_text({job.MODEL_TAG: "another model", job.INPUT_TAG: "?"}))
    replaced = made["good"][1]
    with Image.open(replaced) as image:
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(replaced, format=image.format)
    os.remove(redone[5])
    before = unlabelled.snapshot(out)
    assert _infer(cli_main, base, patterns, out, "--batch-pixels", "1", "--overlay", *in_memory) == 1
    assert "4 of 9 inputs rejected" in capsys.readouterr().err
    after = unlabelled.snapshot(out)
    assert sorted(path for path in after if before.get(path) != after[path]) == sorted(redone)
    assert unlabelled.check_outputs(out, os.path.join(base, "1"), made["good"], overlay=True)
    third = unlabelled.summary(out)
    # 4 model calls: the 3 redrawn, and the damaged image's (answered, its row refused).
    assert (third["written"], third["kept"], third["batches"]) == (3, n - 3, 4)


def _text(chunks: dict) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    return info


def _tfrecord(path: str, records: list) -> None:
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)


def test_the_records_of_an_examples_artifact_get_masks_named_by_their_ids(
    untrained_model, learning_data, tmp_path
):
    """The eval split's GZIP shards as TFX wrote them, plus a file of records that are not of the
    data contract and a shard cut short: masks named ``image/filename``, the rest dead-lettered."""
    examples_uri, _ = learning_data
    split = artifacts.split_dir(examples_uri, features.EVAL_SPLIT)
    extra = tmp_path / "extra"
    extra.mkdir()
    no_image = tf.train.Example()
    no_image.features.feature[features.FILENAME_KEY].bytes_list.value.append(b"lost")
    escaping = tf.train.Example()
    escaping.features.feature[features.IMAGE_KEY].bytes_list.value.append(b"\xff\xd8\xff")
    escaping.features.feature[features.FILENAME_KEY].bytes_list.value.append(b"../outside")
    records = [b"not a proto \xff", no_image.SerializeToString(), escaping.SerializeToString()]
    _tfrecord(str(extra / "odd.tfrecord"), records)
    train = artifacts.split_dir(examples_uri, features.TRAIN_SPLIT)
    shard = sorted(glob.glob(os.path.join(train, "*.gz")))[0]
    with open(shard, "rb") as f:
        data = f.read()
    (extra / "cut.gz").write_bytes(data[: len(data) // 2])
    out = str(tmp_path / "out")
    ref = model_lib.resolve(untrained_model)
    assert ref.version is None and ref.path == untrained_model
    patterns = [os.path.join(split, "*"), str(extra)]
    summary = job.run(beam.Pipeline, patterns, out, ref, max_rejected_fraction=0.2, max_batch_images=3)
    examples = read_examples(examples_uri, features.EVAL_SPLIT)
    signature = tf.saved_model.load(untrained_model).signatures["serving_default"]
    manifest = job.read_jsonl(os.path.join(out, job.MANIFEST_FILE))
    rows = {row["input"].rsplit("#", 1)[1]: row for row in manifest if row["input"].startswith(split)}
    ids = [feature(e, features.FILENAME_KEY)[0].decode() for e in examples]
    assert sorted(rows) == sorted(ids)
    for example, image_id in zip(examples, ids, strict=True):
        image = feature(example, features.IMAGE_KEY)[0]
        [expected] = crop_masks(signature(images=tf.constant([image])))
        assert rows[image_id]["mask"] == f"masks/{image_id}.png"
        with Image.open(os.path.join(out, rows[image_id]["mask"])) as png:
            assert (png.size[1], png.size[0]) == expected.shape
            np.testing.assert_array_equal(np.asarray(png), expected, err_msg=image_id)
    dead = job.read_jsonl(os.path.join(out, job.REJECTED_FILE))
    kinds = sorted((row["input"], row["kind"]) for row in dead)
    odd, cut = str(extra / "odd.tfrecord"), str(extra / "cut.gz")
    bad = inputs.BAD_RECORD
    assert kinds == [
        (cut, inputs.UNREADABLE_RECORDS),
        (f"{odd}#1", bad),
        (f"{odd}#2", bad),
        (f"{odd}#3", bad),
    ]
    reasons = {row["input"]: row["reason"] for row in dead}
    assert reasons[f"{odd}#2"] == "a record needs one image/encoded and one image/filename"
    assert reasons[f"{odd}#3"] == "image/filename '../outside' cannot name a file under the output"
    assert not os.path.exists(tmp_path / "outside.png")
    assert re.fullmatch(
        r"truncated record at \d+' failed with EOF reached \(after \d+ records\)", reasons[cut]
    )
    # The records of the cut shard before the cut got their masks.
    read = int(re.search(r"\(after (\d+) records\)$", reasons[cut]).group(1))
    train_ids = {feature(e, features.FILENAME_KEY)[0].decode() for e in read_examples(examples_uri, "train")}
    before_cut = [row["input"] for row in manifest if row["input"].startswith(cut)]
    assert read > 0 and len(before_cut) == read
    assert {source.rsplit("#", 1)[1] for source in before_cut} <= train_ids
    masks = len(ids) + read
    assert (summary["masks"], summary["written"], summary["rejected"]) == (masks, masks, 4)
    # Batched by the image cap (the pixel budget would hold them all): at most 3 an answer.
    assert summary["written"] / 3 <= summary["batches"] < summary["written"]


def test_the_model_is_found_as_users_name_it_and_known_by_its_fingerprint(
    untrained_model, tmp_path, cli_main, capsys
):
    """A base path (its newest complete version), a version directory, a Trainer's Model artifact:
    the same model, the same fingerprint; a path with none of them fails naming what it looked for."""
    base = str(tmp_path / "deeplab")
    for version in (1, 2):
        shutil.copytree(untrained_model, os.path.join(base, str(version)))
    os.makedirs(os.path.join(base, "3", "variables"))  # a push in progress: not a version yet
    trainer_model = tmp_path / "Trainer" / "model" / "7"
    shutil.copytree(untrained_model, trainer_model / artifacts.SERVING_MODEL_DIR)
    expected = tf.saved_model.experimental.read_fingerprint(untrained_model).singleprint()
    found = [model_lib.resolve(name) for name in (base, os.path.join(base, "1"), str(trainer_model))]
    assert [(ref.path, ref.version) for ref in found] == [
        (os.path.join(base, "2"), 2),
        (os.path.join(base, "1"), 1),
        (str(trainer_model / artifacts.SERVING_MODEL_DIR), None),
    ]
    assert {ref.fingerprint for ref in found} == {expected}
    assert {ref.dataset.name for ref in found} == {"voc"}
    # Without fingerprint.pb (an export older than TF 2.12): a digest of its graph and variables.
    old = shutil.copytree(untrained_model, tmp_path / "old")
    os.remove(old / "fingerprint.pb")
    assert model_lib.fingerprint(str(old)).startswith("sha256:")
    assert _infer(cli_main, str(tmp_path / "nowhere"), [str(tmp_path)], str(tmp_path / "out")) == 2
    assert f"--model {tmp_path / 'nowhere'}: not a SavedModel" in capsys.readouterr().err
    typo = str(tmp_path / "photos" / "*.jgp")
    assert _infer(cli_main, base, [typo], str(tmp_path / "out")) == 2
    assert f"deeplab-tfx infer: --input {typo}: matches no file" in capsys.readouterr().err
    # An output that holds an input folder would read its own masks back, or leave every input out.
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"\xff\xd8\xff")
    assert _infer(cli_main, base, [str(tmp_path / "photos")], str(tmp_path)) == 2
    holds = f"--output {tmp_path} holds the folder of --input {tmp_path / 'photos'}: give an output"
    assert holds in capsys.readouterr().err
    with pytest.raises(config_lib.ConfigError, match="batch_pixels=0 cannot work"):
        config_lib.InferenceConfig(batch_pixels=0)


def test_the_node_reads_this_runs_span_of_the_unlabelled_folder_and_fails_without_it(tmp_path):
    for span in (1, 2):
        (tmp_path / f"span-{span}").mkdir()
    pattern = str(tmp_path / "span-{SPAN}")
    assert folder_to_infer(pattern, 1) == str(tmp_path / "span-1")
    assert folder_to_infer(pattern, 2) == str(tmp_path / "span-2")
    missing = f"no unlabelled images for span 3: span 3 is not under [{pattern!r}]: found spans [1, 2]"
    with pytest.raises(spans.SpanError, match=re.escape(missing)):
        folder_to_infer(pattern, 3)
    # A folder without span specs is read whatever span the run ingested.
    assert folder_to_infer(str(tmp_path / "span-1"), 7) == str(tmp_path / "span-1")


def test_the_node_records_why_a_model_that_was_not_pushed_drew_nothing(tmp_path):
    """The component's own executor, as TFX runs it, with the pusher's output of a model it did
    not bless; the run's terminal shows the reason under the artifact."""
    model, pushed = standard_artifacts.Model(), standard_artifacts.PushedModel()
    examples, masks = standard_artifacts.Examples(), SegmentationMasks()
    for artifact, name in ((model, "model"), (pushed, "pushed"), (examples, "examples"), (masks, "masks")):
        artifact.uri = str(tmp_path / name)
    pushed.set_int_custom_property(artifacts.PUSHED, 0)
    pushed.set_string_custom_property(artifacts.NOT_PUSHED_REASON, "mean IoU 0.04 is below 0.5")
    examples.span = 3
    executor = SegmentationInferrer.EXECUTOR_SPEC.executor_class()
    parameters = {
        "images": str(tmp_path / "span-{SPAN}"),
        "overlay": 0,
        "batch_pixels": 1,
        "max_rejected_fraction": 0.1,
    }
    executor.Do(
        {"model": [model], "pushed_model": [pushed], "examples": [examples]}, {"masks": [masks]}, parameters
    )
    why = f"model {model.uri} was not pushed (mean IoU 0.04 is below 0.5)"
    assert masks.get_int_custom_property(artifacts.NUM_MASKS) == 0
    assert masks.get_string_custom_property(artifacts.NOT_INFERRED_REASON) == why
    assert not os.path.exists(masks.uri)
    props = {artifacts.NOT_INFERRED_REASON: metadata_store_pb2.Value(string_value=why)}
    assert progress.not_inferred_lines(props) == [f"not inferred: {why}"]
    assert progress.not_inferred_lines({}) == []


def test_inputs_are_named_under_the_folder_their_patterns_share(tmp_path):
    """Two cameras' folders, one file name each: masks cam1/0001 and cam2/0001, not twice 0001."""
    for camera in ("cam1", "cam2"):
        (tmp_path / camera).mkdir()
        (tmp_path / camera / "0001.jpg").write_bytes(b"\xff\xd8\xff")
    listings = inputs.common_base([inputs.listing(str(tmp_path / cam / "*.jpg")) for cam in ("cam1", "cam2")])
    names = sorted(
        inputs.image_input(path, base).name for glob, base in listings for path in inputs.matched_files(glob)
    )
    assert names == ["cam1/0001", "cam2/0001"]
    # One pattern: its own folder; a directory: read whole, under itself.
    [(glob, base)] = inputs.common_base([inputs.listing(str(tmp_path / "cam1"))])
    assert (glob, base) == (str(tmp_path / "cam1" / "**"), str(tmp_path / "cam1"))


def test_what_the_model_refuses_is_told_apart_from_what_it_cannot_read(untrained_model, tmp_path):
    """The job's own rules, one input at a time: a header declaring more pixels than PIL opens is
    too large; an image PIL decodes whole that the model refused is the model's fault (fails)."""
    ref = model_lib.resolve(untrained_model)
    outputs = job._Outputs(str(tmp_path / "out"), ref, overlay=False)
    huge = images.declaring(images.encode(np.zeros((8, 8, 3), np.uint8), "PNG"), 20_000, 20_000)
    [verdict] = job._Prepare(outputs).process(inputs.Input("huge", "huge.png", "huge.png", huge))
    assert verdict.tag == "rejected" and verdict.value["kind"] == inputs.TOO_LARGE
    valid = images.encode(np.zeros((8, 8, 3), np.uint8), "PNG")
    sized = job._Sized(inputs.Input("ok", "ok.png", "ok.png", valid), valid, inputs.checksum(valid), 64)
    with pytest.raises(RuntimeError, match="the model refused ok.png, an image that decodes: shape mismatch"):
        job._refusal(sized, "shape mismatch", ValueError())
    cut = valid[: len(valid) // 2]
    kind, reason = job._refusal(job._Sized(sized.input, cut, "", 64), "Invalid PNG data", ValueError())
    assert kind == inputs.CORRUPT_IMAGE and reason.startswith("Invalid PNG data (PIL: ")


def test_a_batch_with_a_damaged_image_dead_letters_its_row_and_draws_the_others(untrained_model, tmp_path):
    """One call for the whole batch: the signature refuses the image cut short on its own row
    (``error``), which goes to the dead letter with that reason and PIL's; the others' masks are
    drawn from the same answer, each what ``serving_default`` draws for it alone."""
    ref = model_lib.resolve(untrained_model)
    outputs = job._Outputs(str(tmp_path / "out"), ref, overlay=False)
    predict = job._Predict(outputs)
    predict.setup()
    rng = np.random.default_rng(3)
    good = [
        images.encode(rng.integers(0, 256, size, dtype=np.uint8), "JPEG")
        for size in ((30, 40, 3), (50, 20, 3))
    ]
    cut = good[0][: len(good[0]) // 2]
    batch = [
        job._Sized(inputs.Input(name, f"{name}.jpg", f"{name}.jpg"), data, inputs.checksum(data), 1200)
        for name, data in (("first", good[0]), ("cut", cut), ("second", good[1]))
    ]
    answers = list(predict.process(batch))
    [dead] = [answer.value for answer in answers if isinstance(answer, beam.pvalue.TaggedOutput)]
    assert (dead["input"], dead["kind"]) == ("cut.jpg", inputs.CORRUPT_IMAGE)
    assert dead["reason"].startswith(
        f"({len(cut)} bytes) does not decode as JPEG: its data is damaged or cut short (PIL: "
    )
    rows = [answer for answer in answers if isinstance(answer, dict)]
    assert [row["input"] for row in rows] == ["first.jpg", "second.jpg"]
    for row, data in zip(rows, good, strict=True):
        [expected] = crop_masks(predict._model.signature(images=tf.constant([data])))
        with Image.open(os.path.join(outputs.output, row["mask"])) as png:
            np.testing.assert_array_equal(np.asarray(png), expected)
