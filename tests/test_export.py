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
    assert set(png_only) == {signatures.CLASS_IDS_PNG, signatures.HEIGHT, signatures.WIDTH, signatures.ERROR}
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
    height, width = feature(examples[0], features.HEIGHT_KEY)[0], feature(examples[0], features.WIDTH_KEY)[0]
    small = {fmt: encode(np.zeros((8, 8, 3), np.uint8), fmt) for fmt in ("PNG", "JPEG")}
    bombs = [declaring(data, 30000, 30000) for data in small.values()]
    for bomb in bombs:
        assert len(bomb) < 1000 and preprocessing.declared_shape(bomb).numpy().tolist() == [30000, 30000]
    serve = loaded.signatures[signatures.SERVING_DEFAULT]
    reason = (
        "declares 30000x30000 pixels (900000000), "
        f"above the limit of {TrainerConfig.max_image_pixels} (trainer.max_image_pixels)"
    ).encode()
    alone = serve(images=tf.constant([good]))
    for bomb in bombs:
        out = serve(images=tf.constant([good, bomb]))
        assert out[signatures.ERROR].numpy().tolist() == [b"", reason]
        assert out[signatures.HEIGHT].numpy().tolist() == [height, 0]
        assert out[signatures.WIDTH].numpy().tolist() == [width, 0]
        np.testing.assert_array_equal(out[signatures.CLASS_IDS][:1], alone[signatures.CLASS_IDS])
    # TF Serving's own loader (a v1 session over the SignatureDef) answers them the same way.
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        signature = tf.compat.v1.saved_model.loader.load(session, ["serve"], path).signature_def[
            signatures.SERVING_DEFAULT
        ]
        images, class_ids, error = (
            signature.inputs[signatures.IMAGES].name,
            signature.outputs[signatures.CLASS_IDS].name,
            signature.outputs[signatures.ERROR].name,
        )
        for bomb in bombs:
            ids, errors = session.run(
                [class_ids, error], feed_dict={images: np.array([good, bomb], dtype=object)}
            )
            assert errors.tolist() == [b"", reason]
            np.testing.assert_array_equal(ids[:1], alone[signatures.CLASS_IDS])
        # A body cut short passes the header check and fails to decode: tf.data's ignore_errors
        # catches that per row in a session too.
        cut = good[: len(good) // 2]
        ids, errors = session.run([class_ids, error], feed_dict={images: np.array([good, cut], dtype=object)})
        assert errors[0] == b"" and errors[1]
        np.testing.assert_array_equal(ids[:1], alone[signatures.CLASS_IDS])


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
    # transform_features (TFMA's, on the pipeline's own examples) refuses the batch: 5 JPEGs
    # under 1 KB, each declaring 5000x5000 (the 25 MP limit, allowed alone), 125 MP in all.
    net, tft_output, loaded, examples, _ = exported
    bomb = declaring(encode(np.zeros((8, 8, 3), np.uint8), "JPEG"), 5000, 5000)
    assert len(bomb) < 1000
    example = tf.train.Example.FromString(examples[0].SerializeToString())
    example.features.feature[features.IMAGE_KEY].bytes_list.value[:] = [bomb]
    reason = (
        "the batch declares 125000000 pixels in 5 images, above the limit of "
        f"{TrainerConfig.max_batch_pixels} (trainer.max_batch_pixels)"
    )
    transform = loaded.signatures[signatures.TRANSFORM_FEATURES]
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(reason)):
        transform(examples=tf.constant([example.SerializeToString()] * 5))
    # The image signatures serve what fits and refuse the rest, row by row: here with limits of a
    # few hundred pixels (the same graph as the export's, traced in this process), as 125 MP of
    # decoded JPEGs would take seconds and GBs. (Those 5 bombs decode: libjpeg fills the missing
    # data with grey, so the first four would be served.)
    serve = export.make_signatures(net, tft_output, max_image_pixels=600, max_batch_pixels=1500)[
        signatures.SERVING_DEFAULT
    ]
    png, small = (encode(np.full((h, 30, 3), 90, np.uint8), "PNG") for h in (20, 10))  # 600, 300 pixels
    out = serve(tf.constant([png, png, png, small]))
    assert [e.decode() for e in out[signatures.ERROR].numpy()] == [
        "",
        "",
        "declares 30x20 pixels (600): with the 1200 of the batch's images before it, above the limit of "
        "1500 (trainer.max_batch_pixels)",
        "",
    ]
    assert out[signatures.HEIGHT].numpy().tolist() == [20, 20, 0, 10]
    good, height = feature(examples[0], features.IMAGE_KEY)[0], feature(examples[0], features.HEIGHT_KEY)[0]
    default = loaded.signatures[signatures.SERVING_DEFAULT]
    assert default(images=tf.constant([good] * 5))[signatures.HEIGHT].numpy().tolist() == [height] * 5


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


