"""Editing methods, one module each, registered by (sampler, name) in :data:`METHODS`."""

from . import ddim_inversion, flow_inversion, flowedit, noise_start  # noqa: F401 - each registers its methods
from .base import METHODS, EditMethod, EditRequest, get_method, method_names, register_method

__all__ = ["METHODS", "EditMethod", "EditRequest", "get_method", "method_names", "register_method"]
