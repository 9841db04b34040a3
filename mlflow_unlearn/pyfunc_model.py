"""The logged model as MLflow serves it (models-from-code, so nothing is pickled): raw images in,
class indices (or probabilities) out.

    model = mlflow.pyfunc.load_model("models:/digits-small_cnn/1")
    labels = model.predict(images)                                   # uint8 [N, H, W, C] -> int64 [N]
    probs = model.predict(images, params={"output": "probabilities"})  # -> float32 [N, num_classes]

The signature takes uint8 in [0, 255], channels last, the way images come from PIL or a camera;
float images in [0, 1] go through `(x * 255).round().astype(np.uint8)`. The normalisation the
network was trained with lives inside the model (mlflow_unlearn.models.RawImageClassifier); the
weights and the architecture spec are the `classifier` artifact, which the package itself loads
without running this file (tracking.load_logged_classifier).
"""
from __future__ import annotations

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

OUTPUTS = ("label", "probabilities")


class RawImageModel(PythonModel):
    def load_context(self, context) -> None:
        from mlflow_unlearn.models import load_classifier, read_classifier_spec

        self.num_classes = read_classifier_spec(context.artifacts["classifier"])["num_classes"]
        self.model = load_classifier(context.artifacts["classifier"], raw_input=True)

    # `np.ndarray` is a hint MLflow validates nothing from: the explicit signature (uint8 tensor in,
    # int64 out) stays the contract.
    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        import torch

        output = (params or {}).get("output", "label")
        if output not in OUTPUTS:
            raise ValueError(f"unknown output {output!r}; use one of {OUTPUTS}")
        images = torch.from_numpy(np.ascontiguousarray(np.asarray(model_input)))
        with torch.no_grad():  # batches of 1024 images bound the activation memory
            chunks = [self.model(images[i:i + 1024]) for i in range(0, len(images), 1024)]
        logits = torch.cat(chunks) if chunks else torch.zeros((0, self.num_classes))
        if output == "probabilities":
            return logits.softmax(1).numpy().astype(np.float32)
        return logits.argmax(1).numpy().astype(np.int64)


mlflow.models.set_model(RawImageModel())
