"""Sat2Sound (mvrl/sat2sound, MIT): soundmap's third model family.

``configuration`` (config), ``modeling`` (the model), ``htsat`` (audio tower), ``codebook``
(shared concept codebook + sparsemax), ``preprocessing`` (audio clip + FlanT5 text encoder) and
``checkpoint`` (import of the authors' Lightning checkpoints), as transformers lays out a model.
"""
