"""rose: one-shot pruning of large language models with ROSE, SparseGPT, Wanda and magnitude.

``rose.prune_matrix`` prunes one weight matrix; the rest of the package builds the pipeline
around it. The names are imported lazily so that ``rose.config`` loads without torch.
"""

__version__ = "0.1.0"
__all__ = ["METHODS", "PruneStats", "prune_matrix"]


def __getattr__(name: str):
    if name in __all__:
        from rose import prune

        return getattr(prune, name)
    raise AttributeError(f"module 'rose' has no attribute {name!r}")
