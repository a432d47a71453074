import pytest

from freelabel.config import ConfigError, RunConfig, from_dict, load_recipe, parse_override


@pytest.mark.parametrize(
    "text, expected",
    [("optim.lr=1e-3", ("optim.lr", 0.001)), ("optim.lr=2.0e-3", ("optim.lr", 0.002)), ("seed=7", ("seed", 7)),
     ("views.scale=[0.5, 1]", ("views.scale", [0.5, 1])), ("method_args.x=-5E+2", ("method_args.x", -500.0)),
     ("data.name=x1e3", ("data.name", "x1e3"))],
)  # fmt: skip
def test_overrides_read_numbers_as_yaml_1_2_does(text, expected):
    assert parse_override(text) == expected


def test_every_recipe_builds_a_config():
    from freelabel.config import list_recipes

    for name in list_recipes():
        cfg = from_dict(RunConfig, load_recipe(name))
        assert cfg.optim.lr > 0 and cfg.views.size > 0, name


def test_unknown_key_names_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown key optim.lrr; valid: name, lr"):
        from_dict(RunConfig, {"method": "simclr", "optim": {"lrr": 1}})