# Batch-safe signatures: a refused image is its own row's problem (issue 25). What TF Serving's
# batching merges into one call: the rows of several clients.


def test_class_ids_a_map_at_a_time_are_the_argmax_of_all_maps_pixel_for_pixel():
    # What serving_default did before (one resize of all N maps, tf.argmax), against class_ids_at
    # a map at a time (a limit of 0 bytes) and at once, eagerly and in a graph: logits with ties
    # (rounded to halves; every class equal), NaN, +-inf and the lowest float32, where tf.argmax
    # has its own rules (NaN never wins, ties go to the lower id, a pixel no class beats is 0).
    rng = np.random.default_rng(25)
    graph = tf.function(export.class_ids_at, reduce_retracing=True)
    for case in range(12):
        classes, height, width = int(rng.integers(2, 24)), int(rng.integers(1, 12)), int(rng.integers(1, 12))
        logits = np.round(rng.normal(size=(height, width, classes)) * 2).astype(np.float32) / 2
        if case % 3 == 1:
            draw = rng.random(logits.shape)
            logits[draw < 0.1] = np.nan
            logits[(draw >= 0.1) & (draw < 0.15)] = np.inf
            logits[(draw >= 0.15) & (draw < 0.2)] = -np.inf
            logits[(draw >= 0.2) & (draw < 0.25)] = np.finfo(np.float32).min
        elif case % 3 == 2:
            logits[...] = logits[..., :1]
        size = tf.constant([int(rng.integers(1, 40)), int(rng.integers(1, 40))])
        before = tf.cast(tf.argmax(tf.image.resize(logits, size, method="bilinear"), -1), tf.uint8).numpy()
        for limit in (0, 1 << 40):
            for class_ids_at in (export.class_ids_at, graph):
                got = class_ids_at(tf.constant(logits), size, limit).numpy()
                np.testing.assert_array_equal(got, before, err_msg=f"case {case}, limit {limit}")
    # tf.argmax starts from (0, the lowest float32): neither NaN nor that lowest value wins then.
    for pixel in ([np.nan, np.nan, np.nan], [np.nan, np.finfo(np.float32).min]):
        logits = tf.constant([[pixel]], tf.float32)
        assert tf.argmax(tf.image.resize(logits, [3, 3]), -1).numpy().tolist() == [[0] * 3] * 3
        assert export.class_ids_at(logits, tf.constant([3, 3]), 0).numpy().tolist() == [[0] * 3] * 3


