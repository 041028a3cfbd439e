"""The package version, in one place below every module (modules import it from here, not from the package root)."""

__version__ = "0.1.0"
