"""Every exported signature, called after save -> load, against the in-process model."""

import io
import re

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from PIL import Image

from core import dataset_spec, features, signatures
from core.config import ConfigError, TrainerConfig
from core.dataset_spec import VOC_SPEC
from tests import reference
from tests.conftest import MAX_SIDE, feature, read_examples
from tests.helpers.images import declaring, encode
from trainer import export, losses, model, optimization, training
from transform import preprocessing

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(analyzed, tmp_path_factory):
    examples_uri, tft_output = analyzed
    net = model.build_deeplabv3plus(
        MAX_SIDE,
        VOC_SPEC.num_classes,
        backbone_weights=None,
        backbone="mobilenetv2",
        width=0.35,
        aspp_filters=16,
        decoder_filters=16,
    )
    # Compiled as training compiles it, so that the SavedModel carries the loss, schedule and
    # metric that `tf_keras.models.load_model(path)` (compile=True) revives.
    training.compile_model(net, TrainerConfig(), total_steps=100)
    path = str(tmp_path_factory.mktemp("export") / "model")
    export.export(net, tft_output, path, dataset_spec.of_examples(examples_uri), with_probabilities=True)
    return net, tft_output, tf.saved_model.load(path), read_examples(examples_uri, features.TRAIN_SPLIT), path


def _different_sizes(examples, n=3):
    chosen, sizes = [], set()
    for e in examples:
        size = (feature(e, features.HEIGHT_KEY)[0], feature(e, features.WIDTH_KEY)[0])
        if size not in sizes:
            chosen.append(e)
            sizes.add(size)
        if len(chosen) == n:
            return chosen
    raise AssertionError("the dataset should have images of several sizes")


def _in_process(net, tft_output, examples):
    raw = tf.io.parse_example([e.SerializeToString() for e in examples], tft_output.raw_feature_spec())
    out = tft_output.transform_features_layer()(raw)
    logits = net(out[features.IMAGE], training=False)
    return export.to_original_resolution(logits, out[features.ORIGINAL_HEIGHT], out[features.ORIGINAL_WIDTH])


def test_serving_default_returns_each_image_at_its_own_size(exported):
    net, tft_output, loaded, examples, _ = exported
    batch = _different_sizes(examples)
    jpegs = tf.constant([feature(e, features.IMAGE_KEY)[0] for e in batch])
    out = loaded.signatures[signatures.SERVING_DEFAULT](images=jpegs)
    expected = _in_process(net, tft_output, batch)
    heights, widths = out["height"].numpy(), out["width"].numpy()
    ids = out["class_ids"].numpy()
    assert ids.dtype == np.uint8 and ids.shape == (3, heights.max(), widths.max())
    for i, e in enumerate(batch):
        h, w = feature(e, features.HEIGHT_KEY)[0], feature(e, features.WIDTH_KEY)[0]
        assert (heights[i], widths[i]) == (h, w)
        assert (ids[i, :h, :w] < VOC_SPEC.num_classes).all() and (ids[i, h:] == 255).all()
        assert (ids[i, :, w:] == 255).all()
    np.testing.assert_array_equal(ids, expected["class_ids"].numpy())
    probs = out["probabilities"].numpy()
    np.testing.assert_allclose(probs[0, : heights[0], : widths[0]].sum(-1), 1.0, rtol=1e-5)


def test_serving_examples_and_transform_features(exported):
    net, tft_output, loaded, examples, _ = exported
    batch = _different_sizes(examples)
    serialized = tf.constant([e.SerializeToString() for e in batch])
    by_examples = loaded.signatures[signatures.SERVING_EXAMPLES](examples=serialized)
    by_images = loaded.signatures[signatures.SERVING_DEFAULT](
        images=tf.constant([feature(e, features.IMAGE_KEY)[0] for e in batch])
    )
    np.testing.assert_array_equal(by_examples["class_ids"].numpy(), by_images["class_ids"].numpy())
    transformed = loaded.signatures[signatures.TRANSFORM_FEATURES](examples=serialized)
    assert transformed[features.LABEL].shape == (3, MAX_SIDE, MAX_SIDE)
    assert transformed[features.IMAGE].shape == (3, MAX_SIDE, MAX_SIDE, 3)


