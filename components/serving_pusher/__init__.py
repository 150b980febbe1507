"""ServingPusher: blessed models into TF Serving's directory layout, atomically, with warm-up requests."""
