"""Serving: TF Serving's model directory (``layout``) and warm-up records (``warmup``), which the
pusher writes and every server reads; our TF Serving-compatible gRPC/REST server and its client."""
