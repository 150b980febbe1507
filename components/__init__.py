"""Custom TFX components of deeplab-tfx."""
