"""Networks composed from :mod:`synthesis.blocks`."""
from synthesis.nets.config import RTFSynConfig
from synthesis.nets.rtfsyn import Features, RTFSyn

__all__ = ["RTFSyn", "RTFSynConfig", "Features"]
