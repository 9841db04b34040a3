"""The logged model as MLflow serves it (models-from-code, so nothing is pickled): raw images in,
class indices (or probabilities) out.

    model = mlflow.pyfunc.load_model("models:/digits-noisy-small_cnn/1")
    labels = model.predict(images)                                   # uint8 [N, H, W, C] -> int64 [N]
    probs = model.predict(images, params={"output": "probabilities"})  # -> float32 [N, num_classes]

Input (mlflow_unlearn.image_input): uint8 (any integer type) pixels in [0, 255] or floats in
[0, 1], channels last; anything else is refused with a message naming the expected dtype, range
and shape and how to convert (HTTP 400 when served). The signature declares an object tensor so
that MLflow passes the numbers through as sent: with a uint8 tensor signature, the REST server
cast JSON floats to uint8 before the model saw them (0.5 -> 0, digits' 16.0 -> 16: a black image).
The normalisation the network was trained with lives inside the model
(mlflow_unlearn.models.RawImageClassifier); the weights and the architecture spec are the
`classifier` artifact, which the package itself loads without running this file
(tracking.load_logged_classifier).
"""
from __future__ import annotations

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

OUTPUTS = ("label", "probabilities")


class ServingInputError(mlflow.exceptions.MlflowException):
    """Input the model refuses: HTTP 400 when served (INVALID_PARAMETER_VALUE), with this message only.
    MLflow's scoring server rewrites a failed prediction's message to "Failed to predict data
    '<the whole request>'. Error: ...", which printed every pixel before the reason and echoed the
    input back; this message keeps the text it was raised with."""

    def __init__(self, message: str):
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._own_message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_own_message"):  # set once, by MlflowException.__init__
            self._own_message = value


class RawImageModel(PythonModel):
    def load_context(self, context) -> None:
        from mlflow_unlearn.models import load_classifier, read_classifier_spec

        spec = read_classifier_spec(context.artifacts["classifier"])
        self.num_classes, self.input_shape = spec["num_classes"], tuple(spec["input_shape"])  # (C, H, W)
        self.model = load_classifier(context.artifacts["classifier"], raw_input=True)

    # `np.ndarray` is a hint MLflow validates nothing from; image_input enforces the contract.
    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        import logging

        import torch

        from mlflow_unlearn.image_input import ImageInputError, to_uint8_images

        output = (params or {}).get("output", "label")
        if output not in OUTPUTS:
            raise ServingInputError(f"unknown output {str(output)[:40]!r}; use one of {', '.join(OUTPUTS)}")
        try:
            pixels, warnings = to_uint8_images(model_input, self.input_shape)
        except ImageInputError as exc:
            raise ServingInputError(str(exc)) from None
        for warning in warnings:  # the answer stays a plain array; the server's log carries the warning
            logging.getLogger("mlflow_unlearn.serving").warning(warning)
        images = torch.from_numpy(pixels)
        with torch.no_grad():  # batches of 1024 images bound the activation memory
            chunks = [self.model(images[i:i + 1024]) for i in range(0, len(images), 1024)]
        logits = torch.cat(chunks) if chunks else torch.zeros((0, self.num_classes))
        if output == "probabilities":
            return logits.softmax(1).numpy().astype(np.float32)
        return logits.argmax(1).numpy().astype(np.int64)


mlflow.models.set_model(RawImageModel())