def test_keras_reloads_the_export_with_its_training_setup_and_the_served_masks(exported):
    _, tft_output, loaded, examples, path = exported
    revived = keras.models.load_model(path)  # compile=True, Keras' default
    assert isinstance(revived.loss, losses.IgnoreLabelCrossEntropy)
    schedule = keras.optimizers.schedules.deserialize(revived.optimizer.get_config()["learning_rate"])
    assert isinstance(schedule, optimization.WarmupPolyDecay) and schedule.total_steps == 100
    batch = _different_sizes(examples)
    raw = tf.io.parse_example([e.SerializeToString() for e in batch], tft_output.raw_feature_spec())
    transformed = tft_output.transform_features_layer()(raw)
    images, labels = transformed[features.IMAGE], transformed[features.LABEL]
    scores = revived.evaluate(images, labels, verbose=0, return_dict=True)
    assert set(scores) == {"loss", "mean_iou"}, scores
    # The Keras model's masks at each image's own size are the serving signature's, pixel for pixel.
    # Eager Keras against the SavedModel's graph: equal but where two classes nearly tie.
    logits = revived(images, training=False)
    ours = export.to_original_resolution(
        logits, transformed[features.ORIGINAL_HEIGHT], transformed[features.ORIGINAL_WIDTH],
        with_probabilities=True,
    )  # fmt: skip
    served = loaded.signatures[signatures.SERVING_DEFAULT](
        images=tf.constant([feature(e, features.IMAGE_KEY)[0] for e in batch])
    )
    reference.assert_same_masks_but_near_ties(
        served["class_ids"], ours["class_ids"], ours[signatures.PROBABILITIES]
    )
    assert len(np.unique(served["class_ids"].numpy())) > 1, "masks of one class would prove little"


def test_a_500x375_response_fits_grpc_default_limit():
    logits = tf.zeros((1, 512, 512, VOC_SPEC.num_classes))
    out = export.to_original_resolution(logits, tf.constant([375]), tf.constant([500]))
    proto = tf.make_tensor_proto(out["class_ids"])
    assert len(proto.SerializeToString()) < 4 * 1024 * 1024 // 10


# What real clients send: other formats, the PNG masks, hostile headers. The signature alone, so
# what holds here holds for the real TF Serving too.


def test_the_records_jpegs_decode_and_measure_as_before(analyzed):
    # Training's Transform reads the records' JPEGs through decode_image and declared_shape now:
    # the same pixels and sizes as decode_jpeg and extract_jpeg_shape, which it used before.
    examples_uri, _ = analyzed
    for example in read_examples(examples_uri, features.TRAIN_SPLIT)[:8]:
        jpeg = tf.constant(feature(example, features.IMAGE_KEY)[0])
        np.testing.assert_array_equal(
            preprocessing.decode_image(jpeg).numpy(), tf.io.decode_jpeg(jpeg, channels=3).numpy()
        )
        assert preprocessing.declared_shape(jpeg).numpy().tolist() == [
            feature(example, features.HEIGHT_KEY)[0],
            feature(example, features.WIDTH_KEY)[0],
        ]


