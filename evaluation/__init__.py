"""Model evaluation: VOC segmentation scores, their TFMA metrics, the EvalConfig and its verdicts."""
