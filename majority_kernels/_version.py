"""The package version, in one place: pyproject.toml reads it for the build and every module imports it from here."""

__version__ = "0.1.0"
