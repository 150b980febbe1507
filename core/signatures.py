"""The exported SavedModel's signature names and their input and output keys.

``trainer/export.py`` builds the signatures under these names; TF Serving's clients
(``serving/``), the warm-up records, TFMA's EvalConfig and the run report call them by the same
names, and none of those imports the trainer to learn them.
"""

SERVING_DEFAULT = "serving_default"  # images -> class ids, height, width
SERVING_PNG = "serving_png"  # images -> each mask as a grey PNG of the ids
SERVING_EXAMPLES = "serving_examples"  # serialized raw tf.Examples (TFMA) -> as serving_default
TRANSFORM_FEATURES = "transform_features"  # serialized raw tf.Examples -> Transform's outputs

# Inputs.
IMAGES = "images"  # [None] string: encoded JPEG, PNG, GIF (first frame) or BMP
EXAMPLES = "examples"  # [None] string: serialized raw tf.Examples

# Outputs.
CLASS_IDS = "class_ids"  # [B, H_max, W_max] uint8, 255-padded to the largest image of the batch
# TF Serving's REST API answers a DT_STRING output whose name ends in "_bytes" as {"b64": ...}.
CLASS_IDS_PNG = "class_ids_png_bytes"
HEIGHT = "height"  # [B]: each image's own size, to crop class_ids
WIDTH = "width"
PROBABILITIES = "probabilities"  # [B, H_max, W_max, N] float32, with trainer.with_probabilities
# [B] string: why the image signatures refused each row ("" for a row they served). A refused
# row's masks are empty (height and width 0); the reason does not name the row, since a merged
# batch's index is not the client's: a front end names it (``refusals``).
ERROR = "error"

# The config keys the signatures name when they refuse an image, or the batch, as too large.
IMAGE_LIMIT = "trainer.max_image_pixels"
BATCH_LIMIT = "trainer.max_batch_pixels"

# The encodings ``images`` may hold: those ``tf.io.decode_image`` reads, by the first bytes it
# tells them apart with (TF 2.16, ``decode_image_op.cc``). One table: the exported graph's header
# reader (transform/preprocessing.py) and ``deeplab-tfx serve``'s request checks both read it.
IMAGE_ENCODINGS = (
    ("JPEG", b"\xff\xd8\xff"),
    ("PNG", b"\x89PNG\r\n\x1a\n"),
    ("GIF", b"GIF8"),
    ("BMP", b"BM"),
)
ENCODING_NAMES = ", ".join(name for name, _ in IMAGE_ENCODINGS[:-1]) + f" or {IMAGE_ENCODINGS[-1][0]}"


def crop_masks(outputs) -> list:
    """Each image's ``[H, W]`` class ids from a predicting signature's outputs (``class_ids``
    padded to the largest image of the batch, ``height`` and ``width``; tensors or arrays)."""
    import numpy as np

    class_ids, heights, widths = (np.asarray(outputs[key]) for key in (CLASS_IDS, HEIGHT, WIDTH))
    return [class_ids[i, : int(h), : int(w)] for i, (h, w) in enumerate(zip(heights, widths, strict=True))]


def refusals(outputs, input_name: str = IMAGES) -> list:
    """``["images[i] <reason>", ...]`` for each row a predicting signature refused (its ``error``
    output; ``[]`` for a model exported before signatures had one), ``i`` the row's index in
    ``outputs``: a front end passes the rows of one client's request, so the index is the
    client's own."""
    if ERROR not in outputs:
        return []
    import numpy as np

    return [
        f"{input_name}[{i}] {reason.decode() if isinstance(reason, bytes) else reason}"
        for i, reason in enumerate(np.asarray(outputs[ERROR]).reshape(-1))
        if len(reason)
    ]
