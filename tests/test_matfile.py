"""SBD's ``.mat`` masks through ``matfile``: scipy's values on every valid file, and a rejection,
never a crash, on every damaged one.

scipy 1.12's ``loadmat`` killed the process on the files of tests/data/sbd_mat_crashes.json
(damaged copies of the dataset maker's files, as splices of two stored originals); here each is
decoded in this process, so a reader that could crash would take pytest down with it.

Measure scipy's crash rate (every file loaded in a subprocess; 2 minutes on 2 cores):
    .venv/bin/python -m tests.test_matfile measure --n 2000
Show that the stored corpus still crashes scipy (each case in its own subprocess):
    .venv/bin/python -m tests.test_matfile corpus
"""

import argparse
import base64
import collections
import io
import json
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import zlib

import numpy as np
import pytest
import scipy.io
import scipy.sparse

from components.segmentation_example_gen import matfile, records
from datasets import synthetic_voc
from tests.conftest import sbd_path

CORPUS = os.path.join(os.path.dirname(__file__), "data", "sbd_mat_crashes.json")


# Damage, and the files it is done to


def damage(data: bytes, rng: random.Random) -> list:
    """One seeded damage as splices ``[(at, bytes cut, bytes put in)]``: 1-8 bytes changed, the
    tail cut off, 32 bytes zeroed, 1-16 random bytes inserted, or up to 64 overwritten."""
    at = rng.randrange(len(data))
    how = rng.choice(("change", "cut", "zero", "insert", "overwrite"))
    if how == "change":
        return [(rng.randrange(len(data)), 1, bytes([rng.randrange(256)])) for _ in range(rng.randint(1, 8))]
    if how == "cut":
        return [(at, len(data) - at, b"")]
    if how == "zero":
        n = min(32, len(data) - at)
        return [(at, n, bytes(n))]
    if how == "insert":
        return [(at, 0, rng.randbytes(rng.randint(1, 16)))]
    n = min(rng.randint(1, 64), len(data) - at)
    return [(at, n, rng.randbytes(n))]


def apply(data: bytes, splices) -> bytes:
    out = bytearray(data)
    for at, cut, put in splices:
        out[at : at + cut] = put
    return bytes(out)


def uncompressed(data: bytes) -> bytes:
    """A little-endian MATLAB 5 file with each compressed variable stored plain, as scipy's
    ``savemat`` writes without compression."""
    out, pos = [data[: matfile.HEADER_BYTES]], matfile.HEADER_BYTES
    while pos < len(data):
        kind, size = struct.unpack_from("<II", data, pos)
        element = data[pos + 8 : pos + 8 + size]
        out.append(zlib.decompress(element) if kind == 15 else data[pos : pos + 8 + size])
        pos += 8 + size
    return b"".join(out)


def load_corpus() -> tuple:
    """``(originals {name: bytes}, cases [(name, damaged bytes, how scipy died)])``."""
    with open(CORPUS) as f:
        corpus = json.load(f)
    originals = {name: base64.b64decode(text) for name, text in corpus["originals"].items()}
    cases = [
        (
            f"{case['original']}-{k}",
            apply(
                originals[case["original"]],
                [(at, cut, bytes.fromhex(put)) for at, cut, put in case["splices"]],
            ),
            case["scipy"],
        )
        for k, case in enumerate(corpus["cases"])
    ]
    return originals, cases


def _scipy_fields(data: bytes, variable: str) -> dict:
    """``{field: value}`` of a struct variable as ``loadmat`` reads it by default."""
    record = scipy.io.loadmat(io.BytesIO(data))[variable][0, 0]
    return {name: record[name] for name in record.dtype.names}


# Valid files: the values scipy reads


