"""DeepLabV3+ training for the TFX Trainer: model, input pipeline, recipe, export.

Importing the package tells autograph not to convert ``tf_keras``, as TensorFlow already
does for ``keras``: otherwise the first ``fit`` call transpiles the whole of Keras' training
code (80 s before the first step of the tiny model on 2 cores, against 13 s without). Keras'
own code is written for graph mode and needs no conversion.
"""

from tensorflow.python.autograph.core import config as _autograph_config

if not any(rule.matches("tf_keras") for rule in _autograph_config.CONVERSION_RULES):
    _autograph_config.CONVERSION_RULES = (
        *_autograph_config.CONVERSION_RULES,
        _autograph_config.DoNotConvert("tf_keras"),
    )
