"""DataGate: stops the run before Transform when ExampleValidator found anomalies."""
