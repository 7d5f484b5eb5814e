"""config.from_dict: YAML values coerced to the dataclass's types, type hints resolved once per
class (paper.yaml's DAG builds ~30,000 configs). Run: pytest tests/unit/test_config_types.py -q"""

from __future__ import annotations

import typing
from dataclasses import dataclass

import pytest

from ltdistill import config as cfgmod
from ltdistill.config import ConfigError, from_dict


@dataclass(frozen=True)
class _Section:
    lr: float
    sizes: tuple[int, ...] = ()
    name: str = "x"


def test_from_dict_coerces_and_names_bad_keys():
    got = from_dict(_Section, {"lr": 1, "sizes": [2, 3]})
    assert got == _Section(lr=1.0, sizes=(2, 3))
    assert isinstance(got.lr, float) and isinstance(got.sizes, tuple)
    with pytest.raises(ConfigError, match=r"'nmae' \(did you mean 'name'\?\)"):
        from_dict(_Section, {"lr": 1.0, "nmae": "y"})
    with pytest.raises(ConfigError, match="missing key.*lr"):
        from_dict(_Section, {})


def test_type_hints_are_resolved_once_per_class(monkeypatch):
    calls = []
    real = typing.get_type_hints

    def counting(cls, *a, **k):
        calls.append(cls)
        return real(cls, *a, **k)

    @dataclass(frozen=True)
    class Fresh:  # a class the cache has not seen
        lr: float

    monkeypatch.setattr(cfgmod.typing, "get_type_hints", counting)
    values = [from_dict(Fresh, {"lr": i}).lr for i in range(50)]
    assert values == [float(i) for i in range(50)]
    assert calls == [Fresh]
