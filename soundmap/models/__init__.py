"""Model code: SatMAE image encoder with GSD positional embedding, CLAP branches, heads, metadata
fusion, the PSM / GeoCLAP assemblies and checkpoint import. Never imports ``tiles`` or ``cli``."""