def test_png_bmp_and_gif_of_the_same_pixels_get_the_same_masks(exported):
    _, _, loaded, examples, _ = exported
    serve = loaded.signatures[signatures.SERVING_DEFAULT]
    batch = [feature(e, features.IMAGE_KEY)[0] for e in _different_sizes(examples, 2)]
    pixels = [tf.io.decode_jpeg(jpeg, channels=3).numpy() for jpeg in batch]
    by_jpeg = serve(images=tf.constant(batch))
    # Lossless formats of the JPEG's decoded pixels, in one batch with a JPEG: the JPEG's masks.
    lossless = [encode(pixels[0], "PNG"), encode(pixels[1], "BMP")]
    by_lossless = serve(images=tf.constant(lossless))
    mixed = serve(images=tf.constant([lossless[0], batch[1]]))
    for name in (signatures.CLASS_IDS, signatures.HEIGHT, signatures.WIDTH):
        np.testing.assert_array_equal(by_lossless[name].numpy(), by_jpeg[name].numpy(), err_msg=name)
        np.testing.assert_array_equal(mixed[name].numpy(), by_jpeg[name].numpy(), err_msg=name)
    # GIF holds 256 colours: the same 256-colour pixels as a PNG (RGBA, grey too) and a GIF.
    few = np.asarray(Image.fromarray(pixels[0]).quantize(256).convert("RGB"))
    gif, png = encode(few, "GIF"), encode(few, "PNG")
    rgba = encode(np.dstack([few, np.full(few.shape[:2], 255, np.uint8)]), "PNG")
    assert tf.io.decode_image(gif, expand_animations=False).numpy().tolist() == few.tolist()
    by_gif, by_png = serve(images=tf.constant([gif, rgba])), serve(images=tf.constant([png, png]))
    np.testing.assert_array_equal(by_gif[signatures.CLASS_IDS].numpy(), by_png[signatures.CLASS_IDS].numpy())
    assert by_gif[signatures.HEIGHT].numpy().tolist() == [few.shape[0]] * 2


def test_png_masks_decode_to_the_class_ids(exported):
    _, _, loaded, examples, _ = exported
    jpegs = tf.constant([feature(e, features.IMAGE_KEY)[0] for e in _different_sizes(examples)])
    out = loaded.signatures[signatures.SERVING_DEFAULT](images=jpegs)
    png_only = loaded.signatures[signatures.SERVING_PNG](images=jpegs)
    assert signatures.CLASS_IDS_PNG not in out, "no PNG encode by default"
    assert set(png_only) == {signatures.CLASS_IDS_PNG, signatures.HEIGHT, signatures.WIDTH}
    pngs = png_only[signatures.CLASS_IDS_PNG].numpy()
    for name in (signatures.HEIGHT, signatures.WIDTH):
        np.testing.assert_array_equal(png_only[name].numpy(), out[name].numpy())
    ids = out[signatures.CLASS_IDS].numpy()
    sizes = zip(out[signatures.HEIGHT].numpy(), out[signatures.WIDTH].numpy(), strict=True)
    for i, (png, (h, w)) in enumerate(zip(pngs, sizes, strict=True)):
        with Image.open(io.BytesIO(png)) as decoded:  # an independent decoder: PIL
            assert decoded.mode == "L" and decoded.size == (w, h)
            np.testing.assert_array_equal(np.asarray(decoded), ids[i, :h, :w])


def test_an_image_declaring_30000x30000_is_refused_before_decoding(exported):
    _, _, loaded, examples, path = exported
    good = feature(examples[0], features.IMAGE_KEY)[0]
    small = {fmt: encode(np.zeros((8, 8, 3), np.uint8), fmt) for fmt in ("PNG", "JPEG")}
    bombs = [declaring(data, 30000, 30000) for data in small.values()]
    for bomb in bombs:
        assert len(bomb) < 1000 and preprocessing.declared_shape(bomb).numpy().tolist() == [30000, 30000]
    serve = loaded.signatures[signatures.SERVING_DEFAULT]
    reason = (
        "images[1] declares 30000x30000 pixels (900000000), "
        f"above the limit of {TrainerConfig.max_image_pixels} (trainer.max_image_pixels)"
    )
    for bomb in bombs:
        with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(reason)):
            serve(images=tf.constant([good, bomb]))
        assert serve(images=tf.constant([good]))[signatures.HEIGHT].numpy().tolist() == [
            feature(examples[0], features.HEIGHT_KEY)[0]
        ]
    # TF Serving's own loader (a v1 session over the SignatureDef) refuses them the same way.
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        signature = tf.compat.v1.saved_model.loader.load(session, ["serve"], path).signature_def[
            signatures.SERVING_DEFAULT
        ]
        images, class_ids = (
            signature.inputs[signatures.IMAGES].name,
            signature.outputs[signatures.CLASS_IDS].name,
        )
        for bomb in bombs:
            with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(reason)):
                session.run(class_ids, feed_dict={images: np.array([good, bomb], dtype=object)})
        assert session.run(class_ids, feed_dict={images: np.array([good], dtype=object)}).shape[0] == 1