def _assert_reads_as_scipy(data: bytes, variable: str) -> None:
    ours = matfile.read_variables(data)[variable]
    theirs = _scipy_fields(data, variable)
    (fields,) = ours.fields
    assert list(fields) == list(theirs)
    for name, value in theirs.items():
        matrix = fields[name]
        if value.dtype == object:  # a cell (SBD's Boundaries): its sparse matrices' shapes
            assert matrix.class_name == "cell" and matrix.dims == value.shape, name
            for cell, sparse in zip(matrix.cells, value.ravel(order="F"), strict=True):
                assert cell.class_name == "sparse" and cell.dims == sparse.shape, name
        elif isinstance(value, np.ndarray):
            got = matfile.numeric_array(matrix)
            assert got.dtype == value.dtype and got.shape == value.shape, (name, got.dtype, got.shape)
            np.testing.assert_array_equal(got, value)
        else:
            assert scipy.sparse.issparse(value) and matrix.class_name == "sparse", name


def test_reads_the_dataset_makers_files_as_scipy_does(dataset_dir):
    # Every cls and inst file of the 40-image dataset, compressed as the maker writes them and
    # stored plain: every numeric field equal to loadmat's, data type and shape included.
    names = sorted(os.listdir(sbd_path(dataset_dir, "cls")))
    assert len(names) == 38
    for name in names:
        for folder, variable in (("cls", "GTcls"), ("inst", "GTinst")):
            with open(sbd_path(dataset_dir, folder, name), "rb") as f:
                data = f.read()
            for variant in (data, uncompressed(data)):
                _assert_reads_as_scipy(variant, variable)
                if variable == "GTcls":
                    ids, _ = records.decode_sbd_mask(name, variant)
                    np.testing.assert_array_equal(ids, _scipy_fields(variant, variable)["Segmentation"])


# Hand-written files: what MATLAB writes and scipy's savemat does not


def _element(order: str, kind: int, payload: bytes) -> bytes:
    if len(payload) <= 4 and kind != 14:  # a small data element, as MATLAB writes short ones
        word = struct.pack(order + "I", len(payload) << 16 | kind)
        return word + payload.ljust(4, b"\0")
    return struct.pack(order + "II", kind, len(payload)) + payload + bytes(-len(payload) % 8)


_KINDS = {"u1": 2, "u2": 4, "i4": 5, "f8": 9}


def _matrix(order: str, mclass: int, dims: tuple, values=None, parts=b"", name="") -> bytes:
    body = (
        _element(order, 6, struct.pack(order + "II", mclass, 0))
        + _element(order, 5, struct.pack(f"{order}{len(dims)}i", *dims))
        + _element(order, 1, name.encode())
    )
    if values is not None:  # stored in its own type, whatever the class: MATLAB's compact storage
        data = np.asarray(values).astype(np.dtype(values.dtype).newbyteorder(order)).tobytes(order="F")
        body += _element(order, _KINDS[values.dtype.str[1:]], data)
    return _element(order, 14, body + parts)


