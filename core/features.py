"""Names shared by every stage: feature keys, split names, the ignore label.

Defined once and imported everywhere (ExampleGen, schema, Transform, trainer, serving,
EvalConfig) so that no key is ever spelled twice as a string literal.

Compatibility with TF Model Garden, exactly (tests/test_model_garden_compatibility.py pins it):
the raw keys and their types are those its segmentation ``Decoder`` parses, so the image,
height and width read as ours do. The mask encoding is not: Model Garden decodes
``image/segmentation/class/encoded`` with ``tf.io.decode_image(..., channels=1)``, which turns
our palette PNG into luminance (class 6 becomes 89), not class ids; it expects grey PNGs of
raw ids. Palette PNGs are the VOC format, and Transform decodes them in the graph.
"""

# Raw tf.Example keys written by SegmentationExampleGen (the data contract in DESIGN.md).
IMAGE_KEY = "image/encoded"
IMAGE_FORMAT_KEY = "image/format"
FILENAME_KEY = "image/filename"
HEIGHT_KEY = "image/height"
WIDTH_KEY = "image/width"
SOURCE_KEY = "image/source"
MASK_KEY = "image/segmentation/class/encoded"
MASK_FORMAT_KEY = "image/segmentation/class/format"
CLASSES_PRESENT_KEY = "image/segmentation/class/present"

# Values of the enumerated string features.
IMAGE_FORMAT = b"jpeg"  # VOC and SBD ship JPEGs
PNG_FORMAT = b"png"
IMAGE_FORMATS = (IMAGE_FORMAT, PNG_FORMAT)  # what a folders dataset's images may be
MASK_FORMAT = PNG_FORMAT
SOURCE_VOC = "voc"
SOURCE_SBD = "sbd"
SOURCES = (SOURCE_VOC, SOURCE_SBD)

# Split names of the Examples artifact.
TRAIN_SPLIT = "train"
EVAL_SPLIT = "eval"
SPLITS = (TRAIN_SPLIT, EVAL_SPLIT)

# The canonical "ignore" id of the records' masks, the Transform output, the loss and every
# metric, whatever the dataset's own ignore value (the dataset spec maps it here). The classes
# themselves come from the dataset spec (core/dataset_spec.py), never from a constant.
IGNORE_LABEL = 255

# Transformed feature names (outputs of transform.preprocessing.preprocessing_fn).
IMAGE = "image"  # float32 [S, S, 3], resized keeping aspect ratio, padded bottom/right
LABEL = "label"  # int64 [S, S] class ids, 255 where void, padded or out of palette
ORIGINAL_HEIGHT = "original_height"  # int64 [], to map predictions back
ORIGINAL_WIDTH = "original_width"  # int64 []
# Name of the Transform vocabulary holding per-class pixel counts of the train split.
CLASS_COUNTS_VOCABULARY = "class_pixel_counts"
OUT_OF_PALETTE_TOKEN = "out_of_palette"
