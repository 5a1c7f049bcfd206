"""Models: backbone registry and the embedding network."""
