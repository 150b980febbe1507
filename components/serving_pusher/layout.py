"""TF Serving's model directory: ``<base>/<model_name>/<integer version>/``, written safely.

TF Serving's file-system source polls the base path and loads any directory whose name is an
integer, as soon as it sees it. So a version is built under a hidden staging name that is not
an integer (``.staging-...``: never loaded) and renamed to its number only once it is
complete: a crash mid-push leaves at most a staging directory, which the next push removes.
Versions are 1, 2, 3, ...; an existing version is never written to.
"""

import json
import logging
import os
import shutil
import uuid
from typing import Callable, Optional

STAGING_PREFIX = ".staging-"
# Written into each pushed version: which model artifact it came from, so that pushing the
# same model again (a re-run whose Evaluator re-blessed it) does not add a duplicate version.
PROVENANCE_FILE = os.path.join("assets.extra", "deeplab_tfx_push.json")


def versions(base_dir: str) -> list:
    """The integer versions under ``base_dir``, ascending (what TF Serving would consider)."""
    if not os.path.isdir(base_dir):
        return []
    return sorted(int(name) for name in os.listdir(base_dir) if name.isdigit())


def provenance(version_dir: str) -> dict:
    path = os.path.join(version_dir, PROVENANCE_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def push(
    model_dir: str,
    base_dir: str,
    source: str,
    add_files: Optional[Callable[[str], None]] = None,
) -> tuple:
    """Copies SavedModel ``model_dir`` to the next version under ``base_dir``; ``(version, new)``.

    ``source`` names the model artifact; if the newest version came from the same one, nothing
    is copied and ``(that version, False)`` is returned. ``add_files(staging_dir)`` may add files
    (the warm-up requests) before the version becomes visible.
    """
    os.makedirs(base_dir, exist_ok=True)
    _remove_stale_staging(base_dir)
    existing = versions(base_dir)
    if existing and provenance(os.path.join(base_dir, str(existing[-1]))).get("source") == source:
        logging.info("ServingPusher: %s is already version %d; not pushed again", source, existing[-1])
        return existing[-1], False
    staging = os.path.join(base_dir, f"{STAGING_PREFIX}{uuid.uuid4().hex}")
    try:
        shutil.copytree(model_dir, staging)
        if add_files:
            add_files(staging)
        os.makedirs(os.path.join(staging, "assets.extra"), exist_ok=True)
        with open(os.path.join(staging, PROVENANCE_FILE), "w") as f:
            json.dump({"source": source}, f)
        version = (existing[-1] if existing else 0) + 1
        while True:
            try:
                # rename(2) is atomic, and fails rather than replace a non-empty directory:
                # a version that appeared meanwhile (another pusher) is never overwritten.
                os.rename(staging, os.path.join(base_dir, str(version)))
                return version, True
            except OSError:
                if not os.path.exists(os.path.join(base_dir, str(version))):
                    raise
                version += 1
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _remove_stale_staging(base_dir: str) -> None:
    for name in os.listdir(base_dir):
        if name.startswith(STAGING_PREFIX):
            logging.warning("ServingPusher: removing %s, left by an interrupted push", name)
            shutil.rmtree(os.path.join(base_dir, name), ignore_errors=True)
