"""Labelling an archive: the labels file and its journal (``labels``), what to label next
(``suggest``), the page's backend (``page``), predictions with calibrated probabilities
(``predict``) and the split of a run trained from a labels file (``labelled``)."""
