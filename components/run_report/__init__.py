"""RunReport: the run's results as pictures in one HTML page."""
