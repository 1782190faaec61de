"""Serving side: the one preprocessing definition and the TorchServe handler.

Nothing in this package imports training code, MLflow or Optuna.
"""
