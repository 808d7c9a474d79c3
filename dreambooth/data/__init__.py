"""Training data: image discovery, captions, and the cached training set."""
