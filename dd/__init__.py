"""ddlab: dataset distillation (trajectory matching for images, attention labels for BERT)."""

from dd.export import DistilledSet, load

__all__ = ["DistilledSet", "load"]
__version__ = "0.1.0"
