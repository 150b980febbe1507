"""The serving validator's child process: load a SavedModel as TF Serving does and replay requests.

Run as a script in Python's isolated mode (``python -I bundle_check.py REQUEST_JSON``), never
imported: it imports TensorFlow and nothing of this project, as TF Serving's server knows
nothing of it. It takes a version through the steps of TF Serving's ``LoadSavedModel``, with
TF's Python SavedModel loader (``tf.compat.v1.saved_model.loader.load``, which does in Python
what the C++ bundle loader does): the ``serve`` MetaGraphDef imported into a fresh graph, the
variables restored by its ``saver_def``, the asset files fed to their placeholders, the
init/main op run; then each request run by its signature's name through the SignatureDef's
tensor names, in a ``Session.run`` as the server's ``RunPredict`` does. None of this touches the
object graph that Keras and ``tf.saved_model.load`` revive, so a model whose SignatureDefs only
work through that revival is caught. Not caught: an op that the ``tensorflow`` wheel registers
but a ``tensorflow_model_server`` build lacks, and TF Serving's own session and batching options.

Two phases. Serving: load, replay the warm-up records (TF Serving's ``tf_serving_warmup_requests``
PredictionLogs, which the server replays before it marks a version available), then answer each
input alone (one untimed call first: a session's first run of a signature builds its executor,
as the warm-up does for ``serving_default``), timing each; then ``served_file`` is written (the
load time, the warm-up and request latencies, the peak RSS so far), which ends the memory limit
the parent enforces. Reference: the same inputs, in batches of the Evaluator's size, through
``tf.saved_model.load``'s signature, the way TFMA called it when it scored the model. Both
phases' outputs go to one ``.npz``, which the parent compares (``serving/validation.py``).
"""

import ctypes
import json
import os
import resource
import signal
import sys
import time

# prctl(2)'s PR_SET_PDEATHSIG.
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL from the kernel when the validating process ends (its orchestrator killed it), so
    that no child outlives it unwatched; if it has already ended, end now (Linux; elsewhere only
    the parent's time limit holds)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:
        sys.exit("the validating process is gone")


def _peak_rss_mb() -> float:
    """The process's peak resident set in MB: ``VmHWM``, which starts afresh at exec. Not
    ``ru_maxrss``, which Linux carries over fork and exec: it would read the parent's peak (the
    pipeline's process, gigabytes) in a child that never held it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run(session, signature_def, inputs: dict) -> dict:
    feed = {signature_def.inputs[key].name: value for key, value in inputs.items()}
    names = sorted(signature_def.outputs)
    values = session.run([signature_def.outputs[name].name for name in names], feed_dict=feed)
    return dict(zip(names, values, strict=True))


def _storable(array):
    """Strings (``error``) as text: an ``.npz`` holds object arrays only by pickling them."""
    import numpy as np

    return np.char.decode(array.astype(bytes), "utf-8") if array.dtype == object else array


def main(request_file: str) -> None:
    with open(request_file) as f:
        request = json.load(f)
    die_with_parent(request["parent_pid"])
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    inputs = list(tf.compat.v1.io.tf_record_iterator(request["inputs_file"]))
    input_key, signature, outputs = request["input_key"], request["signature"], request["outputs"]

    started = time.perf_counter()
    session = tf.compat.v1.Session(graph=tf.Graph())
    with session.graph.as_default():
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], request["model_dir"])
    load_seconds = time.perf_counter() - started
    signature_defs = meta_graph.signature_def

    warmup = []
    records = tf.compat.v1.io.tf_record_iterator(request["warmup_file"]) if request["warmup_file"] else []
    for record in records:
        predict = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
        begin = time.perf_counter()
        _run(
            session,
            signature_defs[predict.model_spec.signature_name],
            {key: tf.make_ndarray(proto) for key, proto in predict.inputs.items()},
        )
        warmup.append(time.perf_counter() - begin)

    answers, latencies = {}, []
    signature_def = signature_defs[signature]
    for i, value in enumerate(inputs):
        one = {input_key: np.array([value], dtype=object)}
        if i == 0:
            _run(session, signature_def, one)
        begin = time.perf_counter()
        out = _run(session, signature_def, one)
        latencies.append(time.perf_counter() - begin)
        answers.update({f"served/{i}/{name}": _storable(out[name]) for name in outputs if name in out})
    session.close()
    served = {
        "load_seconds": load_seconds,
        "warmup_seconds": warmup,
        "latency_seconds": latencies,
        "peak_rss_mb": _peak_rss_mb(),
    }
    with open(request["served_file"], "w") as f:
        json.dump(served, f)

    predict = tf.saved_model.load(request["model_dir"]).signatures[signature]
    size = request["reference_batch_size"]
    for start in range(0, len(inputs), size):
        out = predict(**{input_key: tf.constant(inputs[start : start + size])})
        answers.update(
            {f"reference/{start}/{name}": _storable(out[name].numpy()) for name in outputs if name in out}
        )
    np.savez(request["answers_file"], **answers)


if __name__ == "__main__":
    main(sys.argv[1])
