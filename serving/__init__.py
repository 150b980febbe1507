"""Serving: a local server speaking TF Serving's gRPC (and REST) API, its client, deploy files."""
