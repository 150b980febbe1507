"""Serving: latency and throughput through ``deeplab-tfx serve`` vs the in-process signature.

The same 500x375 JPEG (VOC's size) goes to the pushed model two ways, in one run: called
in-process through ``serving_default``, and through ``deeplab-tfx serve`` over gRPC on
127.0.0.1 with the official stub (a separate process, as in production), each with 1 and 8
concurrent clients. The difference is what serving costs: serialisation, gRPC, the request
checks and the thread hand-offs.

    python -m benchmarks.serving_latency [--model-base-path demo/pipeline/serving/deeplab]
"""

import io
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import tensorflow as tf
from PIL import Image

from benchmarks import fixtures, results_io
from serving import client, layout, server
from trainer.export import SERVING_DEFAULT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def voc_sized_jpeg(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:375, 0:500]
    image = np.stack([x * 255 // 500, y * 255 // 375, (x + y) % 256], -1).astype(np.uint8)
    image[100:250, 150:350] = rng.integers(0, 256, 3)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def run_calls(call, clients: int, requests: int) -> tuple:
    """``(latencies in s, wall s)`` of ``requests`` calls spread over ``clients`` threads."""
    latencies = []
    lock = threading.Lock()

    def worker(n):
        for _ in range(n):
            start = time.perf_counter()
            call()
            with lock:
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=worker, args=(requests // clients,)) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - start


def measure(paths: dict, clients: int, requests: int, rounds: int) -> dict:
    """p50/p99 latency (ms) and requests/s of each of ``paths`` (``{name: call}``).

    The paths take turns, ``requests // rounds`` calls each per round: on a shared machine, load
    comes and goes in bursts of seconds, and a path measured in one block would pay for a burst
    the others escaped.
    """
    latencies = {name: [] for name in paths}
    walls = dict.fromkeys(paths, 0.0)
    for _ in range(rounds):
        for name, call in paths.items():
            got, wall = run_calls(call, clients, requests // rounds)
            latencies[name] += got
            walls[name] += wall
    figures = {}
    for name in paths:
        ms = np.array(latencies[name]) * 1000
        figures[name] = {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                         "requests_per_s": len(ms) / walls[name]}  # fmt: skip
    return figures


def start_server(base: str, name: str) -> tuple:
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "serve", "--model-base-path", base, "--model-name", name,
         "--port", "0"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.time() + 180
    while time.time() < deadline:
        found = re.search(r"on 127\.0\.0\.1:(\d+) \(gRPC\)", open(log.name).read())
        if found:
            return proc, f"127.0.0.1:{found.group(1)}"
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise SystemExit(f"server did not start:\n{open(log.name).read()[-3000:]}")


def main():
    p = results_io.parser(__doc__, "serving_latency")
    p.add_argument(
        "--model-base-path",
        help="a pushed model's base path (e.g. demo/pipeline/serving/deeplab); default: the tiny "
        "config's model, built once under benchmarks/.work",
    )
    p.add_argument("--model-name", default="deeplab")
    p.add_argument("--requests", type=int, default=200, help="per path and concurrency level")
    p.add_argument("--rounds", type=int, default=5, help="turns the paths take, requests/rounds calls each")
    args = p.parse_args()
    args.model_base_path = args.model_base_path or fixtures.served_model()
    versions = layout.versions(args.model_base_path)
    if not versions:
        raise SystemExit(f"no pushed version under {args.model_base_path}")
    image = voc_sized_jpeg()
    signature = tf.saved_model.load(os.path.join(args.model_base_path, str(versions[-1]))).signatures[
        SERVING_DEFAULT
    ]
    images = tf.constant([image])

    def in_process():
        signature(images=images)["class_ids"].numpy()

    # The server's own request handling, in this process and without gRPC: the same request
    # through PredictionService.Predict, the answer parsed as the client parses it. What it
    # adds to in_process is the checks and proto conversions; what the server adds to it is
    # gRPC's transport and the hand-off between two processes.
    models = server.ModelVersions(args.model_name, args.model_base_path, warm=lambda servable: None)
    models.poll()
    service = server.PredictionService(server.Predictor({args.model_name: models}))
    request = client.GrpcClient("127.0.0.1:1", args.model_name).request([image])  # connects lazily: never

    def through_handler():
        response = service.Predict(request, None)
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    proc, address = start_server(args.model_base_path, args.model_name)
    try:
        stubs = threading.local()

        def through_server():
            if not hasattr(stubs, "client"):
                stubs.client = client.GrpcClient(address, args.model_name)
            stubs.client.predict([image])

        for call in (in_process, through_handler, through_server):  # warm up every path
            for _ in range(10):
                call()
        figures = {}
        for clients in (1, 8):
            paths = {f"in_process_{clients}": in_process, f"handler_{clients}": through_handler,
                     f"server_{clients}": through_server}  # fmt: skip
            figures.update(measure(paths, clients, args.requests, args.rounds))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    overhead = {
        f"{c}_clients": {
            "p50_overhead": figures[f"server_{c}"]["p50_ms"] / figures[f"in_process_{c}"]["p50_ms"] - 1,
            # Where the p50 difference goes, in ms: request handling, then gRPC and processes.
            "handler_ms": figures[f"handler_{c}"]["p50_ms"] - figures[f"in_process_{c}"]["p50_ms"],
            "transport_ms": figures[f"server_{c}"]["p50_ms"] - figures[f"handler_{c}"]["p50_ms"],
            "throughput_ratio": figures[f"server_{c}"]["requests_per_s"]
            / figures[f"in_process_{c}"]["requests_per_s"],
        }
        for c in (1, 8)
    }
    result = results_io.save(
        args.out, "serving_latency", image_size=[375, 500], jpeg_bytes=len(image), model_version=versions[-1],
        requests=args.requests, rounds=args.rounds, figures=figures, overhead=overhead,
    )  # fmt: skip
    one, eight = figures["server_1"], figures["server_8"]
    print(
        f"serving_latency: p50 {one['p50_ms']:.1f} ms / p99 {one['p99_ms']:.1f} ms through the server vs "
        f"{figures['in_process_1']['p50_ms']:.1f} / {figures['in_process_1']['p99_ms']:.1f} ms in-process "
        f"(+{100 * overhead['1_clients']['p50_overhead']:.0f}% at p50); "
        f"8 clients: {eight['requests_per_s']:.1f} req/s vs "
        f"{figures['in_process_8']['requests_per_s']:.1f} in-process"
    )
    return result


if __name__ == "__main__":
    main()
