"""`facecomp serve`: a brush page and an HTTP API over the completion model."""
