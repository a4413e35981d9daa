"""Training and evaluation of PSM / GeoCLAP models.

* :mod:`.split` — the papers' spatial train/val/test split (``soundmap data split``);
* :mod:`.webdataset`, :mod:`.manifest`, :mod:`.datasets` — the authors' WebDataset shards and
  users' own manifests, read into :class:`~.samples.TrainSample`;
* :mod:`.batch`, :mod:`.transforms`, :mod:`.imagery` — samples → model inputs with the training
  augmentations (zoom sampling, RandomResizedCrop, flip, metadata dropout);
* :mod:`.losses` — PCME++ and InfoNCE; :mod:`.loop` — the resumable training loop;
* :mod:`.metrics`, :mod:`.evaluate` — retrieval metrics exactly as the papers compute them;
* :mod:`.setup` — starting model, SatMAE initialisation, export to the model cache;
* :mod:`.run` — the end-to-end functions behind the CLI.

Nothing here is imported by ``import soundmap``; the modules load torch on use.
"""
