# The image every component runs in on Kubeflow Pipelines / Vertex AI (kubeflow.image), the
# Vertex training container, and, with beam.use_pipeline_image, the container Dataflow starts
# its Beam workers in (--sdk_container_image). TFX's image brings Python 3.10, TFX 1.16 and its stack.
#   docker build -t gcr.io/my-project/deeplab-tfx:0.1.0 . && docker push gcr.io/my-project/deeplab-tfx:0.1.0
# BEAM_VERSION is constraints.txt's apache-beam: Beam's worker harness launcher must be of the
# release of the SDK installed below (a test checks the two agree).
ARG BEAM_VERSION=2.74.0
FROM apache/beam_python3.10_sdk:${BEAM_VERSION} AS beam

FROM tensorflow/tfx:1.16.0
WORKDIR /deeplab-tfx
COPY constraints.txt setup.py README.md deeplab_tfx.py ./
COPY core core
COPY transform transform
COPY trainer trainer
COPY evaluation evaluation
COPY serving serving
COPY inference inference
COPY components components
COPY datasets datasets
COPY pipeline pipeline
RUN pip install --no-cache-dir -c constraints.txt -e .
# Dataflow runs the image's entrypoint on each worker: Beam's boot, which starts the Python SDK
# harness here, in the environment pip installed into (not a fresh virtualenv of its own, which
# Beam >= 2.48 makes unless told). Kubeflow, Vertex AI and Vertex training give their own command.
COPY --from=beam /opt/apache/beam /opt/apache/beam
ENV RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1
ENTRYPOINT ["/opt/apache/beam/boot"]
