# The image every component runs in on Kubeflow Pipelines / Vertex AI (kubeflow.image), and
# the Vertex training container. TFX's image brings Python 3.10, TFX 1.16 and its stack.
#   docker build -t gcr.io/my-project/deeplab-tfx:0.1.0 . && docker push gcr.io/my-project/deeplab-tfx:0.1.0
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
