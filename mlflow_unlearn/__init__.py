"""mlflow-unlearn: machine unlearning (RUM) as an MLflow plugin.

The core (data, models, training, confidences, memorisation, algorithms, RUM, metrics) imports only
torch/numpy/scipy; MLflow lives at the edges (tracking, search, hook, cli). See docs/design.md.
"""
__version__ = "0.1.0"
