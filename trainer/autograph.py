"""Keeps autograph from converting ``tf_keras``'s own code: ``skip_keras_conversion()``, called
where the Trainer starts (``training.train``) and by whoever fits our models outside it.

For TensorFlow 2.16 with tf_keras 2.16 (the pins of TFX 1.16; ``MEASURED_WITH``): autograph
already leaves ``keras`` (Keras 3) alone, but not ``tf_keras``, the Keras 2 that TFX, TFT and TFMA
use, so the first ``fit`` transpiled the whole of Keras' training code: 80 s before the first
step of the tiny model on 2 cores, against 13 s without. That code is written for graph mode and
needs no conversion. A call, not an import side effect: importing the trainer changes nothing in
the importing process (``tests/test_layering.py``). Under other versions it still applies, and
says once that it was measured on these.
"""

import logging

import tensorflow as tf
import tf_keras
from tensorflow.python.autograph.core import config as _autograph_config

MODULE = "tf_keras"
MEASURED_WITH = {"tensorflow": "2.16.", "tf_keras": "2.16."}

_log = logging.getLogger(__name__)


def skip_keras_conversion() -> None:
    """Adds a ``DoNotConvert("tf_keras")`` rule to autograph's, once (idempotent)."""
    if keras_conversion_skipped():
        return
    versions = {"tensorflow": tf.__version__, "tf_keras": tf_keras.__version__}
    if any(not versions[name].startswith(prefix) for name, prefix in MEASURED_WITH.items()):
        _log.warning(
            "autograph: skipping tf_keras conversion was measured with %s, this is %s; "
            "check that it still helps (trainer/autograph.py)",
            MEASURED_WITH,
            versions,
        )
    _autograph_config.CONVERSION_RULES = (
        *_autograph_config.CONVERSION_RULES,
        _autograph_config.DoNotConvert(MODULE),
    )


def keras_conversion_skipped() -> bool:
    """Whether autograph leaves ``tf_keras`` alone in this process."""
    return any(
        isinstance(rule, _autograph_config.DoNotConvert) and rule.matches(MODULE)
        for rule in _autograph_config.CONVERSION_RULES
    )
