"""Training methods (hr-s2dml, baselines, ablations) behind one interface and one registry."""
