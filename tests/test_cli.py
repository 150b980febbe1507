"""``deeplab-tfx make-dataset`` and ``deeplab-tfx ingest`` as a user runs them."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import read_list, sbd_path, voc_path

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
