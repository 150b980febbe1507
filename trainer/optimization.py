"""The optimisation recipe: SGD with momentum or AdamW, linear warmup then poly decay, weight decay."""

import tensorflow as tf
import tf_keras as keras

from core.choices import ADAMW
from core.config import TrainerConfig


@keras.utils.register_keras_serializable(package="deeplab_tfx")
class WarmupPolyDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``base * (step + 1) / warmup`` for the first ``warmup`` steps, then poly decay to ``end``.

    Poly: ``(base - end) * (1 - progress) ** power + end`` with progress going 0 -> 1 over the
    steps after warmup (Chen et al. use power 0.9). Warmup keeps the first updates of a randomly
    initialised decoder from wrecking pretrained backbone statistics at large batch sizes.
    """

    def __init__(
        self, base: float, total_steps: int, warmup_steps: int = 0, power: float = 0.9, end: float = 0.0
    ):
        super().__init__()
        self.base, self.total_steps, self.warmup_steps = base, total_steps, warmup_steps
        self.power, self.end = power, end

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        progress = tf.clip_by_value((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        poly = (self.base - self.end) * (1.0 - progress) ** self.power + self.end
        if not self.warmup_steps:
            return poly
        warm = self.base * (step + 1.0) / float(self.warmup_steps)
        return tf.where(step < self.warmup_steps, warm, poly)

    def get_config(self):
        return {
            "base": self.base,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "power": self.power,
            "end": self.end,
        }


def make_optimizer(config: TrainerConfig, total_steps: int) -> keras.optimizers.Optimizer:
    """SGD + momentum, or AdamW, on the schedule above; decoupled weight decay on kernels only."""
    schedule = WarmupPolyDecay(
        config.learning_rate, total_steps, config.warmup_steps, config.poly_power, config.end_learning_rate
    )
    # jit_compile off: XLA-compiling the update buys nothing on CPU and costs seconds at start.
    if config.optimizer == ADAMW:
        optimizer = keras.optimizers.AdamW(
            schedule, weight_decay=config.weight_decay, beta_1=config.momentum, jit_compile=False
        )
    else:
        optimizer = keras.optimizers.SGD(
            schedule, momentum=config.momentum, weight_decay=config.weight_decay or None, jit_compile=False
        )
    if config.weight_decay:
        # Decaying batch-norm scales and biases only fights the normalisation (Goyal et al., 2017).
        optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer
