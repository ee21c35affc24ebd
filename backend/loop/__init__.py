"""The loop's stages: reconcile, featurize, train, score, select, push, review, record."""
