"""Config schema, YAML + dotted overrides, errors with suggestions, seed flagfile translation."""

from __future__ import annotations

import pytest
import yaml

from bayescale import list_models
from bayescale.train.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_keys,
    config_to_dict,
    describe_options,
    load_config,
    shipped_configs,
)
from bayescale.train.flagfile import parse_flagfile, translate_flagfile

# The seed's shipped src/RUN_ScriptBNN/config.cfg (spec §2.2), incl. its CNN_Conv typo.
SEED_MNIST_CFG = """\
--data_dir=/projects/datascience/hsharma/DATA/mnist.npz
--model_data=./results/
--batch_size=64
--print_step=10
--epochs=10
--UseEpoch=True
--learning_rate=0.001
--verbose=False
--model_type=BNN
--cnnConv=CNN_Conv
--bnnConv=BNN_conv_flip
--num_intra=128
--num_inter=1
"""

SEED_CIFAR_CFG = """\
# config_CIFAR10.cfg
--learning_rate=1e-4
--epochs=10
--batch_size=64
--model_dir=./results/BNN_CIFAR10_Data_8rank/
--num_monte_carlo=10
--print_step=10
--iterations=10
--DATA_PATH=/data/cifar-10-batches-py
--USE_EPOCH=False
--verbose=True
--plotting=False
--kl_regularizer=1.0
--eval_freq=10
--DATA_NAME=CIFAR-10
"""


def test_defaults_round_trip_through_yaml():
    cfg = Config()
    text = yaml.safe_dump(config_to_dict(cfg))
    assert config_from_dict(yaml.safe_load(text)) == cfg


