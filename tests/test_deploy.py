"""The TF Serving deploy files parse as what TF Serving and Kubernetes read, and agree."""

import os
import re

import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from core import paths

DEPLOY = os.path.join(paths.PROJECT_ROOT, "serving", "deploy")
# BatchingParameters' fields (tensorflow_serving/servables/tensorflow/session_bundle_config.proto,
# not shipped in the tensorflow-serving-api wheel): scalar wrappers, and the repeated ints.
BATCHING_WRAPPED = {
    "max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads",
    "thread_pool_name", "pad_variable_length_inputs", "enable_large_batch_splitting",
    "max_execution_batch_size",
}  # fmt: skip


def read(name):
    with open(os.path.join(DEPLOY, name)) as f:
        return f.read()


def model_server_config(text):
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def batching(text):
    """BatchingParameters text format -> {field: value or [values]}; fails on anything else."""
    params = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        wrapped = re.fullmatch(r"(\w+) \{ value: (\d+) \}", line)
        repeated = re.fullmatch(r"allowed_batch_sizes: (\d+)", line)
        assert wrapped or repeated, f"not a BatchingParameters line: {line!r}"
        if wrapped:
            assert wrapped.group(1) in BATCHING_WRAPPED, wrapped.group(1)
            params[wrapped.group(1)] = int(wrapped.group(2))
        else:
            params.setdefault("allowed_batch_sizes", []).append(int(repeated.group(1)))
    return params


def test_models_config_is_a_model_server_config():
    [model] = model_server_config(read("models.config")).model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == ("deeplab", "/models/deeplab", "tensorflow")
    assert model.model_version_policy.latest.num_versions == 1


def test_batching_parameters_for_cpu_and_gpu():
    cpu, gpu = batching(read("batching_parameters.txt")), batching(read("batching_parameters.gpu.txt"))
    assert cpu["max_batch_size"] == 4 and cpu["num_batch_threads"] == 1
    assert gpu["max_batch_size"] == 16 and gpu["batch_timeout_micros"] > cpu["batch_timeout_micros"]
    # TF Serving requires the largest allowed batch size to equal max_batch_size.
    assert gpu["allowed_batch_sizes"][-1] == gpu["max_batch_size"]
    assert gpu["allowed_batch_sizes"] == sorted(gpu["allowed_batch_sizes"])


def test_docker_compose_mounts_what_the_server_reads():
    service = yaml.safe_load(read("docker-compose.yml"))["services"]["tf-serving"]
    assert service["image"].startswith("tensorflow/serving:")
    assert set(service["ports"]) == {"8500:8500", "8501:8501"}
    # SOURCE:TARGET:MODE, where SOURCE may hold ${VAR:-default}.
    mounts = {target: source for source, target, _ in (v.rsplit(":", 2) for v in service["volumes"])}
    assert mounts["/config/models.config"] == "./models.config" and "/models" in mounts
    flags = dict(arg.split("=", 1) for arg in service["command"])
    assert flags["--model_config_file"] in mounts and flags["--batching_parameters_file"] in mounts
    assert (flags["--port"], flags["--rest_api_port"]) == ("8500", "8501")
    # models.config's base path lies under the mounted model directory.
    [model] = model_server_config(read("models.config")).model_config_list.config
    assert model.base_path.startswith("/models/")


def test_kubernetes_manifests():
    docs = {d["kind"]: d for d in yaml.safe_load_all(read("kubernetes/deeplab-serving.yaml"))}
    assert set(docs) == {"ConfigMap", "Deployment", "Service", "PersistentVolumeClaim"}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 8500, "http": 8501}
    probe = container["readinessProbe"]["httpGet"]
    assert (probe["path"], probe["port"]) == ("/v1/models/deeplab/metadata", "http")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"models": "/models", "config": "/config"}
    assert {v["name"] for v in pod["volumes"]} == set(mounts)
    flags = dict(arg.split("=", 1) for arg in container["args"])
    assert flags["--model_config_file"] == "/config/models.config"
    service_ports = {p["name"]: p["port"] for p in docs["Service"]["spec"]["ports"]}
    assert service_ports == {"grpc": 8500, "http": 8501}
    assert docs["Service"]["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
    # The ConfigMap carries the same configs as the files beside it: no drift.
    data = docs["ConfigMap"]["data"]
    assert model_server_config(data["models.config"]) == model_server_config(read("models.config"))
    assert batching(data["batching_parameters.txt"]) == batching(read("batching_parameters.txt"))
