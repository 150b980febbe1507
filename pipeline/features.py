"""Names shared by every stage: feature keys, class list, label conventions.

Defined once and imported everywhere (ExampleGen, schema, Transform, trainer, serving,
EvalConfig) so that no key is ever spelled twice as a string literal.

Compatibility with TF Model Garden, exactly (tests/test_model_garden_compatibility.py pins it):
the raw keys and their types are those its segmentation ``Decoder`` parses, so the image,
height and width read as ours do. The mask encoding is not: Model Garden decodes
``image/segmentation/class/encoded`` with ``tf.io.decode_image(..., channels=1)``, which turns
our palette PNG into luminance (class 6 becomes 89), not class ids; it expects grey PNGs of
raw ids. Palette PNGs are the VOC format, and Transform decodes them in the graph.
"""

# Raw tf.Example keys written by VocExampleGen (the data contract in DESIGN.md).
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
IMAGE_FORMAT = b"jpeg"
MASK_FORMAT = b"png"
SOURCE_VOC = "voc"
SOURCE_SBD = "sbd"
SOURCES = (SOURCE_VOC, SOURCE_SBD)

# Split names of the Examples artifact.
TRAIN_SPLIT = "train"
EVAL_SPLIT = "eval"
SPLITS = (TRAIN_SPLIT, EVAL_SPLIT)

# Label conventions of Pascal VOC: 0 is background, 255 is "void" (object borders and
# ambiguous regions), ignored by the loss and by every metric.
IGNORE_LABEL = 255
CLASS_NAMES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
NUM_CLASSES = len(CLASS_NAMES)

# Transformed feature names (outputs of transform.preprocessing.preprocessing_fn).
IMAGE = "image"  # float32 [S, S, 3], resized keeping aspect ratio, padded bottom/right
LABEL = "label"  # int64 [S, S] class ids, 255 where void, padded or out of palette
ORIGINAL_HEIGHT = "original_height"  # int64 [], to map predictions back
ORIGINAL_WIDTH = "original_width"  # int64 []
# Name of the Transform vocabulary holding per-class pixel counts of the train split.
CLASS_COUNTS_VOCABULARY = "class_pixel_counts"
OUT_OF_PALETTE_TOKEN = "out_of_palette"
