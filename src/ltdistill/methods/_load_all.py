"""Explicit, alphabetised table of contents: importing a module registers its method."""

from . import (  # noqa: F401
    damed,
    datm,
    dc,
    dm,
    dsa,
    full,
    herding,
    k_center,
    mtt,
    random,
    rded,
    rldd,
    sre2l,
)
