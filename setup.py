"""deeplab-tfx: a TFX pipeline for semantic segmentation (Pascal VOC 2012 + SBD, DeepLabV3+).

Beam ships this package to remote workers with ``--setup_file=./setup.py``, so every module that
a worker imports by dotted path (the ExampleGen executor, ``transform.preprocessing``,
``trainer.run_fn``) must be listed in ``packages`` below.
"""

import setuptools

_CORE = [
    "tfx==1.16.0",
    "tensorflow==2.16.2",
    "tf_keras==2.16.0",
    "apache-beam[gcp]==2.74.0",
    # TFT imports dill; Beam no longer pulls it in.
    "dill",
    "tensorflow-transform==1.16.0",
    "tensorflow-data-validation==1.16.1",
    "tensorflow_model_analysis==0.47.1",
    "tensorflow-serving-api==2.16.1",
    "ml-metadata==1.16.0",
    "numpy<2",
    "pillow",
    "scipy",
    "PyYAML",
]

_EXTRAS = {
    "airflow": ["apache-airflow==2.10.5"],
    "kfp": ["kfp==2.5.0", "kfp-pipeline-spec==0.2.2"],
    "report": ["matplotlib"],
    "test": ["pytest", "pytest-timeout", "pytest-xdist", "ruff"],
}
_EXTRAS["all"] = sorted({req for reqs in _EXTRAS.values() for req in reqs})

setuptools.setup(
    name="deeplab-tfx",
    version="0.1.0",
    description="Production TFX pipeline for semantic segmentation: VOC 2012 + SBD to TF Serving.",
    python_requires=">=3.9,<3.11",
    packages=setuptools.find_packages(
        include=[
            "core*",
            "transform*",
            "trainer*",
            "evaluation*",
            "serving*",
            "inference*",
            "components*",
            "datasets*",
            "pipeline*",
        ]
    ),
    # The custom artifact types under their ML Metadata names, which Vertex imports (deeplab_tfx.py).
    py_modules=["deeplab_tfx"],
    package_data={"pipeline": ["configs/*.yaml", "schema/*.pbtxt"], "datasets": ["specs/*.yaml"]},
    install_requires=_CORE,
    extras_require=_EXTRAS,
    entry_points={"console_scripts": ["deeplab-tfx=pipeline.cli:main"]},
)
