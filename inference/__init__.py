"""Batch inference: masks for a whole folder or set of records, as a Beam job (``deeplab-tfx
infer``, and the pipeline's SegmentationInferrer after the pusher)."""