def test_every_cut_short_or_damaged_image_is_refused_on_its_own_row():
    # decode_image recovers none of these (each fails it alone): the signatures find them in the
    # graph, without failing the call, and name their format; a good image of each is served.
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    for fmt in ("JPEG", "PNG", "GIF", "BMP"):
        whole = encode(pixels, fmt)
        bad = [whole[: len(whole) // 2], whole[:-20], whole[:40]]
        if fmt in ("JPEG", "PNG"):  # a BMP's body is any bytes; a GIF's garbage decodes as noise
            bad.append(whole[:40] + bytes(rng.integers(0, 256, len(whole) - 40, dtype=np.uint8)))
        for data in bad:
            with pytest.raises(tf.errors.InvalidArgumentError):
                preprocessing.decode_image(tf.constant(data))
        reasons = export.refused_images(tf.constant([whole, *bad, whole]), 10_000, 100_000).numpy()
        assert reasons.tolist() == [b""] + [
            f"({len(data)} bytes) does not decode as {fmt}: its data is damaged or cut short".encode()
            for data in bad
        ] + [b""], fmt


def test_the_batch_budget_takes_images_in_order_and_refuses_only_those_that_do_not_fit():
    png = encode(np.zeros((20, 30, 3), np.uint8), "PNG")  # 600 pixels
    small = encode(np.zeros((10, 30, 3), np.uint8), "PNG")  # 300
    batch = [png, png, declaring(png, 30, 30), png, small, b"hello", png]
    for refused_images in (export.refused_images, tf.function(export.refused_images)):
        reasons = refused_images(tf.constant(batch), 600, 1500).numpy().tolist()
        over = "declares 30x20 pixels (600): with the {} of the batch's images before it, above the limit of"
        assert [r.decode() for r in reasons] == [
            "",
            "",
            "declares 30x30 pixels (900), above the limit of 600 (trainer.max_image_pixels)",
            over.format(1200) + " 1500 (trainer.max_batch_pixels)",
            "",  # 1200 + 300: the budget is inclusive, and a smaller image after a refused one fits
            "(5 bytes) is not a JPEG, PNG, GIF or BMP image",
            over.format(1500) + " 1500 (trainer.max_batch_pixels)",
        ]
        assert refused_images(tf.constant([], tf.string), 600, 1500).shape == (0,)


def test_one_merged_call_serves_the_good_images_as_alone_and_flags_the_bad(exported):
    """Good images of two clients and bad ones of others in one call, as TF Serving's batching
    merges them: each good row is what it is alone; each bad row has its reason, empty masks, and
    nothing of it decoded."""
    _, _, loaded, examples, _ = exported
    good = [feature(e, features.IMAGE_KEY)[0] for e in _different_sizes(examples, 2)]
    png = encode(tf.io.decode_jpeg(good[0]).numpy(), "PNG")
    bad = {
        "oversized header": declaring(encode(np.zeros((8, 8, 3), np.uint8), "PNG"), 30000, 30000),
        "not an image": b"this is not an image",
        "JPEG cut short": good[1][: len(good[1]) // 2],
        "PNG cut short": png[:-100],
    }
    reasons = [
        "declares 30000x30000 pixels (900000000), above the limit of 25000000 (trainer.max_image_pixels)",
        "(20 bytes) is not a JPEG, PNG, GIF or BMP image",
        f"({len(good[1]) // 2} bytes) does not decode as JPEG: its data is damaged or cut short",
        f"({len(png) - 100} bytes) does not decode as PNG: its data is damaged or cut short",
    ]
    merged = [good[0], *bad.values(), good[1]]
    for name in (signatures.SERVING_DEFAULT, signatures.SERVING_PNG):
        serve = loaded.signatures[name]
        out = {key: value.numpy() for key, value in serve(images=tf.constant(merged)).items()}
        assert [e.decode() for e in out[signatures.ERROR]] == ["", *reasons, ""], name
        assert (
            out[signatures.HEIGHT].tolist()[1:5] == [0] * 4 and out[signatures.WIDTH].tolist()[1:5] == [0] * 4
        )
        for row, image in ((0, good[0]), (5, good[1])):
            alone = {key: value.numpy() for key, value in serve(images=tf.constant([image])).items()}
            assert alone[signatures.ERROR].tolist() == [b""]
            for key in (signatures.HEIGHT, signatures.WIDTH, signatures.CLASS_IDS_PNG):
                if key in out:
                    assert out[key][row] == alone[key][0], (name, key)
        if name == signatures.SERVING_DEFAULT:
            masks = signatures.crop_masks(out)
            for row, image in ((0, good[0]), (5, good[1])):
                [alone] = signatures.crop_masks(serve(images=tf.constant([image])))
                np.testing.assert_array_equal(masks[row], alone)
            assert (out[signatures.CLASS_IDS][1:5] == 255).all()
            assert [mask.shape for mask in masks[1:5]] == [(0, 0)] * 4
        else:
            assert out[signatures.CLASS_IDS_PNG][1:5].tolist() == [b""] * 4
    # The front ends name each refused image by its index in its own client's request.
    assert signatures.refusals({signatures.ERROR: out[signatures.ERROR][1:3]}) == [
        f"images[0] {reasons[0]}",
        f"images[1] {reasons[1]}",
    ]
