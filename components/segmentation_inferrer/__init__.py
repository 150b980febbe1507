"""SegmentationInferrer: the pushed model's masks for unlabelled images (BulkInferrer's place)."""