def test_transform_features_refuses_an_example_declaring_12000x12000(exported):
    # A JPEG under 1 KB, yet the Transform graph would decode it to 12000x12000 (2 GB).
    _, _, loaded, examples, _ = exported
    example = tf.train.Example.FromString(examples[0].SerializeToString())
    bomb = declaring(encode(np.zeros((8, 8, 3), np.uint8), "JPEG"), 12000, 12000)
    example.features.feature[features.IMAGE_KEY].bytes_list.value[:] = [bomb]
    serialized = example.SerializeToString()
    assert len(bomb) < 1000
    reason = (
        "examples[0] declares 12000x12000 pixels (144000000), "
        f"above the limit of {TrainerConfig.max_image_pixels} (trainer.max_image_pixels)"
    )
    transform = loaded.signatures[signatures.TRANSFORM_FEATURES]
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(reason)):
        transform(examples=tf.constant([serialized]))
    good = transform(examples=tf.constant([examples[0].SerializeToString()]))
    assert good[features.ORIGINAL_HEIGHT].numpy().ravel().tolist() == feature(
        examples[0], features.HEIGHT_KEY
    )


def test_a_batch_of_images_each_under_the_limit_is_refused_above_the_batch_budget(exported):
    # 5 JPEGs under 1 KB, each declaring 5000x5000 (the 25 MP limit, allowed alone): 125 MP in all.
    _, _, loaded, examples, _ = exported
    bomb = declaring(encode(np.zeros((8, 8, 3), np.uint8), "JPEG"), 5000, 5000)
    assert len(bomb) < 1000
    reason = (
        "the batch declares 125000000 pixels in 5 images, above the limit of "
        f"{TrainerConfig.max_batch_pixels} (trainer.max_batch_pixels)"
    )
    serve = loaded.signatures[signatures.SERVING_DEFAULT]
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(reason)):
        serve(images=tf.constant([bomb] * 5))
    example = tf.train.Example.FromString(examples[0].SerializeToString())
    example.features.feature[features.IMAGE_KEY].bytes_list.value[:] = [bomb]
    transform = loaded.signatures[signatures.TRANSFORM_FEATURES]
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(reason)):
        transform(examples=tf.constant([example.SerializeToString()] * 5))
    good, height = feature(examples[0], features.IMAGE_KEY)[0], feature(examples[0], features.HEIGHT_KEY)[0]
    assert serve(images=tf.constant([good] * 5))[signatures.HEIGHT].numpy().tolist() == [height] * 5


def test_the_batch_budget_is_inclusive_and_a_bad_image_is_named_before_the_batch():
    png = encode(np.zeros((20, 30, 3), np.uint8), "PNG")  # 600 pixels
    graph = tf.function(export.check_declared_sizes, reduce_retracing=True)  # as in the signature

    for check in (export.check_declared_sizes, graph):
        assert check(tf.constant([png] * 2), 600, max_batch_pixels=1200).shape == (2,)
        with pytest.raises(tf.errors.InvalidArgumentError) as e:
            check(tf.constant([png] * 3), 600, max_batch_pixels=1200)
        assert "the batch declares 1800 pixels in 3 images, above the limit of 1200 " in e.value.message
        # The batch is over budget too, but the image over its own limit is the reason given.
        with pytest.raises(tf.errors.InvalidArgumentError) as e:
            check(tf.constant([png, png, declaring(png, 30, 30)]), 600, max_batch_pixels=1200)
        assert "images[2] declares 30x30 pixels (900), above the limit of 600 " in e.value.message
        assert "the batch" not in e.value.message


