# The image that pipeline.yaml names: this package and its locked stack, for the Kubeflow GPU cluster.
#   docker build -t REGISTRY/ich:TAG .   then   ich compile --image REGISTRY/ich:TAG
# Ubuntu 22.04 ships Python 3.10, the version the TFX 1.16 stack has wheels for.
FROM ubuntu:22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    # tf.Transform and TFMA need Keras 2 (tf_keras); TensorFlow reads this when it is first imported.
    TF_USE_LEGACY_KERAS=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.10 python3.10-venv python3-pip \
 && rm -rf /var/lib/apt/lists/* \
 && ln -sf /usr/bin/python3.10 /usr/local/bin/python

WORKDIR /pipeline
COPY requirements.lock ./
RUN python -m pip install --upgrade pip \
 && python -m pip install -r requirements.lock \
 # The CUDA 12 and cuDNN libraries that TensorFlow 2.16.2 was built against (exact versions in its metadata).
 && python -m pip install "tensorflow[and-cuda]==2.16.2"

COPY pyproject.toml README.md ./
COPY ich_model ./ich_model
COPY components ./components
COPY pipeline ./pipeline
# pipeline.yaml starts each component with `python -m tfx.orchestration.kubeflow.v2.container.
# kubeflow_v2_run_executor`, which imports the components' dotted paths from this package.
RUN python -m pip install --no-deps . && python -m pip check
