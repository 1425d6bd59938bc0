"""The hallucination study pipeline end to end at the smallest size, plus its pieces against independent values."""

import math
import subprocess
import sys
from pathlib import Path

import pytest

from hf_ext.benchmarks.grounded import describe_scene, find_hallucinations, generate_samples
from hf_ext.benchmarks.hallucination import (
    ARMS,
    StudyConfig,
    build_model,
    build_preference_pairs,
    build_tokenizer,
    evaluate_responses,
    format_table,
    generate_responses,
    run_study,
    summarize,
    train_preference,
)

ROOT = Path(__file__).resolve().parents[1]


def test_evaluate_responses_hand_computed():
    s = generate_samples(2, seed=0)
    perfect = [describe_scene(x.scene) for x in s]
    assert evaluate_responses(perfect, s)["chair_i"] == 0.0
    assert evaluate_responses(perfect, s)["recall"] == 1.0
    # one response says nothing, the other hallucinates one extra object out of its mentions
    g = s[1].scene.groups
    extra = next(
        f"{c} {sh}"
        for c in ("red", "green", "blue", "yellow")
        for sh in ("circle", "square", "triangle")
        if f"{c} {sh}" not in s[1].scene.categories
    )
    resp = ["Nothing.", describe_scene(s[1].scene) + f" There is one {extra} on the left."]
    out = evaluate_responses(resp, s)
    assert out["chair_i"] == pytest.approx(1 / (len(g) + 1))
    assert out["chair_s"] == pytest.approx(1 / 2)
    assert out["recall"] == pytest.approx(len(g) / (len(s[0].scene.groups) + len(g)))


def test_summarize_and_table():
    runs = [
        {"seed": i, "method": m, "chair_i": v, "chair_s": v, "recall": 1 - v, "count_err": 0.0, "position_err": 0.0}
        for i, (m, v) in enumerate([("sft", 0.4), ("sft", 0.6), ("dpo", 0.2), ("dpo", 0.4)])
    ]
    rows = summarize(runs)
    assert rows[0]["method"] == "sft" and rows[0]["chair_i"] == pytest.approx(0.5)
    assert rows[0]["chair_i_std"] == pytest.approx(math.sqrt(((0.4 - 0.5) ** 2 + (0.6 - 0.5) ** 2) / 1))
    table = format_table(runs)
    assert "| dpo | 2 | 30.0 ± 14.1 |" in table and "-40.0%" in table


def _absent(scene):
    return next(
        f"{c} {sh}"
        for c in ("red", "green", "blue", "yellow")
        for sh in ("circle", "square", "triangle")
        if f"{c} {sh}" not in scene.categories
    )


def test_preference_pairs_round_trip_through_the_rlhf_v_builder(tmp_path):
    s = generate_samples(4, seed=3)
    responses = [describe_scene(x.scene) for x in s]  # faithful: no pair for rows 0 and 2
    for i in (1, 3):
        responses[i] += f" There is one {_absent(s[i].scene)} on the left."
    data, stats = build_preference_pairs(responses, s, tmp_path / "pairs.parquet")
    assert stats["responses"] == 4 and stats["pairs"] == 2
    assert sorted(data["idx"]) == [1, 3]
    for row in data:
        i = row["idx"]
        assert row["rejected"][0]["content"] == responses[i]
        # the hallucinated sentence is the one corrected segment (deleted: every true object is mentioned)
        assert row["chosen"][0]["content"] == describe_scene(s[i].scene)
        ((a, b),) = row["rejected_segments"]
        assert responses[i][a:b] == f" There is one {_absent(s[i].scene)} on the left."
        assert row["chosen_segments"] == []
        assert row["images"][0].size == s[i].image.size


def test_config_errors():
    with pytest.raises(ValueError, match="unknown"):
        StudyConfig(arms=("ppo",))
    with pytest.raises(ValueError, match="num_pairs"):
        StudyConfig(num_pairs=0)
    assert set(StudyConfig().arms) <= set(ARMS)


def test_generate_responses_equal_unbatched_greedy_loop():
    import torch

    cfg = StudyConfig(seeds=(0,))
    tok = build_tokenizer(cfg)
    model, proc = build_model(cfg, tok, seed=0)
    s = generate_samples(3, seed=0, config=cfg.task)
    out = generate_responses(model, proc, s, max_new_tokens=5)
    assert len(out) == 3 and all(isinstance(x, str) for x in out)
    assert proc.tokenizer.padding_side == tok.padding_side  # restored
    # independent: one sample at a time, a greedy loop over full forward passes, text before the "###" stop marker
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


