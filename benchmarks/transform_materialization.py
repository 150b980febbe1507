"""Materialize the transformed examples, or transform in the trainer? Bytes and time, one run.

For VOC-sized images at the recipe's 512 px: the size of a raw tf.Example (what SegmentationExampleGen
writes) against a materialized transformed one (float32 image + int64 label, as Transform
would write it), and how many examples/s the transform delivers inside a parallel tf.data
pipeline on this machine (what ``materialize=False`` costs the trainer per epoch).

    python -m benchmarks.transform_materialization --num-images 100
"""

import os
import tempfile
import time

import apache_beam as beam
import tensorflow as tf

from benchmarks import results_io
from components.segmentation_example_gen import beam_ingest
from core import features
from core.dataset_spec import VOC_SPEC
from datasets import synthetic_voc
from transform import preprocessing


def transformed_example(image, label) -> bytes:
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                features.IMAGE: tf.train.Feature(float_list=tf.train.FloatList(value=image.numpy().ravel())),
                features.LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=label.numpy().ravel())),
            }
        )
    ).SerializeToString()


def main() -> None:
    parser = results_io.parser(__doc__, "transform_materialization")
    parser.add_argument("--num-images", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=512)
    args = parser.parse_args()
    size = args.image_size

    with tempfile.TemporaryDirectory() as tmp:
        synthetic_voc.make_dataset(tmp, args.num_images, seed=0)
        examples = os.path.join(tmp, "examples")
        beam_ingest.run(
            lambda: beam.Pipeline(), tmp, tmp, examples, os.path.join(tmp, "rejected"), dataset=VOC_SPEC
        )
        files = tf.io.gfile.glob(os.path.join(examples, "Split-*", "*"))
        raw = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]

    spec = {
        features.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
        features.MASK_KEY: tf.io.FixedLenFeature([], tf.string),
    }

    def transform(serialized):
        parsed = tf.io.parse_single_example(serialized, spec)
        image = preprocessing.resize_and_pad_image(
            preprocessing.decode_image(parsed[features.IMAGE_KEY]), size
        )
        ids, _ = preprocessing.decode_mask(parsed[features.MASK_KEY], VOC_SPEC.num_classes)
        return image, preprocessing.resize_and_pad_label(ids, size)

    image, label = transform(raw[0])
    materialized = len(transformed_example(image, label))
    dataset = tf.data.Dataset.from_tensor_slices(raw).map(transform, num_parallel_calls=tf.data.AUTOTUNE)
    for _ in dataset.take(8):  # warm up
        pass
    start = time.perf_counter()
    for _ in range(3):
        for _ in dataset.prefetch(tf.data.AUTOTUNE):
            pass
    per_second = 3 * len(raw) / (time.perf_counter() - start)

    raw_bytes = sum(len(r) for r in raw) / len(raw)
    result = results_io.save(
        args.out,
        "transform_materialization",
        image_size=size,
        examples=len(raw),
        bytes_per_example={"raw": round(raw_bytes), "materialized_transformed": materialized},
        materialized_to_raw_ratio=round(materialized / raw_bytes, 1),
        train_aug_10582_gigabytes={
            "raw": round(10582 * raw_bytes / 1e9, 2),
            "materialized_transformed": round(10582 * materialized / 1e9, 1),
        },
        transform_in_tf_data_examples_per_second=round(per_second, 1),
    )
    print(
        f"transform_materialization: {size} px, raw {round(raw_bytes)} B vs materialized {materialized} B "
        f"({result['materialized_to_raw_ratio']}x); transform in tf.data {per_second:.1f} examples/s"
    )


if __name__ == "__main__":
    main()
