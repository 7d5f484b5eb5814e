"""Explicit, alphabetised table of contents: importing a module registers its method."""

from . import full, herding, k_center, random  # noqa: F401
