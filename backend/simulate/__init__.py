"""The loop offline: the real cycle code on a labeled dataset, with a simulated annotator."""
