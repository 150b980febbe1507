"""Serving validation: a candidate is loaded and run as TF Serving would, before it is pushed.

What TFX's InfraValidator does with a ``tensorflow/serving`` container, without needing one (it
cannot run on Vertex AI Pipelines, which has neither Docker nor a Kubernetes API for it): the
candidate is loaded in a child process the way TF Serving loads a version (``bundle_check.py``
says how, and what that cannot catch), the warm-up records replayed, then the eval examples sent
one per request through the ``serving_examples`` signature by name. The child runs under a
memory limit while it serves (its resident set, polled, and its own peak after) and a time
limit for all of it, as a serving pod; it dies with its parent.

Refused, with the reason: a model the loader cannot load or run (an op missing, a SignatureDef
that names a tensor the graph lacks, a resource that fails to initialise), one that outgrows
either limit, and one whose masks differ from those the Evaluator scored. TFMA scored the model
by ``tf.saved_model.load`` and its ``serving_examples``, in batches of ``evaluator.batch_size``:
the child does the same with the same examples once it has served them. A model that answers at
random (dropout left on, an unseeded random op in the graph) differs on most pixels. Two loaders
of one graph may still break a tie of two logits differently (Grappler rewrites a session's
graph and a function's separately; batches of 1 and of 8 may take different kernels), so
``max_mask_disagreement`` allows a fraction of the pixels (0.1% by default); on this project's
models on an AMD EPYC the two differed on 0 or 1 pixel of the eval images compared.

Recorded: load time, the warm-up's time, the p50 and p99 latency of one image per request after
the warm-up (of a few requests: p99 is their slowest), and the child's peak resident memory
while it served (its ``VmHWM``, which includes Python and the TensorFlow runtime, about
0.6 GB before any model: a Python serving process, not ``tensorflow_model_server``'s figure),
measured on the machine the pipeline runs on.
"""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from core.signatures import CLASS_IDS, ERROR, EXAMPLES, HEIGHT, SERVING_EXAMPLES, WIDTH, crop_masks

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bundle_check.py")
POLL_SECONDS = 0.05
# At most this much of the child's error goes into a refusal (the last of it).
ERROR_TAIL_CHARS = 600


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A validation's verdict and what it measured (zeros where it did not get that far)."""

    validated: bool
    reason: str = ""
    load_seconds: float = 0.0
    warmup_seconds: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    peak_memory_mb: float = 0.0
    num_requests: int = 0
    differing_pixels: int = 0
    pixels: int = 0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def validate(
    model_dir: str,
    examples: list,
    warmup_file: str = "",
    max_memory_mb: int = 4096,
    timeout_seconds: float = 600,
    max_mask_disagreement: float = 0.001,
    reference_batch_size: int = 1,
    log_file: str = "",
) -> Outcome:
    """Loads SavedModel ``model_dir`` as TF Serving does and sends it each of ``examples``
    (serialized raw tf.Examples) alone through ``serving_examples``, after replaying
    ``warmup_file`` (PredictionLogs; "" for none); compares the masks with the Evaluator's way
    of calling it, ``reference_batch_size`` examples a call. ``log_file``: where the child's
    output goes (a temporary file otherwise)."""
    if not examples:
        raise ValueError("serving validation needs at least one eval example to send")
    with tempfile.TemporaryDirectory(prefix="serving-validation-") as work:
        request = {
            "model_dir": model_dir,
            "warmup_file": warmup_file,
            "signature": SERVING_EXAMPLES,
            "input_key": EXAMPLES,
            "inputs_file": os.path.join(work, "inputs.tfrecord"),
            "outputs": [CLASS_IDS, HEIGHT, WIDTH, ERROR],
            "reference_batch_size": reference_batch_size,
            "served_file": os.path.join(work, "served.json"),
            "answers_file": os.path.join(work, "answers.npz"),
            "parent_pid": os.getpid(),
        }
        _write_records(request["inputs_file"], examples)
        request_file = os.path.join(work, "request.json")
        with open(request_file, "w") as f:
            json.dump(request, f)
        log_path = log_file or os.path.join(work, "child.log")
        watch = _Watch(request["served_file"], max_memory_mb, timeout_seconds)
        with open(log_path, "wb") as log:
            watch.run([sys.executable, "-I", CHILD, request_file], log)
        served = _read_json(request["served_file"])
        if watch.refusal:
            return Outcome(False, watch.refusal, peak_memory_mb=round(watch.peak_mb, 1))
        if watch.returncode != 0:
            return Outcome(False, _failure(watch.returncode, log_path, served is not None))
        with np.load(request["answers_file"]) as answers:
            refused = [
                (i, str(answers[f"served/{i}/{ERROR}"][0]))
                for i in range(len(examples))
                if f"served/{i}/{ERROR}" in answers and answers[f"served/{i}/{ERROR}"][0]
            ]
            if refused:
                i, why = refused[0]
                return Outcome(
                    False, f"it refused {len(refused)} of {len(examples)} eval images (#{i}: {why})"
                )
            served_masks = [_masks(answers, f"served/{i}/")[0] for i in range(len(examples))]
            reference = [
                mask
                for start in range(0, len(examples), reference_batch_size)
                for mask in _masks(answers, f"reference/{start}/")
            ]
    differing, pixels = _differing_pixels(served_masks, reference)
    latencies = np.asarray(served["latency_seconds"]) * 1000
    measured = dict(
        load_seconds=round(served["load_seconds"], 3),
        warmup_seconds=round(sum(served["warmup_seconds"]), 3),
        latency_p50_ms=round(float(np.percentile(latencies, 50)), 2),
        latency_p99_ms=round(float(np.percentile(latencies, 99)), 2),
        peak_memory_mb=round(max(served["peak_rss_mb"], watch.peak_mb), 1),
        num_requests=len(served["warmup_seconds"]) + len(latencies),
        differing_pixels=differing,
        pixels=pixels,
    )
    if measured["peak_memory_mb"] > max_memory_mb:
        # Between two polls: the child's own peak is the measure.
        return Outcome(False, _over_memory(max_memory_mb, measured["peak_memory_mb"]), **measured)
    if differing > max_mask_disagreement * pixels:
        reason = (
            f"its masks differ from those the Evaluator scored on {differing} of {pixels} pixels "
            f"({differing / pixels:.2%}) of {len(examples)} eval images; at most "
            f"{max_mask_disagreement:.2%} may (infra_validator.max_mask_disagreement)"
        )
        return Outcome(False, reason, **measured)
    return Outcome(True, **measured)


