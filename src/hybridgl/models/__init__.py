"""Model code: SAM proposals, the hybrid global-local CLIP encoder and GEM.

Only ``torch.nn`` modules and the functions that run them live here; loading and
caching of checkpoints is in :mod:`hybridgl.weights`.
"""