def _struct_file(order: str, fields: dict, compress: bool) -> bytes:
    names = b"".join(key.encode().ljust(32, b"\0") for key in fields)
    parts = _element(order, 5, struct.pack(order + "i", 32)) + _element(order, 1, names)
    variable = _matrix(order, 2, (1, 1), parts=parts + b"".join(fields.values()), name="GTcls")
    if compress:
        packed = zlib.compress(variable)
        variable = struct.pack(order + "II", 15, len(packed)) + packed
    mark = b"IM" if order == "<" else b"MI"
    text = b"MATLAB 5.0 MAT-file, hand-written by tests/test_matfile.py"
    return text.ljust(116, b" ") + bytes(8) + struct.pack(order + "H", 0x0100) + mark + variable


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "compressed"])
@pytest.mark.parametrize("order", ["<", ">"], ids=["little-endian", "big-endian"])
def test_hand_written_files_read_as_scipy_reads_them(order, compress):
    seg = np.arange(12, dtype=np.uint8).reshape(3, 4) % 7
    fields = {
        # uint8 class in uint8 elements (SBD's Segmentation); MATLAB stores a double as the
        # smallest type that holds its values; [1, 3, 4] squeezes to [3, 4]; 2 bytes fit a tag.
        "Segmentation": _matrix(order, 9, (3, 4), seg),
        "AsDouble": _matrix(order, 6, (3, 4), seg.astype(np.uint16) * 300),
        "Leading": _matrix(order, 9, (1, 3, 4), seg[None]),
        "Small": _matrix(order, 9, (1, 2), np.array([[4, 5]], np.uint8)),
        "Empty": _element(order, 14, b""),
    }
    data = _struct_file(order, fields, compress)
    ours = matfile.read_variables(data)["GTcls"].fields[0]
    theirs = _scipy_fields(data, "GTcls")
    for name in ("Segmentation", "AsDouble", "Leading", "Small"):
        got = matfile.numeric_array(ours[name])
        assert got.dtype == theirs[name].dtype and got.shape == theirs[name].shape, name
        np.testing.assert_array_equal(got, theirs[name])
    assert matfile.numeric_array(ours["Empty"]).shape == (0, 0) and theirs["Empty"].size == 0
    ids, _ = records.decode_sbd_mask("hand.mat", data)
    np.testing.assert_array_equal(ids, seg)
    fields["Segmentation"] = fields.pop("Leading")
    ids, _ = records.decode_sbd_mask("hand.mat", _struct_file(order, fields, compress))
    np.testing.assert_array_equal(ids, seg)


# Damaged files: rejected, whatever the damage


def test_the_files_that_crashed_scipy_are_rejected():
    # Each of these killed scipy's loadmat in 9 or 10 runs of 10 (SIGSEGV, once SIGBUS):
    # `python -m tests.test_matfile corpus`. Decoded here, in pytest's own process.
    _, cases = load_corpus()
    assert [(name, how) for name, _, how in cases] == [
        (f"{'compressed' if k in (4, 5, 8, 9, 10, 11) else 'plain'}-{k}", "SIGSEGV") for k in range(12)
    ]
    for name, data, _ in cases:
        with pytest.raises(records.Rejected) as e:
            records.decode_sbd_mask(name, data)
        assert e.value.kind == records.CORRUPT_MASK
        reason = e.value.reason.removeprefix(f"{name}: cannot read MATLAB file: ")
        if name.startswith("compressed"):  # inserted bytes: the stream inflates to too much
            assert reason == (
                "variable 1 (at byte 128): compressed element inflates to more than the 5176 bytes "
                "its matrix declares"
            )
        else:  # damage inside one of the 20 sparse matrices
            assert reason.startswith("GTcls.Boundaries{"), reason


def test_every_damaged_file_decodes_or_is_rejected_as_data():
    # 1,000 seeded damages to the two originals (the maker's compressed file, and stored plain).
    # A compressed variable's checksum catches any damage inside it: what still decodes is the
    # original mask (damage to the header's text). A plain file has no checksum: a changed
    # pixel may still decode, or be an invalid label.
    originals, _ = load_corpus()
    rng = random.Random(25)
    outcomes = collections.Counter()
    for name, original in originals.items():
        want, _ = records.decode_sbd_mask(name, original)
        for _ in range(500):
            try:
                ids, _ = records.decode_sbd_mask(name, apply(original, damage(original, rng)))
            except records.Rejected as e:
                assert e.kind in (records.CORRUPT_MASK, records.INVALID_LABEL), e
                outcomes[name, e.kind] += 1
                continue
            same = ids.shape == want.shape and bool(np.all(ids == want))
            assert same or name == "plain", name
            outcomes[name, "same" if same else "changed"] += 1
    assert outcomes == {
        ("compressed", records.CORRUPT_MASK): 456,
        ("compressed", "same"): 44,
        ("plain", records.CORRUPT_MASK): 414,
        ("plain", records.INVALID_LABEL): 16,
        ("plain", "same"): 62,
        ("plain", "changed"): 8,
    }