def test_overrides_parse_types_and_nest(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  name: BNN_FC_flip\noptim:\n  lr: 1e-3\n")  # YAML 1.1: a string
    cfg = load_config(path, ["optim.lr=0.05", "train.batch_size=32", "optim.betas=[0.8, 0.9]",
                             "train.steps=null", "data.shard=false", "model.estimator=local"])
    assert cfg.model.name == "BNN_FC_flip"
    assert cfg.optim.lr == 0.05 and isinstance(cfg.optim.lr, float)
    assert cfg.train.batch_size == 32 and cfg.optim.betas == [0.8, 0.9]
    assert cfg.data.shard is False and cfg.model.estimator == "local"
    assert load_config(path).optim.lr == 1e-3  # "1e-3" string read as a number


@pytest.mark.parametrize("override, fragment", [
    ("optim.lrr=0.1", "did you mean 'optim.lr'"),
    ("train.batchsize=3", "did you mean 'train.batch_size'"),
    ("lr=0.1", "did you mean 'optim.lr'"),
    ("nosection.zzzzqqq=1", "unknown config key 'nosection.zzzzqqq'"),
])
def test_unknown_keys_rejected_with_closest_key(override, fragment):
    with pytest.raises(ConfigError, match="unknown config key") as err:
        load_config(None, [override])
    assert fragment in str(err.value)


@pytest.mark.parametrize("override, fragment", [
    ("train.batch_size=abc", "expected an integer"),
    ("train.batch_size=2.5", "expected an integer"),
    ("optim.lr=fast", "expected a number"),
    ("data.shard=maybe", "expected true or false"),
    ("train.precision=bf61", "did you mean 'bf16'"),
    ("optim.betas=0.9", "list of float"),
    ("train.batch_size=0", "must be >= 1"),
    ("optim.lr=-1", "must be > 0"),
])
def test_wrong_types_and_values_rejected(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert fragment in str(err.value)


def test_unknown_key_in_yaml_file_and_bad_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        load_config(p)
    p.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(FileNotFoundError, match="did you mean the shipped config"):
        load_config("mnist_bnn_conv_flp")


def test_shipped_configs_load_and_name_registered_models():
    names = shipped_configs()
    assert {"quickstart", "mnist_bnn_conv_flip", "mnist_bnn_fc_flip", "mnist_cnn_conv",
            "mnist_cnn_fc", "cifar10_bnn", "cifar10_cnn"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.model.name in list_models()


def test_help_documents_every_option():
    text = describe_options()
    for key in config_keys():
        assert f"  {key} (" in text


def test_seed_mnist_flagfile_translated(tmp_path):
    p = tmp_path / "config.cfg"
    p.write_text(SEED_MNIST_CFG)
    cfg_dict, notes = translate_flagfile(p)
    cfg = config_from_dict(cfg_dict)
    assert cfg.model.name == "BNN_conv_flip" and cfg.data.name == "mnist"
    assert cfg.train.batch_size == 64 and cfg.train.epochs == 10 and cfg.train.steps is None
    assert cfg.train.log_every == 10 and cfg.optim.lr == 1e-3 and cfg.optim.name == "adam"
    assert cfg.optim.scale_lr_by_world_size and cfg.train.scaling == "strong"
    assert cfg.data.shard is False  # the seed samples the whole set on every rank
    assert cfg.data.root.endswith("mnist.npz") and cfg.output.dir == "./results/"
    assert any("num_intra" in n for n in notes) and any("--num_inter" in n for n in notes)


def test_seed_cnn_typo_and_iteration_budget(tmp_path):
    p = tmp_path / "cnn.cfg"
    p.write_text("--model_type=CNN\n--cnnConv=CNN_Conv\n--noUseEpoch\n--iteration=500\n"
                 "--batch_size=128\n")
    cfg_dict, notes = translate_flagfile(p)
    cfg = config_from_dict(cfg_dict)
    assert cfg.model.name == "CNN_conv" and cfg.train.steps == 500
    assert cfg.train.batch_size == 128
    assert any("CNN_Conv" in n for n in notes)


def test_seed_cifar_flagfile_translated(tmp_path):
    p = tmp_path / "config_CIFAR10.cfg"
    p.write_text(SEED_CIFAR_CFG)
    cfg = config_from_dict(translate_flagfile(p)[0])
    assert cfg.model.name == "CIFAR10_BNN_model" and cfg.data.name == "cifar10"
    assert cfg.data.subtract_pixel_mean and cfg.data.root == "/data"
    assert cfg.optim.lr == 1e-4 and cfg.train.batch_size == 64
    assert cfg.train.steps == 10  # USE_EPOCH=False -> iterations
    assert cfg.eval.samples == 10 and cfg.kl.weight == 1.0


def test_flagfile_errors(tmp_path):
    p = tmp_path / "x.cfg"
    p.write_text("--batchsize=64\n")
    with pytest.raises(ValueError, match="did you mean --batch_size"):
        translate_flagfile(p)
    p.write_text("--UseEpoch=perhaps\n")
    with pytest.raises(ValueError, match="UseEpoch"):
        translate_flagfile(p)
    p.write_text("--bnnConv=BNN_resnet\n")
    with pytest.raises(ValueError, match="bnnConv"):
        translate_flagfile(p)
    with pytest.raises(FileNotFoundError, match="flagfile"):
        parse_flagfile(tmp_path / "missing.cfg")


def test_nested_flagfile_and_kl_regularizer_capped(tmp_path):
    (tmp_path / "base.cfg").write_text("--learning_rate=2e-4\n--kl_regularizer=5\n")
    (tmp_path / "top.cfg").write_text("--flagfile=base.cfg\n--epochs=3\n--USE_EPOCH=True\n")
    cfg = config_from_dict(translate_flagfile(tmp_path / "top.cfg")[0])
    assert cfg.optim.lr == 2e-4 and cfg.train.epochs == 3 and cfg.kl.weight == 1.0


# The recipe each shipped BNN config adds to its ``*_seed`` twin (docs/uncertainty.md, "The BNN's
# recipe"); the FC pair keeps the seed's settings at the study's 20 epochs
_CONV = {"model.bayesian_layers": "last", "schedule.name": "cosine", "train.epochs": 20}
RECIPE = {"mnist_bnn_conv_flip": _CONV, "mnist_bnn_conv_nonflip": _CONV,
          "mnist_bnn_fc_flip": {"train.epochs": 20}, "mnist_bnn_fc_nonflip": {"train.epochs": 20},
          "cifar10_bnn": {**_CONV, "train.epochs": 30, "optim.lr": 1e-3, "data.augment": True}}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_seed_configs_keep_the_seed_settings(tmp_path):
    """``*_seed`` is the seed's flagfile, as translated; the shipped BNN config differs from it
    only in the recipe keys of the uncertainty study (docs/uncertainty.md)."""
    p = tmp_path / "config.cfg"
    p.write_text(SEED_MNIST_CFG)
    seed = config_from_dict(translate_flagfile(p)[0])
    ours = load_config("mnist_bnn_conv_flip_seed")
    for key in ("model.name", "train.batch_size", "train.epochs", "train.scaling", "optim.name",
                "optim.lr", "optim.scale_lr_by_world_size", "kl.weight", "schedule.name",
                "model.bayesian_layers"):
        assert _flat(config_to_dict(ours))[key] == _flat(config_to_dict(seed))[key], key
    p.write_text(SEED_CIFAR_CFG)
    seed = _flat(config_to_dict(config_from_dict(translate_flagfile(p)[0])))
    ours = _flat(config_to_dict(load_config("cifar10_bnn_seed")))
    for key in ("model.name", "train.batch_size", "optim.lr", "data.subtract_pixel_mean",
                "eval.samples", "kl.weight", "schedule.name"):
        assert ours[key] == seed[key], key
    assert {n for n in shipped_configs() if n.endswith("_seed")} == {f"{n}_seed" for n in RECIPE}
    for name, recipe in RECIPE.items():
        shipped = _flat(config_to_dict(load_config(name)))
        kept = _flat(config_to_dict(load_config(f"{name}_seed")))
        assert {k for k in shipped if shipped[k] != kept[k]} == set(recipe), name
        assert {k: shipped[k] for k in recipe} == recipe, name
