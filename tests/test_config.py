import re

import pytest

from freelabel.config import ConfigError, RunConfig, from_dict, load_recipe, parse_override


@pytest.mark.parametrize(
    "text, expected",
    [
        ("optim.lr=1e-3", ("optim.lr", 0.001)),
        ("optim.lr=2.0e-3", ("optim.lr", 0.002)),
        ("seed=7", ("seed", 7)),
        ("views.scale=[0.5, 1]", ("views.scale", [0.5, 1])),
        ("method_args.x=-5E+2", ("method_args.x", -500.0)),
        ("data.name=x1e3", ("data.name", "x1e3")),
    ],
)
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


def test_every_recipe_passes_validation_and_its_method_arguments_their_checks():
    from freelabel.config import check_arguments, list_recipes, validate
    from freelabel.methods import METHODS

    for name in list_recipes():
        cfg = validate(from_dict(RunConfig, load_recipe(name)))
        check_arguments(METHODS[cfg.method], cfg.method_args, "method_args")


@pytest.mark.parametrize(
    "key, value, says",
    [
        ("budget", {"epochs": float("nan")}, "--epochs must be positive and finite"),
        ("budget", {"minutes": float("inf")}, "--minutes must be positive and finite"),
        ("checkpoint_every", 0, "checkpoint_every must be a positive number of steps"),
        ("log_every", -1, "log_every must be a positive number of steps"),
        ("views.size", 0, "views.size must be a positive number of pixels"),
        ("data.workers", -2, "data.workers is a number of decoding processes, 0 or more"),
        ("views.scale", [0.9, 0.1], "views.scale is [low, high]"),
        ("views.std", [0.0], "views.std must be positive"),
        ("optim.betas", [0.9, 1.5], "optim.betas must be two numbers in [0, 1)"),
        ("backbone.args", {"drop": float("nan")}, "backbone.args.drop must be a finite number"),
        ("accelerator", "tpu", "unknown --accelerator 'tpu'"),
        ("precision", "fp8", "unknown --precision 'fp8'"),
        ("devices", "many", "--devices takes a positive number of devices or auto"),
    ],
)
def test_validation_names_the_key_and_what_it_takes(key, value, says):
    from freelabel.config import resolve

    with pytest.raises(ConfigError) as e:
        resolve(load_recipe("simclr-fashion-mnist"), {key: value})
    assert says in str(e.value)


def test_method_arguments_are_converted_to_their_types_and_checked():
    from freelabel.config import check_arguments
    from freelabel.methods import METHODS

    assert check_arguments(METHODS["dino"], {"local_scale": [0.1, 0.3], "teacher_temp": 1}, "m") == {
        "local_scale": (0.1, 0.3),
        "teacher_temp": 1.0,
    }
    assert check_arguments(METHODS["siglip"], {"bias": -5}, "m") == {"bias": -5.0}  # negative where the default is
    assert check_arguments(METHODS["rotation"], {"hidden_dim": 0}, "m") == {"hidden_dim": 0}  # 0 is its default
    for args, says in (
        ({"teacher_temp": 0}, "above 0"),
        ({"momentum": 1.5}, "in [0, 1]"),
        ({"out_dim": 0}, "at least 1"),
        ({"local_crops": -1}, "0 or more"),
        ({"student_temp": "cold"}, "a number"),
    ):
        with pytest.raises(ConfigError, match=re.escape(f"m.{next(iter(args))} must be {says}")):
            check_arguments(METHODS["dino"], args, "m")
