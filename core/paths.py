"""Where things are: the project's own files, and the one resolver of a config's paths.

A config holds two kinds of relative path. Project files (the curated schema, Beam's
``setup.py``) are relative to the project: this checkout, or the directory the Dockerfile puts
it in (``kubeflow.project_root``). Run paths (the pipeline root, the metadata file, the
datasets, the serving directory, backups, a local backbone weights file) are relative to where the
run is started. ``resolved`` makes both absolute against
the bases its caller gives; each runner calls it once (the local runner and the Airflow DAG with
this checkout and the working directory, the Kubeflow compiler with the image's directory and no
working directory), and ``create_pipeline`` takes the config as it comes.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from typing import Optional

from core.choices import IMAGENET_WEIGHTS

if typing.TYPE_CHECKING:
    from core.config import PipelineConfig

# The directory holding this project's packages: the checkout, or the image's /deeplab-tfx.
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(PROJECT_ROOT, "pipeline", "configs")  # named configs (voc, tiny, ...)
DATASET_SPEC_DIR = os.path.join(PROJECT_ROOT, "datasets", "specs")  # named dataset specs
METADATA_FILE = "metadata.sqlite"  # SQLite ML Metadata under the pipeline root, unless set


def resolve(path: str, base: str) -> str:
    """``path`` against ``base``: empty, absolute and URI (``gs://...``) paths stay as they are."""
    if not path or "://" in path or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(base, path))


def project_file(path: str) -> str:
    """A project file of this checkout (a named config, a dataset spec, the schema)."""
    return resolve(path, PROJECT_ROOT)


def resolved(config: PipelineConfig, project_root: str, working_dir: Optional[str]) -> PipelineConfig:
    """``config`` with its project files resolved against ``project_root`` and, unless
    ``working_dir`` is None (a remote runner: paths there are URIs), its run paths against
    ``working_dir``, with the SQLite metadata file defaulting to ``<pipeline_root>/metadata.sqlite``."""
    config = dataclasses.replace(
        config,
        validation=dataclasses.replace(
            config.validation, schema_path=resolve(config.validation.schema_path, project_root)
        ),
        beam=dataclasses.replace(config.beam, setup_file=resolve(config.beam.setup_file, project_root)),
    )
    if working_dir is None:
        return config
    root = resolve(config.pipeline_root, working_dir)
    weights = config.trainer.backbone_weights
    return dataclasses.replace(
        config,
        pipeline_root=root,
        metadata_path=resolve(config.metadata_path, working_dir) or os.path.join(root, METADATA_FILE),
        data=dataclasses.replace(
            config.data,
            voc_root=resolve(config.data.voc_root, working_dir),
            sbd_root=resolve(config.data.sbd_root, working_dir),
            root=resolve(config.data.root, working_dir),
        ),
        pusher=dataclasses.replace(
            config.pusher, serving_dir=resolve(config.pusher.serving_dir, working_dir)
        ),
        trainer=dataclasses.replace(
            config.trainer,
            backup_dir=resolve(config.trainer.backup_dir, working_dir),
            backbone_weights=weights if weights == IMAGENET_WEIGHTS else resolve(weights, working_dir),
        ),
    )
