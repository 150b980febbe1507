"""Keeps autograph from converting ``tf_keras``'s own code: call ``skip_keras_conversion()``
before the first ``fit`` (``training.compile_model`` does).

TensorFlow 2.16's autograph already leaves ``keras`` (Keras 3) alone but not ``tf_keras`` 2.16,
the Keras 2 that TFX 1.16, TFT and TFMA use: the first ``fit`` then transpiles the whole of
Keras' training code (80 s before the first step of the tiny model on 2 cores, against 13 s
without). That code is written for graph mode and needs no conversion. A call, not an import
side effect: importing the trainer changes nothing in the process that imports it.
"""

from tensorflow.python.autograph.core import config as _autograph_config

MODULE = "tf_keras"


def skip_keras_conversion() -> None:
    """Adds a ``DoNotConvert("tf_keras")`` rule to autograph's, once (idempotent)."""
    if not any(rule.matches(MODULE) for rule in _autograph_config.CONVERSION_RULES):
        _autograph_config.CONVERSION_RULES = (
            *_autograph_config.CONVERSION_RULES,
            _autograph_config.DoNotConvert(MODULE),
        )


def skips_keras_conversion() -> bool:
    """Whether autograph leaves ``tf_keras`` alone in this process."""
    return any(rule.matches(MODULE) and isinstance(rule, _autograph_config.DoNotConvert)
               for rule in _autograph_config.CONVERSION_RULES)  # fmt: skip