class _Watch:
    """Runs the child and kills it once its resident memory passes ``max_memory_mb`` before it
    has served (``served_file`` written), or once it has run ``timeout_seconds``; ``refusal``
    says which; killed too when anything goes wrong here. The child itself asks the kernel for
    SIGKILL when this process ends (``bundle_check.die_with_parent``)."""

    def __init__(self, served_file: str, max_memory_mb: int, timeout_seconds: float):
        self.served_file, self.max_memory_mb = served_file, max_memory_mb
        self.timeout_seconds = timeout_seconds
        self.refusal, self.peak_mb, self.returncode = "", 0.0, None

    def run(self, command: list, log) -> None:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            started = time.monotonic()
            while child.poll() is None:
                if not os.path.exists(self.served_file):
                    self.peak_mb = max(self.peak_mb, _resident_mb(child.pid))
                    if self.peak_mb > self.max_memory_mb:
                        self.refusal = _over_memory(self.max_memory_mb, self.peak_mb)
                if time.monotonic() - started > self.timeout_seconds:
                    self.refusal = (
                        f"it did not load, serve and answer within {self.timeout_seconds:g} s "
                        "(infra_validator.timeout_seconds)"
                    )
                if self.refusal:
                    break
                time.sleep(POLL_SECONDS)
        finally:
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
            self.returncode = child.wait()


def _over_memory(limit_mb: int, peak_mb: float) -> str:
    return (
        f"it needed more than {limit_mb} MB of memory to load and serve "
        f"(infra_validator.max_memory_mb): {peak_mb:.0f} MB"
    )


def _failure(returncode: int, log_path: str, served: bool) -> str:
    """Why the child failed: its error, or the signal that killed it."""
    if returncode < 0:
        name = signal.Signals(-returncode).name
        cause = f"killed by {name}" + (" (the system's out-of-memory killer?)" if name == "SIGKILL" else "")
    else:
        cause = f"exit {returncode}: {_tail(log_path)}"
    if served:
        return f"it served, but tf.saved_model.load (the Evaluator's loader) failed on it ({cause})"
    return f"TF Serving's loader could not load or run it ({cause})"


def _read_json(path: str):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _masks(answers, prefix: str) -> list:
    return crop_masks({key: answers[prefix + key] for key in (CLASS_IDS, HEIGHT, WIDTH)})


def _resident_mb(pid: int) -> float:
    """A process's resident set in MB, from ``/proc`` (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _differing_pixels(served: list, reference: list) -> tuple:
    """``(pixels whose class differs, pixels)`` over the images; a mask of another size differs
    on every pixel of the larger of the two."""
    differing = pixels = 0
    for a, b in zip(served, reference, strict=True):
        if a.shape != b.shape:
            size = max(a.size, b.size)
            differing, pixels = differing + size, pixels + size
        else:
            differing, pixels = differing + int(np.count_nonzero(a != b)), pixels + a.size
    return differing, pixels


def _write_records(path: str, records: list) -> None:
    import tensorflow as tf

    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)


def _tail(log_path: str) -> str:
    """The child's error: the last line of its traceback, else the end of what it printed."""
    with open(log_path, "rb") as f:
        lines = f.read().decode("utf-8", "replace").strip().splitlines()
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception)\b", line)]
    text = errors[-1] if errors else " ".join(" ".join(lines).split())
    return text[-ERROR_TAIL_CHARS:]
