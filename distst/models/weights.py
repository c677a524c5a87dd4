"""``distst.models.weights`` names kept for existing imports: the helpers live in ``distst.weights``."""

from ..weights import WeightsError, load_checked, mismatches, read_state_dict

__all__ = ["WeightsError", "load_checked", "mismatches", "read_state_dict"]
