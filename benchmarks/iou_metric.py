"""Evaluation: our per-class IoU metric vs TFMA's ``SemanticSegmentationConfusionMatrix``.

Both run on identical inputs, the way the Evaluator runs them: per example, the ground truth is
decoded from its palette PNG and compared with the predicted class ids (500x375, VOC's size).
Ours (``evaluation.tfma_metrics``) reduces each pair to a 21x21 confusion matrix with one
``bincount`` in its preprocessor, then the combiner adds matrices; TFMA's decodes in its
preprocessor and compares full images four times per class in its combiner. The Evaluator
combines each example once per slice it falls in (overall, its source and each class present,
about 4 on VOC), so the benchmark times one slice and the Evaluator's fan-out. The per-class
TP/FP/FN must be identical, or the benchmark fails.

    python -m benchmarks.iou_metric --num-images 100
"""

import time

import numpy as np
from tensorflow_model_analysis.metrics import metric_types
from tensorflow_model_analysis.metrics import semantic_segmentation_confusion_matrix_metrics as tfma_seg
from tensorflow_model_analysis.metrics.preprocessors import image_preprocessors

from benchmarks import results_io
from core import features
from core.dataset_spec import VOC_SPEC
from evaluation import tfma_metrics
from transform import palette

HEIGHT, WIDTH = 375, 500
KEY = metric_types.MetricKey(name="cm")


def make_pairs(count: int, seed: int = 0) -> list:
    """(extracts, truth, prediction): masks of a few boxes with void borders; 15% of pixels mispredicted."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(count):
        truth = np.zeros((HEIGHT, WIDTH), np.uint8)
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, HEIGHT - 60), rng.integers(0, WIDTH - 60)
            h, w = rng.integers(40, 200), rng.integers(40, 250)
            truth[y : y + h, x : x + w] = features.IGNORE_LABEL
            truth[y + 3 : y + h - 3, x + 3 : x + w - 3] = rng.integers(1, VOC_SPEC.num_classes)
        predicted = truth.copy()
        predicted[predicted == features.IGNORE_LABEL] = 0
        noise = rng.random(truth.shape) < 0.15
        predicted[noise] = rng.integers(0, VOC_SPEC.num_classes, noise.sum())
        extracts = {
            "features": {features.MASK_KEY: np.array([palette.encode_palette_png(truth)], dtype=object)},
            "predictions": {"class_ids": predicted, "height": np.int64(HEIGHT), "width": np.int64(WIDTH)},
        }
        pairs.append(extracts)
    return pairs


def ours():
    preprocessor = tfma_metrics._ImageConfusion(VOC_SPEC.num_classes, features.IGNORE_LABEL)
    combiner = tfma_metrics._SumMatrices(KEY, VOC_SPEC.num_classes)
    return preprocessor, combiner


def tfmas():
    preprocessor = image_preprocessors.DecodeImagePreprocessor(
        ground_truth_key=features.MASK_KEY, prediction_key="class_ids", decode_prediction=False
    )
    combiner = tfma_seg._SemanticSegmentationConfusionMatrixCombiner(
        KEY, class_ids=list(range(VOC_SPEC.num_classes)), ignore_ground_truth_id=features.IGNORE_LABEL
    )
    return preprocessor, combiner


def run(contender, pairs, slices: int) -> tuple:
    """(preprocess seconds, combine seconds, output): preprocess once, combine ``slices`` times."""
    preprocessor, combiner = contender()
    start = time.perf_counter()
    inputs = [next(iter(preprocessor.process(extracts))) for extracts in pairs]
    preprocess = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(slices):
        accumulator = combiner.create_accumulator()
        for element in inputs:
            accumulator = combiner.add_input(accumulator, element)
    combine = time.perf_counter() - start
    return preprocess, combine, combiner.extract_output(accumulator)


def per_class(output) -> np.ndarray:
    """``[3, N]`` TP, FP, FN from either contender's output."""
    if KEY in output and isinstance(output[KEY], np.ndarray):
        matrix = output[KEY]
        tp = np.diag(matrix)
        return np.stack([tp, matrix.sum(0) - tp, matrix.sum(1) - tp])
    counts = np.zeros((3, VOC_SPEC.num_classes), np.int64)
    for key, m in output.items():
        counts[:, key.sub_key.class_id] = (m.tp, m.fp, m.fn)
    return counts


def main():
    p = results_io.parser(__doc__, "iou_metric")
    p.add_argument("--num-images", type=int, default=100)
    p.add_argument("--slices", type=int, default=4, help="slices an example falls in (VOC: about 4)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    pairs = make_pairs(args.num_images)
    best = {}
    outputs = {}
    for _ in range(args.rounds):  # interleaved, best of rounds: noise hits both alike
        for name, contender in (("ours", ours), ("tfma", tfmas)):
            for slices in (1, args.slices):
                pre, comb, out = run(contender, pairs, slices)
                key = (name, slices)
                best[key] = min(best.get(key, (float("inf"),)), (pre + comb, pre, comb))
                outputs[name] = out
    identical = bool(np.array_equal(per_class(outputs["ours"]), per_class(outputs["tfma"])))
    if not identical:
        raise SystemExit("the two metrics disagree: per-class TP/FP/FN differ")
    per_100 = 100 / args.num_images

    def figures(name, slices):
        total, pre, comb = best[(name, slices)]
        return {"seconds_per_100": total * per_100, "preprocess_s_per_100": pre * per_100,
                "combine_s_per_100": comb * per_100}  # fmt: skip

    result = results_io.save(
        args.out, "iou_metric", num_images=args.num_images, image_size=[HEIGHT, WIDTH], identical=identical,
        one_slice={"ours": figures("ours", 1), "tfma": figures("tfma", 1)},
        evaluator_slices=args.slices,
        with_slices={"ours": figures("ours", args.slices), "tfma": figures("tfma", args.slices)},
        speedup_one_slice=best[("tfma", 1)][0] / best[("ours", 1)][0],
        speedup_with_slices=best[("tfma", args.slices)][0] / best[("ours", args.slices)][0],
    )  # fmt: skip
    print(
        f"iou_metric: ours {result['one_slice']['ours']['seconds_per_100']:.2f} s vs TFMA "
        f"{result['one_slice']['tfma']['seconds_per_100']:.2f} s per 100 images (one slice: "
        f"{result['speedup_one_slice']:.1f}x; {args.slices} slices: {result['speedup_with_slices']:.1f}x), "
        "identical per-class TP/FP/FN"
    )


if __name__ == "__main__":
    main()
