"""The hallucination study: gates, pairs, arms, paired statistics (against hand computations), and the pipeline."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.hallucination.gates import (
    CELL_CLASSES,
    GateThresholds,
    cell_labels,
    check_gates,
    freeze_vision,
    prior_hallucination_rate,
    teacher_forced_accuracy,
)
from benchmarks.hallucination.grounded import (
    COLOURS,
    COOCCURRENCE_PAIRS,
    ObjectGroup,
    Scene,
    describe_scene,
    find_hallucinations,
    generate_samples,
)
from benchmarks.hallucination.stats import paired_differences, t_interval
from benchmarks.hallucination.study import (
    ARMS,
    GateError,
    StudyConfig,
    build_model,
    build_preference_pairs,
    build_ranking_pairs,
    build_tokenizer,
    evaluate_responses,
    format_table,
    generate_responses,
    run_study,
    summarize,
    train_arm,
)

ROOT = Path(__file__).resolve().parents[2]


def _absent(scene):
    return next(
        f"{c} {sh}"
        for c in ("red", "green", "blue", "yellow")
        for sh in ("circle", "square", "triangle")
        if f"{c} {sh}" not in scene.categories
    )


# ------------------------------------------------------------------------------------------------ statistics


def test_t_interval_hand_computed():
    # values 1, 2, 3, 4: mean 2.5, sd sqrt(5/3); t(0.975, 3) = 3.182446 (printed t table)
    out = t_interval([1.0, 2.0, 3.0, 4.0])
    sd = math.sqrt(5 / 3)
    assert out["mean"] == pytest.approx(2.5) and out["sd"] == pytest.approx(sd)
    half = 3.182446 * sd / 2
    assert out["low"] == pytest.approx(2.5 - half, abs=1e-5) and out["high"] == pytest.approx(2.5 + half, abs=1e-5)
    one = t_interval([0.3])
    assert one["mean"] == 0.3 and math.isnan(one["low"])
    with pytest.raises(ValueError, match="at least one"):
        t_interval([])


def test_paired_differences_hand_computed():
    # seed effects are large (0.5 vs 0.1), the arm is always 0.02 below DPO: the paired CI is tight around -0.02
    runs = []
    for seed, base in enumerate([0.5, 0.1, 0.3]):
        runs += [
            {"seed": seed, "method": "dpo", "m": base},
            {"seed": seed, "method": "ddpo", "m": base - 0.02 + 0.01 * (seed - 1)},
        ]
    runs.append({"seed": 9, "method": "ddpo", "m": 0.0})  # no DPO run for seed 9: not paired
    (d,) = paired_differences(runs, "m", "dpo")
    diffs = [-0.03, -0.02, -0.01]
    assert d["method"] == "ddpo" and d["seeds"] == [0, 1, 2]
    assert d["mean"] == pytest.approx(-0.02)
    sd = math.sqrt(sum((x + 0.02) ** 2 for x in diffs) / 2)  # 0.01
    half = 4.302653 * sd / math.sqrt(3)  # t(0.975, 2)
    assert (d["low"], d["high"]) == pytest.approx((-0.02 - half, -0.02 + half), abs=1e-6)
    with pytest.raises(ValueError, match="two runs for method 'dpo' and seed 0"):
        paired_differences(runs + [{"seed": 0, "method": "dpo", "m": 1.0}], "m")


def test_summarize_and_table():
    rows = []
    for seed, (a, b) in enumerate([(0.4, 0.3), (0.6, 0.4)]):
        for method, v in (("dpo", a), ("ddpo", b)):
            rows.append({"seed": seed, "method": method, "x": v, "recall": 1 - v})
    summary = summarize(rows, ("x",))
    assert summary[0]["method"] == "dpo" and summary[0]["x"] == pytest.approx(0.5)
    assert summary[0]["x_std"] == pytest.approx(math.sqrt(0.02))
    table = format_table(rows, ("x", "recall"))
    # differences -0.1 and -0.2: mean -0.15, sd 0.0707, t(0.975, 1) = 12.7062 -> half 0.6353
    assert "| dpo | 2 | (baseline) |" in table
    assert "| ddpo | 2 | -15.0 [-78.5, +48.5] | 0.35 | 65.0 |" in table


# ----------------------------------------------------------------------------------------------------- gates


def test_cell_labels_match_the_pixels():
    """Independent of the scene: classify each cell centre's pixel by its RGB colour and the column's shape."""
    for s in generate_samples(20, seed=2):
        labels = cell_labels(s)
        arr = np.asarray(s.image)
        cell = s.image.size[0] / 3
        for k, lab in enumerate(labels):
            col, row = divmod(k, 3)  # column by column
            px = tuple(int(v) for v in arr[int((row + 0.5) * cell), int((col + 0.5) * cell)])
            colour = next((c for c, rgb in COLOURS.items() if rgb == px), None)
            if colour is None:
                assert lab == 0
            else:
                group = next(g for g in s.scene.groups if g.position == ("left", "middle", "right")[col])
                assert CELL_CLASSES[lab] == f"{colour} {group.shape}" == group.category


def test_check_gates_verdicts():
    ok = {"colour": 0.95, "shape": 0.92}
    shuffled = {"colour": 0.3, "shape": 0.35}
    rep = check_gates(ok, shuffled, 0.97, {"rate": 0.4, "n_conflict": 50})
    assert rep.passed and rep.failures == [] and "gates PASS" in rep.lines()[0]
    rep = check_gates({"colour": 0.95, "shape": 0.35}, shuffled, 0.97, {"rate": 0.1, "n_conflict": 50})
    assert not rep.passed
    assert any("does not see shapes" in f for f in rep.failures)
    assert any("prior hallucination rate 0.100 < 0.3" in f for f in rep.failures)
    assert not any("colours" in f for f in rep.failures)
    strict = GateThresholds(min_colour_accuracy=0.99)
    assert not check_gates(ok, shuffled, 0.9, {"rate": 0.4, "n_conflict": 5}, strict).passed


def test_prior_hallucination_rate_hand_computed():
    anchor, partner = COOCCURRENCE_PAIRS[0]
    a_col, a_shape = anchor.split()
    p_col, p_shape = partner.split()
    conflict = Scene((ObjectGroup(a_shape, a_col, 1, "left"), ObjectGroup("triangle", "green", 1, "middle")))
    with_partner = Scene((ObjectGroup(a_shape, a_col, 1, "left"), ObjectGroup(p_shape, p_col, 1, "middle")))

    class S:
        def __init__(self, scene):
            self.scene = scene

    samples = [S(conflict), S(conflict), S(with_partner)]
    responses = [
        describe_scene(with_partner),  # names the absent partner
        describe_scene(conflict),  # faithful
        describe_scene(with_partner),  # not a conflict image
    ]
    assert prior_hallucination_rate(responses, samples) == {"rate": 0.5, "n_conflict": 2}


@pytest.fixture(scope="module")
def tiny():
    cfg = StudyConfig(seeds=(0,), hidden_size=32, num_layers=1, pref_epochs=3.0, pref_batch_size=4)
    tok = build_tokenizer(cfg)
    model, proc = build_model(cfg, tok, seed=0)
    return cfg, tok, model, proc


def test_teacher_forced_accuracy_against_a_joint_forward(tiny):
    """The accuracy against an independent computation: prompt + reference tokenised jointly by the processor,
    the colour / shape words located by decoding tokens one by one."""
    import torch

    cfg, tok, model, proc = tiny
    samples = generate_samples(3, seed=0, config=cfg.task("val"))
    got = teacher_forced_accuracy(model, proc, samples)
    hits = {"colour": 0, "shape": 0}
    n = {"colour": 0, "shape": 0}
    for s in samples:
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s.question}]}]
        prompt = proc.apply_chat_template(msgs, add_generation_prompt=True)
        enc = proc(images=[s.image], text=prompt + " " + s.reference, return_tensors="pt")
        n_prompt = proc(images=[s.image], text=prompt, return_tensors="pt")["input_ids"].shape[1]
        with torch.no_grad():
            pred = model(**enc).logits[0].argmax(-1)
        ids = enc["input_ids"][0].tolist()
        words = [tok.decode([t]).strip().lower() for t in ids]
        for t in range(n_prompt, len(ids)):
            w = words[t]
            kind = "colour" if w in COLOURS else "shape" if w.rstrip("s") in ("circle", "square", "triangle") else None
            if kind is None:
                continue
            n[kind] += 1
            p = tok.decode([int(pred[t - 1])]).strip().lower()
            hits[kind] += len(p) >= 3 and w.startswith(p)
    assert n["colour"] == got["n_colour"] and n["shape"] == got["n_shape"]
    assert got["colour"] == pytest.approx(hits["colour"] / n["colour"])
    assert got["shape"] == pytest.approx(hits["shape"] / n["shape"])


# ----------------------------------------------------------------------------------------- pairs and arms


def test_evaluate_responses_hand_computed():
    s = generate_samples(2, seed=0)
    perfect = [describe_scene(x.scene) for x in s]
    out = evaluate_responses(perfect, s)
    assert out["chair_i"] == 0.0 and out["recall"] == 1.0
    g = s[1].scene.groups
    resp = ["Nothing.", describe_scene(s[1].scene) + f" There is one {_absent(s[1].scene)} on the left."]
    out = evaluate_responses(resp, s)
    assert out["chair_i"] == pytest.approx(1 / (len(g) + 1))
    assert out["chair_s"] == pytest.approx(1 / 2)
    assert out["recall"] == pytest.approx(len(g) / (len(s[0].scene.groups) + len(g)))
    assert out["words_per_response"] == pytest.approx((1 + len(resp[1].split())) / 2)
    assert out["mentions_per_response"] == pytest.approx((len(g) + 1) / 2)
    assert math.isnan(out["chair_i_conflict"]) and out["n_conflict"] == 0


def test_preference_pairs_round_trip_and_ungrammatical_dropped(tmp_path):
    s = generate_samples(5, seed=3)
    responses = [describe_scene(x.scene) for x in s]  # faithful: no pair for rows 0 and 2
    for i in (1, 3):
        responses[i] += f" There is one {_absent(s[i].scene)} on the left."
    responses[4] = "There is one red circles on the left."  # ungrammatical: dropped and counted
    data, stats = build_preference_pairs(responses, s, tmp_path / "pairs.parquet")
    assert stats["responses"] == 5 and stats["pairs"] == 2 and stats["ungrammatical"] == 1
    assert sorted(data["idx"]) == [1, 3]
    for row in data:
        i = row["idx"]
        assert row["rejected"][0]["content"] == responses[i]
        # every true object is mentioned: the hallucinated sentence is deleted (nothing true left to say)
        assert row["chosen"][0]["content"] == describe_scene(s[i].scene)
        ((a, b),) = row["rejected_segments"]
        assert responses[i][a:b] == f" There is one {_absent(s[i].scene)} on the left."
        assert row["chosen_segments"] == []
    assert stats["deleted_segments"] == 2


def test_ranking_pairs_prefer_fewer_hallucinations(tmp_path):
    s = [x for x in generate_samples(30, seed=4) if len(x.scene.groups) >= 2][:3]
    good = [describe_scene(x.scene) for x in s]
    one_wrong = [g + f" There is one {_absent(x.scene)} on the left." for g, x in zip(good, s)]
    first = [one_wrong[0], good[1], good[2]]
    second = [good[0], one_wrong[1], "There is one"]  # row 2: ungrammatical
    data, stats = build_ranking_pairs(first, second, s, tmp_path / "r.parquet")
    assert stats == {"prompts": 3, "ungrammatical": 1, "pairs": 2, "pairs_used": 2}
    for row, i in zip(data, (0, 1)):
        assert row["chosen"][0]["content"] == good[i] and row["rejected"][0]["content"] == one_wrong[i]
        assert len(find_hallucinations(row["chosen"][0]["content"], s[i].scene)) < len(
            find_hallucinations(row["rejected"][0]["content"], s[i].scene)
        )


def test_config_errors():
    with pytest.raises(ValueError, match="unknown"):
        StudyConfig(arms=("ppo",))
    with pytest.raises(ValueError, match="must include 'dpo'"):
        StudyConfig(arms=("ddpo_g5",))
    with pytest.raises(ValueError, match="num_pairs"):
        StudyConfig(num_pairs=0)
    cfg = StudyConfig(seeds=(0, 1, 2), sweep_seeds=(1,), num_pairs=300, sweep_num_pairs=(100, 300), beta=0.5)
    assert cfg.settings(0) == [(300, 0.5)]
    assert cfg.settings(1) == [(300, 0.5), (100, 0.5), (300, 0.1)]
    assert cfg.task("sft").cooccurrence == cfg.sft_cooccurrence and cfg.task("test").layouts == "test"
    # the caption prior is an SFT-only property: pool, validation and test references are the truth
    cfg = StudyConfig(sft_caption_prior=0.3)
    assert cfg.task("sft").caption_prior_rate == 0.3
    assert all(cfg.task(part).caption_prior_rate == 0.0 for part in ("bridge", "pool", "val", "test"))
    with pytest.raises(ValueError, match="sft_caption_prior"):
        StudyConfig(sft_caption_prior=-0.1)
    with pytest.raises(ValueError, match="prior_text_position"):
        StudyConfig(prior_text_position="during")
    with pytest.raises(ValueError, match="prior_text_anchor_rate"):
        StudyConfig(prior_text_anchor_rate=2.0)


def test_arms_freeze_the_vision_side_and_leave_sft_untouched(tiny, tmp_path):
    import torch

    cfg, tok, model, proc = tiny
    s = generate_samples(4, seed=1, config=cfg.task("pool"))
    responses = [describe_scene(x.scene) + f" There is one {_absent(x.scene)} on the left." for x in s]
    data, stats = build_preference_pairs(responses, s, tmp_path / "pairs.parquet")
    assert stats["pairs_used"] == 4
    before = {k: v.clone() for k, v in model.state_dict().items()}
    vision = ("model.vision_tower.", "model.query")
    for name in ("dpo", "ddpo_g5_norm", "sft_corrected"):
        policy = train_arm(model, proc, data, ARMS[name], cfg, str(tmp_path / name), learning_rate=1e-3)
        changed = [k for k, v in policy.state_dict().items() if not torch.equal(v, before[k])]
        assert changed, f"{name}: no parameter moved"
        assert not [k for k in changed if k.startswith(vision)], f"{name}: the vision side moved"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    n = freeze_vision(policy)
    assert n == sum(p.numel() for p in policy.model.vision_tower.parameters()) + policy.model.query.numel()


def test_generate_responses_equal_unbatched_greedy_loop(tiny):
    import torch

    cfg, tok, model, proc = tiny
    s = generate_samples(3, seed=0, config=cfg.task("test"))
    out = generate_responses(model, proc, s, max_new_tokens=5)
    assert len(out) == 3 and proc.tokenizer.padding_side == tok.padding_side
    for sample, got in zip(s, out):
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sample.question}]}]
        enc = proc(
            images=[sample.image], text=proc.apply_chat_template(msgs, add_generation_prompt=True), return_tensors="pt"
        )
        ids = enc["input_ids"]
        for _ in range(5):
            with torch.no_grad():
                nxt = model(input_ids=ids, pixel_values=enc["pixel_values"]).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
            if nxt.item() == proc.tokenizer.eos_token_id:
                break
        text = proc.tokenizer.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        assert got == text.split("###")[0].strip()


# ----------------------------------------------------------------------------------------------- the study


TINY = dict(
    seeds=(0,),
    arms=("dpo", "ddpo_g5"),
    num_pairs=4,
    sweep_seeds=(),
    lr_grid=(1e-4,),
    bridge_samples=32,
    bridge_epochs=1.0,
    sft_samples=32,
    sft_epochs=1.0,
    pool_size=24,
    max_pool_size=48,
    val_samples=24,
    test_samples=16,
    pref_epochs=1.0,
    max_new_tokens=24,
    hidden_size=32,
    num_layers=1,
)


@pytest.mark.slow
def test_gates_stop_an_untrained_model(tmp_path):
    """An SFT model trained on 32 images cannot see: the study stops with the gate message, no result is written."""
    with pytest.raises(GateError, match="does not see"):
        run_study(StudyConfig(**TINY), tmp_path / "out", tmp_path / "work")
    assert not list((tmp_path / "out" / "seeds").glob("*.json"))


@pytest.mark.slow
def test_study_script_end_to_end_and_resume(tmp_path):
    """`benchmarks/hallucination_study.py` at the smallest size with the gates off: per-seed files, table, PNG;
    a second run loads the seeds instead of rerunning them."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "hallucination_study.py"), "--output-dir", str(tmp_path)]
    for k, v in TINY.items():
        flag = "--" + k.replace("_", "-")
        cmd += [flag, *map(str, v)] if isinstance(v, tuple) else [flag, str(v)]
    cmd += ["--seeds", "0", "1", "--no-enforce-gates", "--no-drop-ungrammatical"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    methods = [r["method"] for r in res["runs"]]
    assert methods.count("sft") == 2 and methods.count("dpo") == 2 and methods.count("ddpo_g5") == 2
    assert (tmp_path / "hallucination_study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| ddpo_g5 | 2 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "train_log.jsonl").read_text().count('"run"') > 0
    assert "{'loss'" not in proc.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("already done") == 2


def test_freeze_vision_official_scope(tiny):
    """The official trainer's lr-0 set: BEiT-3's vision experts and vision embedding; queries and language experts
    stay trainable."""
    import copy

    cfg, tok, model, proc = tiny
    m = copy.deepcopy(model)
    n = freeze_vision(m, "official")
    frozen = {k for k, p in m.model.vision_tower.named_parameters() if not p.requires_grad}
    expected = {
        k
        for k, _ in m.model.vision_tower.named_parameters()
        if ".vision_expert." in k
        or k.split(".")[1] in ("patch_embed", "cls_token", "mask_token", "vision_position_embeddings")
    }
    assert frozen == expected and n == sum(
        p.numel() for k, p in m.model.vision_tower.named_parameters() if k in frozen
    )
    assert m.model.query.requires_grad
    assert any(".language_expert." in k and p.requires_grad for k, p in m.model.vision_tower.named_parameters())
    with pytest.raises(ValueError, match="scope must be"):
        freeze_vision(m, "all")


@pytest.mark.parametrize(
    "mode, failing, expected_seeds, expected_passing",
    [
        ("replace", {2}, [0, 1, 2, 3, 4], [0, 1, 3, 4]),  # seed 2 fails: seed 4 (the next unused) replaces it
        ("replace", {2, 4}, [0, 1, 2, 3, 4, 5], [0, 1, 3, 5]),  # the replacement fails too: one more
        ("exclude", {2}, [0, 1, 2, 3], [0, 1, 3]),  # recorded, no replacement
    ],
)
def test_gate_failure_excludes_and_replaces_seeds(
    monkeypatch, tmp_path, mode, failing, expected_seeds, expected_passing
):
    """A seed whose SFT model fails the gates runs no arm; "replace" draws the next unused seed until len(seeds)
    pass; every seed, excluded or not, is saved and loaded back on resume."""
    import benchmarks.hallucination.study as study

    calls = []

    def fake_run_seed(config, seed, work, lrs, *args):
        calls.append(seed)
        if seed in failing:
            return {
                "seed": seed,
                "gates": {"passed": False},
                "excluded": True,
                "reason": f"seed {seed}",
                "runs": [],
                "seconds": 1.0,
            }
        run = {"seed": seed, "method": "dpo", "pairs": 1, "beta": 0.5}
        return {
            "seed": seed,
            "gates": {"passed": True},
            "learning_rates": {"dpo": 1e-4},
            "runs": [run],
            "seconds": 1.0,
        }

    monkeypatch.setattr(study, "run_seed", fake_run_seed)
    monkeypatch.setattr(study, "build_tokenizer", lambda config: None)
    config = StudyConfig(seeds=(0, 1, 2, 3), arms=("dpo",), gate_failure=mode, max_replacements=3)
    res = study.run_study(config, tmp_path / "out", tmp_path / "work")
    assert [s["seed"] for s in res["seeds"]] == expected_seeds
    assert sorted({r["seed"] for r in res["runs"]}) == expected_passing
    assert sorted(calls) == expected_seeds
    calls.clear()
    again = study.run_study(config, tmp_path / "out", tmp_path / "work")  # resume: everything loaded, nothing rerun
    assert calls == [] and [s["seed"] for s in again["seeds"]] == expected_seeds


def test_gate_failure_replacements_are_capped(monkeypatch, tmp_path):
    import benchmarks.hallucination.study as study

    monkeypatch.setattr(
        study,
        "run_seed",
        lambda config, seed, *a: (
            {"seed": seed, "excluded": True, "reason": "x", "runs": [], "seconds": 1.0}
            if seed
            else {"seed": 0, "learning_rates": {"dpo": 1e-4}, "runs": [], "seconds": 1.0}
        ),
    )
    monkeypatch.setattr(study, "build_tokenizer", lambda config: None)
    config = StudyConfig(seeds=(0, 1), arms=("dpo",), gate_failure="replace", max_replacements=2)
    res = study.run_study(config, tmp_path / "out", tmp_path / "work")
    assert [s["seed"] for s in res["seeds"]] == [0, 1, 2, 3]  # 1 failed, 2 and 3 drawn, then the cap
    with pytest.raises(ValueError, match="gate_failure"):
        StudyConfig(gate_failure="skip")


def test_bridge_images_mix_unbiased_and_sft_images():
    """`bridge_unbiased_fraction` takes the first round(f * n) images from the unbiased generator, then SFT images;
    0 is the SFT images, `bridge_data="unbiased"` the generator's only."""
    from benchmarks.hallucination.grounded import generate_samples
    from benchmarks.hallucination.study import _base, bridge_images

    train = [f"sft{i}" for i in range(20)]
    config = StudyConfig(bridge_samples=10, bridge_data="sft", bridge_unbiased_fraction=0.3)
    unbiased = generate_samples(10, seed=_base(4) + 6, config=config.task("bridge"))
    mixed = bridge_images(config, 4, train)
    assert [s.scene for s in mixed[:3]] == [s.scene for s in unbiased[:3]] and mixed[3:] == train[:7]
    assert bridge_images(StudyConfig(bridge_samples=10, bridge_data="sft"), 4, train) == train[:10]
    only = bridge_images(StudyConfig(bridge_samples=10), 4, train)  # the default: unbiased
    assert [s.scene for s in only] == [s.scene for s in unbiased]
    with pytest.raises(ValueError, match="bridge_unbiased_fraction"):
        StudyConfig(bridge_unbiased_fraction=1.5)


def test_prior_texts_follow_the_sft_cooccurrence():
    """The text-only prior corpus is drawn like the SFT images: with P(partner | anchor) = 1 every anchor sentence
    with a following group is followed by its partner's; with 0 never; training layouts only; deterministic."""
    from benchmarks.hallucination.grounded import COOCCURRENCE_PAIRS, parse_mentions
    from benchmarks.hallucination.study import prior_texts

    partner_of = dict(COOCCURRENCE_PAIRS)
    for co, expect in ((1.0, True), (0.0, False)):
        config = StudyConfig(prior_text_samples=300, sft_cooccurrence=co)
        texts = prior_texts(config, seed=3)
        assert len(texts) == 300 and texts == prior_texts(config, seed=3) and texts != prior_texts(config, seed=4)
        followed = []
        for t in texts:
            cats = [m.category for m in parse_mentions(t)]
            for a, b in zip(cats, cats[1:]):
                if a in partner_of:
                    followed.append(b == partner_of[a])
        assert len(followed) > 30
        assert all(followed) if expect else not any(followed)


def test_pretrain_language_prior_teaches_the_partner(tiny):
    """Text-only pre-training moves only the LLM side and makes the partner the likeliest colour after an anchor
    sentence (read off an independent forward pass), which the random model does not do."""
    import copy

    import torch

    from benchmarks.hallucination.gates import pretrain_language_prior

    cfg, tok, model, proc = tiny
    model = copy.deepcopy(model)
    texts = [
        f"There is one red circle on the {p}. There {v} {w} blue {n} on the {q}."
        for p, q in (("left", "right"), ("middle", "right"))
        for v, w, n in (("is", "one", "square"), ("are", "two", "squares"), ("are", "three", "squares"))
    ] * 20
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prefix = [tok.bos_token_id] * (tok.bos_token_id is not None) + tok(
        " There is one red circle on the left. There is one", add_special_tokens=False
    )["input_ids"]
    colours = {c: tok(" " + c, add_special_tokens=False)["input_ids"][0] for c in ("red", "green", "blue", "yellow")}

    def next_colour():
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prefix])).logits[0, -1]
        return max(colours, key=lambda c: float(logits[colours[c]]))

    assert next_colour() != "blue"
    loss = pretrain_language_prior(model, tok, texts, epochs=6, learning_rate=3e-3, batch_size=8)
    assert math.isfinite(loss) and loss < 1.0
    assert next_colour() == "blue"
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(k.startswith(("model.language_model.", "lm_head.")) for k in changed), changed
    with pytest.raises(ValueError, match="texts is empty"):
        pretrain_language_prior(model, tok, [])


