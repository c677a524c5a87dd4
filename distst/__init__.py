"""distst: make neural style-transfer networks small and fast, and prove it at cluster scale."""

__version__ = "0.1.0"
