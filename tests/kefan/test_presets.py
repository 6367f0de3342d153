"""The default preset ("robust") against the authors' "notebook" set: what differs, the schedule
it asks for, and its scale-free E-step threshold (closed forms)."""

import pytest
import torch
from torch import nn

from bayescale.kefan.groups import noise_floor_threshold
from bayescale.kefan.optimizer import (
    DEFAULT_PRESET,
    PRESETS,
    SGHMCSpikeSlab,
    resolve_hparams,
    schedule_hparams,
)

# every key in which "robust" departs from "notebook" (docs/kefan.md lists the same)
DOCUMENTED = {"eps0", "soft_threshold", "rel_threshold", "cycles", "h0", "h0_bce", "ramp",
              "warm_up_cycles", "after_factor", "spike_clip", "probation_rel", "probation"}


def test_robust_is_the_default_and_notebook_keeps_the_authors_values():
    assert DEFAULT_PRESET == "robust"
    assert resolve_hparams() == resolve_hparams("robust") == resolve_hparams(None)
    nb = PRESETS["notebook"]
    assert (nb["eps1"], nb["eps0"], nb["soft_threshold"], nb["hard_threshold"], nb["warm_up"],
            nb["temperature"], nb["cycles"]) == (2e-4, 1e-2, 1e-2, 1e-3, 50, "1/sqrt(N)", 6)
    assert "rel_threshold" not in nb and "h0" not in nb
    opt = SGHMCSpikeSlab([nn.Parameter(torch.zeros(3, 4))], 100)
    g = opt.param_groups[0]
    assert g["eps0"] == 1.0 and g["rel_threshold"] == 8.0 and "h0" not in g and "ramp" not in g
    assert SGHMCSpikeSlab([nn.Parameter(torch.zeros(3, 4))], 100,
                          preset="notebook").param_groups[0]["rel_threshold"] == 0.0


def test_robust_differs_from_notebook_only_where_documented():
    rb, nb = PRESETS["robust"], PRESETS["notebook"]
    differ = {k for k in set(rb) | set(nb) if rb.get(k) != nb.get(k)}
    assert differ == DOCUMENTED


def test_schedule_hparams():
    rb = schedule_hparams(resolve_hparams("robust"), 400)
    assert rb == {"cycles": 4, "h0": 0.03, "ramp": 0.1, "warm_up": 100,  # one cycle of warm-up
                  "after_factor": 4.0}
    assert schedule_hparams(resolve_hparams("robust"), 400, loss="bce")["h0"] == 0.3
    assert schedule_hparams(resolve_hparams("robust"), 90)["warm_up"] == 22  # round(90 / 4)
    assert schedule_hparams(resolve_hparams("robust"), 400, h0=0.2, loss="bce")["h0"] == 0.2
    nb = schedule_hparams(resolve_hparams("notebook"), 3000)
    assert nb == {"cycles": 6, "h0": 0.01, "ramp": 0.0, "warm_up": 50, "after_factor": 1.0}
    with pytest.raises(ValueError, match="epochs"):
        schedule_hparams(resolve_hparams("robust"), 0)


def test_noise_floor_threshold_closed_form():
    w = torch.zeros(2, 4)
    w[:, 0], w[:, 1], w[:, 2] = 1.0, 0.1, 0.2  # column mean squares 1, 0.01, 0.04, 0
    # torch's median of an even count is the lower middle value: 0.01
    assert noise_floor_threshold(w, "in", 1e-3, 10.0) == pytest.approx(0.1)
    assert noise_floor_threshold(w, "in", 0.5, 10.0) == pytest.approx(0.5)  # the floor wins
    assert noise_floor_threshold(w, "in", 1e-3, 0.0) == 1e-3  # Ke & Fan's fixed threshold
    with pytest.raises(ValueError, match="rel"):
        noise_floor_threshold(w, "in", 1e-3, -1.0)


def test_relative_threshold_only_on_the_input_layer_never_lowered_with_hysteresis():
    net = nn.Sequential(nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].weight[:, :2] = 1.0  # two signal columns (mean square 1)
        net[0].weight[:, 2:] = 0.1  # four noise columns (mean square 0.01)
        net[2].weight.fill_(0.05)  # mean square 0.0025 per hidden unit
    opt = SGHMCSpikeSlab(net.parameters(), 100, hard_threshold=0.0)  # the default preset
    opt.em_step()
    w0, w2 = net[0].weight, net[2].weight
    assert opt.input_weight() is w0
    assert opt.state[w0]["threshold"] == pytest.approx(0.08)  # 8 x median 0.01
    assert opt.spike_mask(w0)[0].tolist() == [False, False, True, True, True, True]
    assert opt.state[w2]["threshold"] == 1e-3  # the hidden layer: the fixed soft threshold
    assert opt.spike_mask(w2) is None  # 0.0025 >= 1e-3
    with torch.no_grad():
        w0[:, 2:] = 0.0  # the noise columns emptied: the median drops to 0 ...
        w0[:, 3] = 0.2  # ... and a spike column at mean square 0.04 stays below the old bar 0.08
        w0[:, 1] = 0.2  # hysteresis: a slab column at 0.04 stays (>= soft_threshold 1e-3)
        w0[:, 0] = 0.02  # ... one at 4e-4 leaves the slab
    opt.em_step()
    assert opt.state[w0]["threshold"] == pytest.approx(0.08)
    assert opt.spike_mask(w0)[0].tolist() == [True, False, True, True, True, True]


