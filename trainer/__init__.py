"""DeepLabV3+ training for the TFX Trainer: model, input pipeline, recipe, export."""