def _uint32(value: int) -> bytes:
    return struct.pack("<I", value)


@pytest.mark.parametrize(
    "original, splices, reason",
    [
        ("compressed", [(100, 10**6, b"")], "100 bytes, shorter than the 128-byte MATLAB 5 header"),
        (
            "compressed",
            [(132, 4, _uint32(5000))],
            "variable 1 (at byte 128): claims 5000 bytes, 327 are left",
        ),
        ("plain", [(3000, 10**6, b"")], "variable 1 (at byte 128): claims 5176 bytes, 2864 are left"),
        (
            "plain",
            [(288, 4, _uint32(33))],
            "GTcls.Segmentation: the data: 832 bytes of uint8, not 858 values",
        ),
        (
            "plain",
            [(207, 1, b"b")],
            "GTcls has no Segmentation field (fields: ['Boundaries', 'CategoriesPresent', 'Segmentbtion'])",
        ),
    ],
    ids=["short", "too-long-variable", "cut", "dims-beyond-data", "no-field"],
)
def test_what_is_wrong_is_named(original, splices, reason):
    originals, _ = load_corpus()
    with pytest.raises(records.Rejected) as e:
        records.decode_sbd_mask("x.mat", apply(originals[original], splices))
    assert e.value.kind == records.CORRUPT_MASK
    assert e.value.reason == f"x.mat: cannot read MATLAB file: {reason}"


def test_a_matlab_73_file_is_named():
    originals, _ = load_corpus()
    with pytest.raises(records.Rejected) as e:
        records.decode_sbd_mask("x.mat", apply(originals["compressed"], [(124, 2, b"\x00\x02")]))
    assert (e.value.kind, e.value.reason) == (
        records.CORRUPT_MASK,
        "x.mat: MATLAB v7.3 (HDF5) files are not SBD's format; re-save with -v7",
    )


# Measuring scipy (not tests: `python -m tests.test_matfile ...`)

_WORKER = r"""
import io, resource, sys, warnings
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
warnings.simplefilter("ignore")
import scipy.io
import scipy.sparse
for i, path in enumerate(sys.stdin.read().split()):
    try:
        with open(path, "rb") as f:
            scipy.io.loadmat(io.BytesIO(f.read()), squeeze_me=True, struct_as_record=False)
        print(i, "read", flush=True)
    except BaseException as e:
        print(i, type(e).__name__, flush=True)
"""


def _scipy_outcomes(paths: list) -> list:
    """loadmat on each file, in worker processes: its exception's name, "read", or the signal
    that killed it (a new worker carries on from the next file)."""
    outcomes, start = [None] * len(paths), 0
    while start < len(paths):
        run = subprocess.run(
            [sys.executable, "-c", _WORKER], input="\n".join(paths[start:]), capture_output=True, text=True
        )
        done = 0
        for line in run.stdout.splitlines():
            i, outcome = line.split(" ", 1)
            outcomes[start + int(i)], done = outcome, int(i) + 1
        if run.returncode:
            outcomes[start + done] = signal.Signals(-run.returncode).name if run.returncode < 0 else "exit"
            done += 1
        start += done
    return outcomes


