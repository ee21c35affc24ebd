"""Serving ``/predict``: the models this process serves and the answers they give."""
