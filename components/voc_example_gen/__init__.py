"""VocExampleGen: Pascal VOC 2012 + SBD to TFRecords of tf.Examples, with a dead-letter output."""