def test_sides_whose_product_overflows_int64_are_refused():
    # 4294967295 x 4294967295 wraps to a negative int64: a product check would let it through.
    png = declaring(encode(np.zeros((2, 3, 3), np.uint8), "PNG"), 2**32 - 1, 2**32 - 1)
    assert preprocessing.declared_shape(png).numpy().tolist() == [2**32 - 1, 2**32 - 1]
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=re.escape("images[0] declares 4294967295x4294967295")
    ):
        export.check_declared_sizes(tf.constant([png]), 25_000_000)


def test_a_gif_gets_masks_of_its_decoded_size_not_its_logical_screen(exported):
    # TF decodes a GIF's frames at their own size: a screen of 400x300 over a 30x40 frame.
    _, _, loaded, _, _ = exported
    gif = bytearray(encode(np.zeros((30, 40), np.uint8), "GIF"))
    gif[6:10] = (400).to_bytes(2, "little") + (300).to_bytes(2, "little")  # screen width, height
    gif = bytes(gif)
    assert preprocessing.declared_shape(gif).numpy().tolist() == [300, 400]
    assert preprocessing.decode_image(tf.constant(gif)).shape == (30, 40, 3)
    out = loaded.signatures[signatures.SERVING_DEFAULT](images=tf.constant([gif]))
    assert (out[signatures.HEIGHT].numpy().tolist(), out[signatures.WIDTH].numpy().tolist()) == ([30], [40])
    assert out[signatures.CLASS_IDS].shape == (1, 30, 40)


def test_the_header_check_names_the_first_bad_image_and_its_fault():
    png = encode(np.zeros((20, 30, 3), np.uint8), "PNG")

    def refusal(images, max_pixels=600):
        with pytest.raises(tf.errors.InvalidArgumentError) as e:
            export.check_declared_sizes(tf.constant(images), max_pixels)
        return e.value.message

    assert export.check_declared_sizes(tf.constant([png]), 600).numpy().tolist() == [png]
    tiny = encode(np.zeros((2, 3, 3), np.uint8), "BMP")
    assert "images[1] declares 30x20 pixels (600), above the limit of 599" in refusal([tiny, png], 599)
    assert "images[1] (5 bytes) is not a JPEG, PNG, GIF or BMP image" in refusal([png, b"hello", b"x"])
    assert "images[0] declares 0x0 pixels: an empty image" in refusal([b"GIF89a"])
    assert export.check_declared_sizes(tf.constant([], tf.string), 1).shape == (0,)


def test_the_pixel_limit_is_a_checked_config_value():
    assert export.DEFAULT_MAX_IMAGE_PIXELS == TrainerConfig().max_image_pixels == 25_000_000
    assert export.DEFAULT_MAX_BATCH_PIXELS == TrainerConfig().max_batch_pixels == 100_000_000
    with pytest.raises(
        ConfigError, match=re.escape("max_image_pixels=0 cannot work: it must be a number >= 1")
    ):
        TrainerConfig(max_image_pixels=0)


def test_masks_may_differ_only_where_two_classes_nearly_tie():
    probabilities = np.array([[[0.5, 0.49995, 0.00005], [0.7, 0.2, 0.1]]], np.float32)
    expected = probabilities.argmax(-1)
    reference.assert_same_masks_but_near_ties(expected, expected, probabilities)
    reference.assert_same_masks_but_near_ties(np.array([[1, 0]]), expected, probabilities)
    with pytest.raises(AssertionError, match="1 pixels differ; the widest by 5.00e-01"):
        reference.assert_same_masks_but_near_ties(np.array([[0, 1]]), expected, probabilities)
    with pytest.raises(AssertionError, match="1 pixels differ"):
        reference.assert_same_masks_but_near_ties(np.array([[2, 0]]), expected, probabilities)