def test_arms_answer_with_their_own_weights(tiny, tmp_path):
    """Regression: the SFT model's forward is patched by TRL's SFTTrainer; a policy copied from it must generate
    with its own trained weights (a plain deep copy generated with the SFT model's: every arm answered like SFT)."""
    import copy

    import torch

    from benchmarks.hallucination.study import sft

    cfg, tok, model, proc = tiny
    model = copy.deepcopy(model)
    train = generate_samples(16, seed=2, config=cfg.task("sft"))
    model = sft(model, proc, train, cfg, str(tmp_path / "sft"), epochs=1.0)
    assert "forward" in vars(model)  # TRL patched it
    s = generate_samples(4, seed=1, config=cfg.task("pool"))
    responses = [describe_scene(x.scene) + f" There is one {_absent(x.scene)} on the left." for x in s]
    data, _ = build_preference_pairs(responses, s, tmp_path / "pairs.parquet")
    policy = train_arm(model, proc, data, ARMS["ddpo_g5"], cfg, str(tmp_path / "arm"), learning_rate=1e-2)
    prompt = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s[0].question}]}],
        add_generation_prompt=True,
    )
    enc = proc(images=[[s[0].image]], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        got = policy(**enc).logits
        own = policy.lm_head(policy.model(**enc).last_hidden_state)
        sft_logits = model(**enc).logits
    torch.testing.assert_close(got, own)
    assert not torch.allclose(got, sft_logits, atol=1e-4)