def test_probation_holds_the_band_below_the_threshold_then_needs_twice_it():
    w = nn.Parameter(torch.zeros(1, 10))
    with torch.no_grad():  # column mean squares: six noise at 0.01 (the median), then 0.05
        w[0, :6] = 0.1     # (5x: probation), 0.06 (6x: probation), 0.03 (3x: out), 0.25 (25x)
        w[0, 6:] = torch.tensor([0.05, 0.06, 0.03, 0.25]).sqrt()
    opt = SGHMCSpikeSlab([w], 100, hard_threshold=0.0, probation_rel=4.0, probation=2)
    opt.em_step()  # first E-step: threshold 8 x 0.01; band [0.04, 0.08)
    st = opt.state[w]
    assert st["threshold"] == pytest.approx(0.08)
    assert st["probation"].tolist() == [False] * 6 + [True, True, False, False]
    assert (~opt.spike_mask(w)[0]).tolist() == [False] * 6 + [True, True, False, True]
    with torch.no_grad():
        w[0, 6], w[0, 7] = 0.0, 0.0  # whatever they do during the probation, they are held
    opt.em_step()
    assert st["probation"].tolist() == [False] * 6 + [True, True, False, False]
    assert (~opt.spike_mask(w)[0]).tolist() == [False] * 6 + [True, True, False, True]
    with torch.no_grad():
        w[0, 6] = 0.1 ** 0.5  # 0.1: above the threshold 0.08, under the bar 2 x 0.08
        w[0, 7] = 0.2 ** 0.5  # 0.2 >= 0.16: clears the bar
    opt.em_step()  # probation over: column 7 stays, column 6 goes under the spike
    assert st["probation"].tolist() == [False] * 6 + [True, False, False, False]
    assert (~opt.spike_mask(w)[0]).tolist() == [False] * 7 + [True, False, True]
    with torch.no_grad():
        w[0, 7] = 0.25  # 0.0625 < 0.08: a slab group now, it keeps it by hysteresis
    opt.em_step()  # and is held there although 0.1 >= 0.08: it must clear the bar, 0.16
    assert (~opt.spike_mask(w)[0]).tolist() == [False] * 7 + [True, False, True]
    with torch.no_grad():
        w[0, 6] = 0.17 ** 0.5
    opt.em_step()  # 0.17 >= 0.16: an ordinary slab group from now on
    assert not st["probation"].any()
    assert (~opt.spike_mask(w)[0]).tolist() == [False] * 6 + [True, True, False, True]
    sd = opt.state_dict()  # the probation mask survives a checkpoint as a bool mask
    again = SGHMCSpikeSlab([w], 100, hard_threshold=0.0, probation_rel=4.0, probation=2)
    again.load_state_dict(sd)
    assert again.state[w]["probation"].dtype == torch.bool
    assert again.state[w]["probation_left"] == 0


def test_probation_is_off_in_the_authors_presets_and_checked():
    for preset in ("notebook", "cifar_script", "fc_default"):
        g = SGHMCSpikeSlab([nn.Parameter(torch.zeros(3, 4))], 10, preset=preset).param_groups[0]
        assert g["probation_rel"] == 0.0
    for bad in ({"probation_rel": 9.0}, {"probation_rel": -1.0}, {"probation": -1},
                {"probation": 0}, {"rel_threshold": 0.0}):
        with pytest.raises(ValueError, match="probation"):
            SGHMCSpikeSlab([nn.Parameter(torch.zeros(3, 4))], 10, **bad)


def test_probation_config_options_reach_the_optimizer():
    from bayescale.train.builders import build_optimizer
    from bayescale.train.config import OptimConfig, SGHMCConfig

    net = nn.Linear(4, 2)
    build = lambda k: build_optimizer(OptimConfig(name="sghmc"), net.parameters(), 0.1,  # noqa
                                      sghmc=k, num_train=10).param_groups[0]
    assert (build(SGHMCConfig())["probation_rel"], build(SGHMCConfig())["probation"]) == (2.0, 100)
    g = build(SGHMCConfig(probation_rel=5.0, probation=7))
    assert (g["probation_rel"], g["probation"]) == (5.0, 7)
    assert build(SGHMCConfig(probation_rel=0.0))["probation_rel"] == 0.0


def test_probation_bar_is_the_larger_of_twice_the_threshold_and_five_times_the_set_median():
    from bayescale.kefan.optimizer import probation_bar
    w = torch.zeros(1, 40)
    w[0, :] = torch.linspace(0.1, 0.5, 40).sqrt()  # mean squares 0.1 ... 0.5
    few = torch.zeros(40, dtype=torch.bool)
    few[:5] = True  # 5 groups on probation: too few to be a noise floor of their own
    assert probation_bar(w, few, 0.08, "in") == pytest.approx(0.16)
    many = torch.zeros(40, dtype=torch.bool)
    many[:21] = True  # 21 groups: median = the 11th, 0.1 + 10 x 0.4 / 39
    assert probation_bar(w, many, 0.08, "in") == pytest.approx(5 * (0.1 + 10 * 0.4 / 39))
    assert probation_bar(w, many, 1.0, "in") == pytest.approx(2.0)  # the threshold's bar wins
