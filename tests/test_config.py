from dataclasses import dataclass, field

import pytest

from rewardlab.config import from_dict, load_yaml
from rewardlab.errors import InputError


@dataclass
class Inner:
    k: int = 16


@dataclass
class Outer:
    lr: float = 1e-3
    name: str = "x"
    alphas: tuple[float, ...] = (0.0, 1.0)
    sites: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)
    limit: int | None = None

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError("lr must be positive")


def test_builds_nested_and_converts():
    cfg = from_dict(Outer, {"lr": 1, "alphas": [1, 2.5], "inner": {"k": 4}, "limit": None}, "ppo")
    assert cfg.lr == 1 and cfg.alphas == (1, 2.5) and cfg.inner == Inner(4)


@pytest.mark.parametrize("values,match", [
    ({"lrr": 1}, r"ppo.lrr: unknown key 'lrr'"),
    ({"lr": "fast"}, r"ppo.lr: 'fast' is not a valid float"),
    ({"inner": {"k": 1.5}}, r"ppo.inner.k: 1.5 is not a valid int"),
    ({"alphas": ["a"]}, r"ppo.alphas"),
    ({"lr": -1}, r"ppo: lr must be positive"),
])
def test_errors_name_the_key(values, match):
    with pytest.raises(InputError, match=match):
        from_dict(Outer, values, "ppo")


def test_yaml_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("a: [1, 2\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_yaml(p)
    p.write_text("- 1\n")
    with pytest.raises(InputError, match="mapping"):
        load_yaml(p)


@dataclass
class Documented:
    lr: float = 1e-3  # learning rate (Adam)
    kl_coef: float = 0.1  # initial KL coefficient;
                          # adaptive when kl_target is set

    # a comment above a field is not its documentation
    seed: int = 0
    width: int = field(default=4, metadata={"help": "dictionary width, x d_model"})

    def validate(self) -> None:  # not a field
        pass


def test_field_docs_read_line_comments_and_metadata():
    from rewardlab.config import field_docs

    assert field_docs(Documented) == {"lr": "learning rate (Adam)",
                                      "kl_coef": "initial KL coefficient; adaptive when kl_target is set",
                                      "width": "dictionary width, x d_model"}
