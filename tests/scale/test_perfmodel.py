"""The performance model's arithmetic on hand-computed cases, and its fit to the seed figures."""

import math

import pytest

from bayescale.scale import perfmodel as P

IC = P.Interconnect("test", latency_s=1e-5, bandwidth_Bps=1e9)


def test_ring_and_tree_allreduce_by_hand():
    # ring, 4 workers, 1 MB: 2*3 latencies + 2*(3/4) * 1e6 / 1e9 s
    assert P.allreduce_time(1e6, 4, IC, "ring") == pytest.approx(6e-5 + 1.5e-3)
    # tree, 8 workers: 2*3 latencies + 2 * 1e6 / 1e9
    assert P.allreduce_time(1e6, 8, IC, "tree") == pytest.approx(6e-5 + 2e-3)
    assert P.allreduce_time(1e6, 1, IC) == 0.0
    with pytest.raises(ValueError, match="workers"):
        P.allreduce_time(1e6, 0, IC)


def test_expected_max_of_normals():
    assert P.expected_max_normal(1) == 0.0
    assert P.expected_max_normal(2) == pytest.approx(1 / math.sqrt(math.pi), abs=1e-8)
    assert P.expected_max_normal(3) == pytest.approx(1.5 / math.sqrt(math.pi), abs=1e-8)


def test_bucketing_and_overlap():
    # 2.5 buckets of 1 MB on 2 workers (ring: 2 latencies + bytes/beta each)
    w = P.Workload("w", compute_s_per_sample=1e-3, grad_bytes=2.5e6, batch_per_worker=3,
                   backward_fraction=0.5)
    per = [2e-5 + m / 1e9 for m in (1e6, 1e6, 0.5e6)]
    c = P.Cluster(IC, bucket_bytes=1e6, overlap=1.0)
    st = P.step_time(w, c, 2)
    assert st.allreduce_s == pytest.approx(sum(per))
    # backward = 1.5 ms hides the first two buckets (2.04 ms) only partly
    assert st.exposed_s == pytest.approx(per[2] + (per[0] + per[1] - 1.5e-3))
    no = P.step_time(w, P.Cluster(IC, bucket_bytes=1e6, overlap=0.0), 2)
    assert no.exposed_s == pytest.approx(sum(per))
    half = P.step_time(w, P.Cluster(IC, bucket_bytes=1e6, compression=0.5), 2)
    assert half.allreduce_s < st.allreduce_s


def test_scaling_modes():
    w = P.Workload("w", 1e-3, 4e6, 64, step_cv=0.1)
    c = P.Cluster(IC, overlap=0.0)
    strong = P.scaling_table(w, c, [1, 2, 8], "strong")
    assert strong[0]["speedup"] == pytest.approx(1.0)
    t1, t8 = strong[0]["step_s"], strong[2]["step_s"]
    assert strong[2]["speedup"] == pytest.approx(8 * t1 / t8)
    weak = P.scaling_table(w, c, [1, 2, 8], "weak")
    assert [r["efficiency"] for r in weak] == pytest.approx([r["efficiency"] for r in strong])
    gb = P.scaling_table(w, c, [1, 8], "global-batch")
    assert gb[1]["compute_s"] == pytest.approx(w.compute_s / 8)
    assert gb[1]["efficiency"] < strong[2]["efficiency"]  # less compute to hide the same comm
    with pytest.raises(ValueError, match="mode"):
        P.scaling_table(w, c, [1], "elastic")


def test_fit_latency_bandwidth_recovers_parameters():
    sizes = [1e3, 1e5, 1e6, 1e7]
    times = [P.allreduce_time(s, 2, IC) for s in sizes]
    fit = P.fit_latency_bandwidth(sizes, times, 2)
    assert fit.latency_s == pytest.approx(IC.latency_s, rel=1e-6)
    assert fit.bandwidth_Bps == pytest.approx(IC.bandwidth_Bps, rel=1e-6)


@pytest.mark.parametrize("stragglers", [True, False])
def test_fit_to_the_seed_figure_within_ten_percent(stragglers):
    fit = P.fit_seed("aries", "ring", stragglers=stragglers)
    assert fit["max_abs_relative_error"] < 0.10
    assert 0 <= fit["software_latency_s"] < 0.1
    assert all(0 <= v < 0.5 for v in fit["step_cv"].values())
    if not stragglers:
        assert fit["step_cv"] == {"BNN": 0.0, "CNN": 0.0}
    # the fitted model reproduces its own predictions through the public API
    w = P.seed_workload("BNN", fit)
    row = P.scaling_table(w, P.seed_cluster(fit), [8])[0]
    assert row["speedup"] == pytest.approx(fit["predicted_speedup"]["BNN"][-1], rel=1e-6)
