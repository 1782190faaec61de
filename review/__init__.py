"""The moderators' review page: photos checked by the served model, decisions stored for training.

``python -m review`` runs it; :func:`review.app.create_app` builds the Flask app from a
:class:`review.config.ReviewConfig`. Nothing happens at import.
"""
