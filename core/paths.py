"""Where things are: the project's own files, and how a config's relative paths are resolved.

A config holds two kinds of relative path. Project files (the curated schema, Beam's
``setup.py``) are relative to the project: this checkout, or the directory the Dockerfile puts
it in (``kubeflow.project_root``). Run paths (the pipeline root, the metadata file, the
datasets, the serving directory, backups, a local backbone weights file) are relative to where the
run is started. ``PipelineConfig.resolved`` makes both absolute against the bases its caller
gives, with ``resolve`` below; each runner calls it once (the local runner and the Airflow DAG with
this checkout and the working directory, the Kubeflow compiler with the image's directory and no
working directory), and ``create_pipeline`` takes the config as it comes.
"""

import os

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
