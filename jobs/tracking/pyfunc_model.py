"""MLflow models-from-code definition of a stable-snn classifier.

Logged with ``mlflow.pyfunc.log_model(python_model=<this file>, artifacts={...})``.
Loading rebuilds the network through the library from the logged config and loads the
weights with ``torch.load(weights_only=True)``: nothing is unpickled from the model.
Input: float32 images ``[B, 3, 32, 32]`` in [0, 1]; output: class probabilities ``[B, classes]``.
"""
from __future__ import annotations

import mlflow
import numpy as np
import torch


class StableSNNClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        # imported on load only: MLflow also executes this file when the model is logged
        from jobs.tracking.models import build_from_artifacts

        self.model, self.config = build_from_artifacts(context.artifacts["weights"], context.artifacts["config"])

    def predict(self, context, model_input, params=None):
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            logits = self.model(x).mean(0)
        return torch.softmax(logits, dim=1).numpy()


mlflow.models.set_model(StableSNNClassifier())
