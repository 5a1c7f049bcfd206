"""Evaluation of the three RS applications: kNN classification, clustering, retrieval."""