TINY = dict(
    seeds=(0,),
    num_pairs=4,
    sft_samples=16,
    sft_epochs=1.0,
    pool_size=16,
    test_samples=8,
    dpo_epochs=1.0,
    max_new_tokens=24,
    hidden_size=32,
    num_layers=1,
)


def test_preference_training_smoke(tmp_path):
    """Fast: pairs through the RLHF-V builder, one TRL-DPO and one dense-DPO step from the same weights."""
    import torch

    # 3 steps: the first is the 10% warm-up (learning rate 0)
    cfg = StudyConfig(hidden_size=32, num_layers=1, dpo_epochs=3.0, dpo_batch_size=4)
    model, proc = build_model(cfg, build_tokenizer(cfg), seed=0)
    s = generate_samples(4, seed=1, config=cfg.task)
    responses = [describe_scene(x.scene) + f" There is one {_absent(x.scene)} on the left." for x in s]
    data, stats = build_preference_pairs(responses, s, tmp_path / "pairs.parquet")
    assert stats["pairs_used"] == 4
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for arm in ("dpo", "ddpo_g5_norm"):
        policy = train_preference(model, proc, data, ARMS[arm], cfg, str(tmp_path / arm))
        changed = [k for k, v in policy.state_dict().items() if not torch.equal(v, before[k])]
        assert changed, f"{arm}: no parameter moved"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the SFT model is untouched
    out = evaluate_responses(generate_responses(policy, proc, s, max_new_tokens=8), s)
    assert 0.0 <= out["chair_i"] <= 1.0


@pytest.mark.slow
def test_run_study_smallest(tmp_path):
    """The whole pipeline in-process at the smallest size: SFT, sampling, pairs, a DPO and a dense-DPO arm."""
    res = run_study(StudyConfig(arms=("dpo", "ddpo_g5_norm"), **TINY), tmp_path)
    assert [r["method"] for r in res["runs"]] == ["sft", "dpo", "ddpo_g5_norm"]
    assert res["pairs"][0]["pairs_used"] == 4
    for r in res["runs"]:
        assert 0.0 <= r["chair_i"] <= 1.0 and 0.0 <= r["recall"] <= 1.0


@pytest.mark.slow
def test_study_script_end_to_end(tmp_path):
    """`benchmarks/hallucination_study.py` at the smallest size: every arm, two seeds, table, JSON and PNG."""
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "hallucination_study.py"),
        "--output-dir",
        str(tmp_path),
        "--seeds",
        "0",
        "1",
        "--num-pairs",
        "4",
        "--sft-samples",
        "16",
        "--sft-epochs",
        "1",
        "--pool-size",
        "16",
        "--test-samples",
        "8",
        "--dpo-epochs",
        "1",
        "--max-new-tokens",
        "24",
        "--hidden-size",
        "32",
        "--num-layers",
        "1",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    res = json.loads((tmp_path / "results.json").read_text())
    methods = [r["method"] for r in res["runs"]]
    assert methods.count("sft") == 2 and all(methods.count(a) == 2 for a in StudyConfig().arms)
    assert (tmp_path / "hallucination_study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| sft | 2 |" in (tmp_path / "results.md").read_text()


def test_add_missing_pairs_only_from_hallucinated_answers(tmp_path):
    s = [x for x in generate_samples(40, seed=4) if len(x.scene.groups) >= 2][:2]
    first = describe_scene(s[0].scene).split(". ")[0] + "."  # true but incomplete: no hallucination, no pair
    wrong = describe_scene(s[1].scene).split(". ")[0] + f". There is one {_absent(s[1].scene)} on the left."
    data, stats = build_preference_pairs([first, wrong], s, tmp_path / "p.parquet", add_missing=True)
    assert stats["pairs_used"] == 1 and data[0]["idx"] == s[1].idx
    # the hallucinated object is replaced by an omitted one, and every omitted object is added
    assert find_hallucinations(data[0]["chosen"][0]["content"], s[1].scene) == []
    assert evaluate_responses([data[0]["chosen"][0]["content"]], [s[1]])["recall"] == 1.0
