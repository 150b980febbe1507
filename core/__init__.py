"""The floor: names, the config schema, the dataset spec, storage and checks.

Every other package imports from here; this package imports no other of ours
(``tests/test_layering.py`` holds the order of the packages and checks it against the imports).
What the data contract, the exported model and the artifacts are called is spelled here once:
``features`` (tf.Example keys, splits), ``signatures`` (the SavedModel's signatures and their
inputs and outputs), ``artifacts`` (file names and layouts inside TFX artifacts, ML Metadata
property names), ``metrics`` (the metric names training, TFMA and the report share).
"""
