"""``ram://``, TF's in-memory filesystem, as the tests' object store, and a stand-in SavedModel.

Like ``gs://``, ``ram://`` is reached only through ``tf.io.gfile`` and has no directory rename;
it lives as long as the process, across tests, so each test takes a fresh root. These helpers
read it independently of ``core.storage``, the code under test.
"""

import os
import uuid

import tensorflow as tf


def ram_root(name: str) -> str:
    """A fresh root on ``ram://``, unique in this process."""
    return f"ram://{name}-{uuid.uuid4().hex[:8]}"


def read_bytes(uri: str) -> bytes:
    with tf.io.gfile.GFile(uri, "rb") as f:
        return f.read()


def files_under(root: str) -> set:
    """Paths of the files under ``root``, relative to it.

    ``ram://`` lists by name prefix: ``assets/`` also shows ``.extra`` when ``assets.extra/`` is
    its sibling (TF 2.16). Such names do not exist, so they are left out.
    """
    found = set()
    for directory, _, files in tf.io.gfile.walk(root):
        relative = directory[len(root) :].strip("/")
        real = [name for name in files if tf.io.gfile.exists(os.path.join(directory, name))]
        found |= {os.path.join(relative, name) for name in real}
    return found


def fake_saved_model(tmp_path, name: str = "model") -> str:
    """A local directory shaped like a SavedModel (``saved_model.pb`` reads ``graph of <name>``,
    and one variables file): enough for the pusher, which copies files and loads nothing."""
    path = tmp_path / name
    path.mkdir()
    (path / "saved_model.pb").write_bytes(b"graph of " + name.encode())
    (path / "variables").mkdir()
    (path / "variables" / "variables.index").write_bytes(b"index")
    return str(path)
