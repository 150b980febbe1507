"""``deeplab-tfx make-dataset`` and ``deeplab-tfx ingest`` as a user runs them."""

import json
import logging
import os
import re
import subprocess
import sys

import pytest

from core import artifacts, dataset_spec, features
from datasets import synthetic_voc
from pipeline import logs
from tests.conftest import feature, read_examples, read_list, sbd_path, voc_path
from tests.helpers.ram_store import ram_root, read_bytes

pytestmark = pytest.mark.slow
CLI = os.path.join(os.path.dirname(sys.executable), "deeplab-tfx")


def _run(*args):
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=600)


def test_make_dataset_then_ingest(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    made = _run("make-dataset", "--out", str(data), "--num-images", "24", "--seed", "11", "--max-side", "80")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["images"] == 24

    result = _run(
        "ingest",
        "--voc-root",
        str(data),
        "--sbd-root",
        str(data),
        "--output",
        str(out),
        "--direct-running-mode",
        "in_memory",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Quiet: stdout is the summary, stderr names the full log, which holds the detail (Beam's
    # and TF's lines, warnings).
    assert len(result.stdout.splitlines()) == 1 and json.loads(result.stdout)["splits"]
    log = re.fullmatch(r"deeplab-tfx ingest: full log in (\S+)\n", result.stderr).group(1)
    assert os.path.dirname(log) == str(out / "logs")
    detail = open(log).read()
    assert "cpu_feature_guard.cc" in detail and "FutureWarning" in detail and "INFO" in detail
    # On DirectRunner, no setup.py: the workers are this machine's (tests/test_config.py).
    assert "'--runner=DirectRunner'" in detail and "--setup_file" not in detail
    summary = json.load(open(out / "summary.json"))
    seg = voc_path(str(data), "ImageSets", "Segmentation")
    voc_train, voc_val = set(read_list(f"{seg}/train.txt")), set(read_list(f"{seg}/val.txt"))
    sbd = set(read_list(sbd_path(str(data), "train.txt"))) | set(read_list(sbd_path(str(data), "val.txt")))
    assert summary["splits"] == {"train": len((voc_train | sbd) - voc_val), "eval": len(voc_val)}
    assert summary["rejected"] == [] and summary["seconds"] > 0
    assert (out / "examples" / "Split-train").is_dir() and (out / "report.md").exists()


def test_ingest_exit_codes(tmp_path, dataset_copy):
    # An unreadable list: exit 2 and a message naming the file.
    os.remove(voc_path(dataset_copy, "ImageSets", "Segmentation", "val.txt"))
    result = _run("ingest", "--voc-root", dataset_copy, "--output", str(tmp_path / "a"))
    assert result.returncode == 2 and "cannot read split list" in result.stderr and "val.txt" in result.stderr
    # A config typo: exit 2 and the key.
    result = _run(
        "ingest", "--voc-root", dataset_copy, "--output", str(tmp_path / "b"), "--set", "ingest.x=1"
    )
    assert result.returncode == 2 and "unknown config key 'ingest.x'" in result.stderr


def _ingest_args(root, out, *more):
    # In this process.
    local = ["--direct-running-mode", "in_memory"]
    return ["ingest", "--voc-root", root, "--sbd-root", root, "--output", out, *local, *more]


def _splits(root):
    """(train ids, eval ids) by the train_aug rule, from the list files."""
    seg = voc_path(root, "ImageSets", "Segmentation")
    voc_train, voc_val = set(read_list(f"{seg}/train.txt")), set(read_list(f"{seg}/val.txt"))
    sbd = set(read_list(sbd_path(root, "train.txt"))) | set(read_list(sbd_path(root, "val.txt")))
    return sorted((voc_train | sbd) - voc_val), sorted(voc_val)


def test_ingest_twice_into_one_output_keeps_only_the_second_run(dataset_dir, tmp_path, cli_main, capsys):
    # `make demo` twice: the second ingest replaces the first, and the summary counts the disk.
    # Other shard names the second time (3 shards, then 1), as a changed config or runner gives.
    small = str(tmp_path / "small")
    synthetic_voc.make_dataset(small, num_images=12, seed=5, max_side=48, workers=1)
    out = str(tmp_path / "out")
    assert cli_main(_ingest_args(dataset_dir, out, "--num-shards", "3")) == 0
    assert cli_main(_ingest_args(small, out)) == 0, capsys.readouterr().err[-3000:]
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    train, val = _splits(small)
    on_disk = {
        split: sorted(
            feature(e, features.FILENAME_KEY)[0].decode() for e in read_examples(f"{out}/examples", split)
        )
        for split in features.SPLITS
    }
    assert on_disk == {"train": train, "eval": val}
    summary = json.load(open(f"{out}/summary.json"))
    assert summary["splits"] == printed["splits"] == {"train": len(train), "eval": len(val)}
    assert summary["listed"] == len(train) + len(val) and summary["rejected"] == []
    assert sorted(os.listdir(out)) == ["examples", "logs", "rejected.jsonl", "report.md", "summary.json"]
    # Each ingest's full log, named on stderr; the terminal's stdout is the summary alone.
    assert len(os.listdir(f"{out}/logs")) == 2
    assert sorted(os.listdir(f"{out}/examples")) == ["Split-eval", "Split-train", artifacts.SPEC_FILE]
    assert dataset_spec.read(f"{out}/examples") == dataset_spec.VOC_SPEC
    # A third run whose lists are refused leaves the second's output as it was.
    shards = sorted(os.listdir(f"{out}/examples/Split-train"))
    open(voc_path(small, "ImageSets", "Segmentation", "val.txt"), "w").close()
    assert cli_main(_ingest_args(small, out)) == 2
    assert json.load(open(f"{out}/summary.json")) == summary
    assert sorted(os.listdir(f"{out}/examples/Split-train")) == shards


def test_ingest_refuses_an_output_holding_files_it_did_not_write(dataset_dir, tmp_path, cli_main, capsys):
    out = tmp_path / "out"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "todo.txt").write_text("mine")
    (out / "summary.json").write_text("{}")
    assert cli_main(_ingest_args(dataset_dir, str(out))) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "notes" in err, err
    assert sorted(os.listdir(out)) == ["notes", "summary.json"] and (out / "notes" / "todo.txt").exists()


def test_ingest_with_an_empty_val_list_exits_2_naming_it(dataset_copy, tmp_path, cli_main, capsys):
    val = voc_path(dataset_copy, "ImageSets", "Segmentation", "val.txt")
    open(val, "w").close()
    assert cli_main(_ingest_args(dataset_copy, str(tmp_path / "out"))) == 2
    err = capsys.readouterr().err
    assert "split eval is empty" in err and val in err, err
    assert not (tmp_path / "out" / "examples").exists()


def test_capture_keeps_the_terminal_for_what_is_printed_on_purpose(tmp_path, capfd):
    child = "import os, sys; print('child stdout'); os.write(2, b'child fd 2' + bytes([10]))"
    with logs.capture(str(tmp_path / "logs"), "test") as path:
        print("progress for the person")
        print("an error for the person", file=logs.errors())
        print("a warning", file=sys.stderr)
        os.write(2, b"C++ banner on fd 2\n")
        subprocess.run([sys.executable, "-c", child], check=True)
        logging.getLogger("deeplab_test").info("an INFO line")
    os.write(1, b"fd 1 is the terminal again\n")
    out, err = capfd.readouterr()
    assert out == "progress for the person\nfd 1 is the terminal again\n"
    assert err == "an error for the person\n"
    assert os.path.dirname(path) == str(tmp_path / "logs") and os.path.basename(path).startswith("test-")
    detail = open(path).read().splitlines()
    for line in ("progress for the person", "an error for the person", "a warning", "C++ banner on fd 2",
                 "child stdout", "child fd 2"):  # fmt: skip
        assert line in detail, line
    assert any(line.endswith("INFO deeplab_test: an INFO line") for line in detail)
    assert logs.errors() is sys.stderr


def test_a_log_written_locally_is_published_under_a_remote_pipeline_root(tmp_path):
    # A gs:// root cannot take the log while it is written (file descriptors need a local
    # path): it is written locally, then copied under <root>/logs at the end, through gfile.
    root = ram_root("pipeline")
    assert logs.local_log_dir(f"{root}/logs") != f"{root}/logs"
    local = tmp_path / "run.log"
    local.write_text("a long first line\n")
    assert logs.publish(str(local), str(tmp_path)) == str(local), "a local directory: nothing to copy"
    target = logs.publish(str(local), f"{root}/logs")
    assert target == f"{root}/logs/run.log"
    local.write_text("short\n")  # published again, it replaces the copy (ram:// would append)
    assert logs.publish(str(local), f"{root}/logs") == target
    assert read_bytes(target) == b"short\n"
