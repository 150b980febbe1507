"""ServingValidator: the candidate loaded and run as TF Serving would, before the push."""
