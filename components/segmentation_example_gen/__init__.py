"""SegmentationExampleGen: a segmentation dataset (VOC 2012 + SBD, or images and masks folders as a
dataset spec describes) to TFRecords of tf.Examples, with a dead-letter output."""