def _originals(side: int, count: int) -> dict:
    """The dataset maker's cls files for ``count`` scenes, compressed as written and plain."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for folder in ("cls", "inst"):
            os.makedirs(os.path.join(tmp, folder))
        for index in range(count):
            scene = synthetic_voc.draw(
                synthetic_voc.scene_rng(7, index), side, synthetic_voc.VOC_CLASSES, synthetic_voc.EASY
            )
            synthetic_voc._write_sbd_mats(tmp, "x", scene)
            with open(os.path.join(tmp, "cls", "x.mat"), "rb") as f:
                data = f.read()
            out[f"compressed-{index}"], out[f"plain-{index}"] = data, uncompressed(data)
    return out


def _ours(data: bytes) -> str:
    try:
        records.decode_sbd_mask("x.mat", data)
        return "read"
    except records.Rejected as e:
        return e.kind


def measure(n: int, side: int, scenes: int, seed: int, keep: str = "", per_variant: int = 6) -> None:
    originals = _originals(side, scenes)
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        names = sorted(originals)
        files = []
        for k in range(n):
            name = names[k % len(names)]
            splices = damage(originals[name], rng)
            path = os.path.join(tmp, f"{k}.mat")
            with open(path, "wb") as f:
                f.write(apply(originals[name], splices))
            files.append((name, splices, path))
        theirs = _scipy_outcomes([path for _, _, path in files])
        for variant in ("compressed", "plain"):
            rows = [(t, f) for t, f in zip(theirs, files, strict=True) if f[0].startswith(variant)]
            crashes = sum(t.startswith("SIG") for t, _ in rows)
            scipy_said = collections.Counter(t for t, _ in rows).most_common()
            ours = collections.Counter(_ours(open(path, "rb").read()) for _, (_, _, path) in rows)
            print(
                f"{variant}: {len(rows)} damaged files, scipy crashed on {crashes}, {crashes / len(rows):.1%}"
            )
            print(f"  scipy: {dict(scipy_said)}")
            print(f"  matfile: {dict(ours)}")
        if keep:
            _keep(originals, theirs, files, keep, per_variant)


def _keep(originals, theirs, files, path, per_variant):
    """The smallest damages to scene 0's files that crash scipy in 3 runs of 3, ``per_variant``
    per variant, as the corpus (with its two originals)."""
    chosen = {}
    crashers = sorted(
        (
            (sum(len(put) + cut for _, cut, put in f[1]), t, f)
            for t, f in zip(theirs, files, strict=True)
            if t.startswith("SIG")
        ),
        key=lambda row: row[0],
    )
    for _, how, (name, splices, file) in crashers:
        variant = name.split("-")[0]
        if name.endswith("-0") and sum(c[0] == variant for c in chosen.values()) < per_variant:
            if all(_scipy_outcomes([file])[0].startswith("SIG") for _ in range(3)):
                chosen[file] = (variant, splices, how)
    corpus = {
        "about": "Damaged copies of the dataset maker's SBD cls file that crashed scipy 1.12's loadmat: "
        "each case is its original with splices [at, bytes cut, hex put in]; tests/test_matfile.py.",
        "originals": {
            variant: base64.b64encode(originals[f"{variant}-0"]).decode()
            for variant in ("compressed", "plain")
        },
        "cases": [
            {"original": variant, "splices": [[at, cut, put.hex()] for at, cut, put in splices], "scipy": how}
            for variant, splices, how in chosen.values()
        ],
    }
    with open(path, "w") as f:
        json.dump(corpus, f, indent=1)
    print(f"kept {len(chosen)} cases in {path}")


def check_corpus() -> None:
    _, cases = load_corpus()
    with tempfile.TemporaryDirectory() as tmp:
        for name, data, how in cases:
            path = os.path.join(tmp, f"{name}.mat")
            with open(path, "wb") as f:
                f.write(data)
            print(name, "stored:", how, "now:", _scipy_outcomes([path])[0], "matfile:", _ours(data))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("measure", "corpus"))
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--side", type=int, default=96, help="the maker's max_side (the tests' datasets: 96)")
    parser.add_argument("--scenes", type=int, default=4, help="originals: this many of the maker's scenes")
    parser.add_argument("--seed", type=int, default=25)
    parser.add_argument("--keep", default="", help="write crashes of scene 0's files as a corpus here")
    args = parser.parse_args()
    if args.what == "measure":
        measure(args.n, args.side, args.scenes, args.seed, args.keep)
    else:
        check_corpus()
