"""ELV: predictor, retrieval, E-step, EM loop, self-training, save/load, resume. Tiny random models, CPU."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from hf_ext.testing import tiny_bpe_tokenizer, tiny_elv_model
from hf_ext.trainers.elv import (
    ELVConfig,
    ELVModel,
    ELVModelConfig,
    ELVPredictorConfig,
    ELVPredictorModel,
    ELVTrainer,
    ExplanationBank,
    e_step_posterior,
    encode_sentences,
    official_code_e_step_distribution,
    similarity_prior,
)

CORPUS = [
    "the movie was good and fun",
    "the movie was bad and dull",
    "the food is good",
    "the food is bad",
    "because the word good appears",
    "because the word bad appears",
    "positive || negative ||",
]
LABELS = ["negative", "positive"]


def make_model(k: int = 3, pooling: str = "cls", seed: int = 0) -> ELVModel:
    tok = tiny_bpe_tokenizer(CORPUS * 3, vocab_size=260)
    return tiny_elv_model(
        LABELS, tok, num_explanations=k, pooling=pooling, seed=seed, max_target_length=6, max_seq_length=48
    )


TRAIN = [
    {"text": "the movie was good", "label": 1, "explanation": "because the word good appears"},
    {"text": "the food is bad", "label": 0, "explanation": "because the word bad appears"},
    {"text": "the food is good and fun", "label": 1},
    {"text": "the movie was bad and dull", "label": 0},
]
UNLABELED = [{"text": "the food was good"}, {"text": "the movie is bad"}, {"text": "good fun"}]


def make_args(tmp_path, **kw) -> ELVConfig:
    base = dict(
        output_dir=str(tmp_path),
        num_em_rounds=1,
        predictor_epochs=1,
        generator_epochs=1,
        generator_init_epochs=1,
        per_device_train_batch_size=2,
        per_device_eval_batch_size=4,
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        em_save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    base.update(kw)
    return ELVConfig(**base)


# ---------------------------------------------------------------------------------------------------------------------
# E-step rules, by hand
# ---------------------------------------------------------------------------------------------------------------------
def test_e_step_posterior_matches_hand_computation():
    sims = [0.9, 0.5, 0.1]
    lik = [0.2, 0.6, 0.9]
    tau = 0.5
    prior = [math.exp(s / tau) for s in sims]
    prior = [p / sum(prior) for p in prior]
    unnorm = [p * q for p, q in zip(prior, lik)]
    expected = [u / sum(unnorm) for u in unnorm]
    got = e_step_posterior(torch.tensor([sims]), torch.tensor([lik]), prior="softmax", temperature=tau)
    torch.testing.assert_close(got[0], torch.tensor(expected), rtol=1e-6, atol=1e-7)

    # uniform prior: proportional to the likelihoods alone; an invalid slot gets 0
    got = e_step_posterior(
        torch.tensor([sims]), torch.tensor([lik]), torch.tensor([[True, True, False]]), prior="uniform"
    )
    torch.testing.assert_close(got[0], torch.tensor([0.2 / 0.8, 0.6 / 0.8, 0.0]))


def test_similarity_prior_masks_and_validates():
    p = similarity_prior(torch.tensor([[1.0, 0.0]]), torch.tensor([[True, False]]), "softmax", 0.1)
    assert p.tolist() == [[1.0, 0.0]]
    with pytest.raises(ValueError, match="prior_temperature"):
        similarity_prior(torch.tensor([[1.0]]), prior="softmax", temperature=0.0)
    with pytest.raises(ValueError, match="prior must be"):
        similarity_prior(torch.tensor([[1.0]]), prior="cosine")


def test_official_code_rule_prefers_dissimilar_candidates():
    sims = [0.9, 0.5, 0.1]
    p = 0.7
    scores = [math.sqrt(2 - 2 * s) * p for s in sims]
    expected = [math.exp(x) / sum(math.exp(y) for y in scores) for y in [0] for x in scores]
    got = official_code_e_step_distribution(torch.tensor([sims]), torch.tensor([p]))
    torch.testing.assert_close(got[0], torch.tensor(expected), rtol=1e-6, atol=1e-7)
    assert got[0].argmax() == 2  # the *least* similar candidate is the most likely: the documented bug


# ---------------------------------------------------------------------------------------------------------------------
# Retrieval
# ---------------------------------------------------------------------------------------------------------------------
def test_bank_retrieves_nearest_and_excludes_own_entries():
    emb = torch.nn.functional.normalize(torch.randn(6, 5), dim=-1)
    bank = ExplanationBank()
    bank.add([f"e{i}" for i in range(6)], [f"s{i}" for i in range(6)], emb, source_ids=[0, 1, 2, 3, 4, 4])
    query = torch.nn.functional.normalize(torch.randn(2, 5), dim=-1)
    idx, sims, mask = bank.retrieve(query, 3, query_ids=[-1, 4])
    for q in range(2):
        scores = [(float(query[q] @ emb[i]), i) for i in range(6) if not (q == 1 and i in (4, 5))]
        best = sorted(scores, reverse=True)[:3]
        assert idx[q].tolist() == [i for _, i in best]
        torch.testing.assert_close(sims[q], torch.tensor([s for s, _ in best]))
    assert mask.all()
    # fewer eligible entries than k: trailing slots are masked
    idx, sims, mask = bank.retrieve(query[1:], 6, query_ids=[4])
    assert mask[0].tolist() == [True] * 4 + [False] * 2


def test_encode_sentences_is_normalised_masked_mean():
    m = make_model()
    texts = ["the food is good", "bad"]
    got = encode_sentences(texts, m.retriever, m.retriever_tokenizer)
    for i, t in enumerate(texts):
        ids = m.retriever_tokenizer(t, return_tensors="pt")
        with torch.no_grad():
            h = m.retriever(**ids).last_hidden_state[0]
        ref = h.mean(0) / h.mean(0).norm()
        torch.testing.assert_close(got[i], ref, rtol=1e-5, atol=1e-6)


def test_model_retrieve_returns_explanations_of_nearest_sentences():
    m = make_model()
    sources = ["the food is good", "the movie was bad and dull", "good fun"]
    m.bank.add(["ea", "eb", "ec"], sources, m.embed(sources), source_ids=[0, 1, 2], origin="human")
    query = "the food is good and fun"
    q = m.embed([query])[0]
    ranked = sorted(range(3), key=lambda i: -float(q @ m.embed([sources[i]])[0]))
    expl, *_ = m.retrieve([query], k=2)
    assert expl[0] == [["ea", "eb", "ec"][i] for i in ranked[:2]]


# ---------------------------------------------------------------------------------------------------------------------
# Predictor
# ---------------------------------------------------------------------------------------------------------------------
def test_predictor_aggregation_and_explanation_mask():
    m = make_model()
    pred = m.predictor.eval()
    batch = m.encode_predictor_inputs(["the food is good"], [["because the word good appears", "bad"]])
    with torch.no_grad():
        out = pred(**batch)
        # each pair alone, as a 2-D input
        singles = [
            pred(input_ids=batch["input_ids"][:, j], attention_mask=batch["attention_mask"][:, j]) for j in range(2)
        ]
        torch.testing.assert_close(out.pair_logits[0, 0], singles[0].logits[0])
        # mean aggregation = classifier(mean of the pooled pair vectors)
        ref = pred.classifier(out.pooled[0].mean(0))
        torch.testing.assert_close(out.logits[0], ref)
        # a masked slot does not contribute
        masked = pred(**{**batch, "explanation_mask": torch.tensor([[1, 0]])})
        torch.testing.assert_close(masked.logits[0], singles[0].logits[0])


def test_entity_marker_pooling_and_formatting():
    m = make_model(pooling="entity_markers")
    ex = {"text": "the food is good", "subj_start": 4, "subj_end": 8, "obj_start": 12, "obj_end": 16}
    assert m.format_example(ex) == "the <subj> food </subj> is <obj> good </obj>"
    adjacent = {"text": "ab", "subj_start": 0, "subj_end": 1, "obj_start": 1, "obj_end": 2}
    assert m.format_example(adjacent) == "<subj> a </subj><obj> b </obj>"
    with pytest.raises(ValueError, match="overlapping"):
        m.format_example({"text": "abc", "subj_start": 0, "subj_end": 2, "obj_start": 1, "obj_end": 3})
    m.add_entity_markers()
    tok, pred = m.predictor_tokenizer, m.predictor.eval()
    batch = m.encode_predictor_inputs([m.format_example(ex)], [["expl"]])
    ids = batch["input_ids"][0, 0].tolist()
    s_pos, o_pos = ids.index(pred.config.subj_token_id), ids.index(pred.config.obj_token_id)
    with torch.no_grad():
        out = pred(**batch)
        hidden = pred.encoder(
            input_ids=batch["input_ids"][:, 0], attention_mask=batch["attention_mask"][:, 0]
        ).last_hidden_state[0]
    torch.testing.assert_close(out.pooled[0, 0], torch.cat([hidden[s_pos], hidden[o_pos]]))
    assert tok.convert_ids_to_tokens(ids[s_pos]) == "<subj>"


# ---------------------------------------------------------------------------------------------------------------------
# The trainer's E-step against an independent computation
# ---------------------------------------------------------------------------------------------------------------------
def test_trainer_e_step_distribution_equals_hand_computed(tmp_path):
    m = make_model(k=3)
    trainer = ELVTrainer(m, make_args(tmp_path, prior_temperature=0.5), train_dataset=TRAIN)
    sources = ["the food is good", "the movie was bad and dull", "good fun", "the movie was good"]
    expls = ["because the word good appears", "because the word bad appears", "fun", "good"]
    m.bank.add(expls, sources, m.embed(sources), source_ids=[10, 11, 12, 13], origin="human")
    text, gold = "the food is good and fun", 1
    q, idx, mask, lik = trainer.e_step_distribution([text], [gold], [13])  # id 13 excludes the last entry

    # independent: cosine to the 3 eligible sources, predictor probability of the gold label per candidate
    def emb(s):
        ids = m.retriever_tokenizer(s, return_tensors="pt")
        with torch.no_grad():
            h = m.retriever(**ids).last_hidden_state[0].mean(0)
        return h / h.norm()

    cos = [float(emb(text) @ emb(s)) for s in sources[:3]]
    order = sorted(range(3), key=lambda i: -cos[i])
    pred = m.predictor.eval()
    p_gold = []
    for i in order:
        enc = m.predictor_tokenizer(text, expls[i], return_tensors="pt")
        with torch.no_grad():
            p_gold.append(float(torch.softmax(pred(**enc).logits, -1)[0, gold]))
    prior = [math.exp(cos[i] / 0.5) for i in order]
    unnorm = [p * g for p, g in zip(prior, p_gold)]
    expected = [u / sum(unnorm) for u in unnorm]

    assert idx[0].tolist() == order and mask.all()
    torch.testing.assert_close(lik[0], torch.tensor(p_gold), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q[0], torch.tensor(expected), rtol=1e-5, atol=1e-6)
    # candidates are scored on their own: the likelihoods differ between candidates
    assert len({round(x, 6) for x in p_gold}) == 3


# ---------------------------------------------------------------------------------------------------------------------
# EM loop, self-training
# ---------------------------------------------------------------------------------------------------------------------
def test_one_em_round_end_to_end(tmp_path):
    m = make_model(k=2)
    before = {
        "generator": {k: v.clone() for k, v in m.generator.state_dict().items()},
        "predictor": {k: v.clone() for k, v in m.predictor.state_dict().items()},
    }
    trainer = ELVTrainer(m, make_args(tmp_path), train_dataset=TRAIN, eval_dataset=TRAIN)
    last = trainer.train()
    phases = [e["phase"] for e in trainer.state["log_history"]]
    assert phases == ["init_generator", "predictor_m_step", "e_step", "generator_m_step"]
    assert set(trainer._e_step_samples) == {0, 1, 2, 3}
    assert all(s in m.bank.explanations for s in trainer._e_step_samples.values())
    # bank = 2 human + one generated per labelled example
    assert m.bank.origins.count("human") == 2 and m.bank.origins.count("generated") == len(TRAIN)
    assert "eval/accuracy" in last and 0.0 <= last["eval/accuracy"] <= 1.0
    # independent: the trained predictor's own probabilities (K retrieved explanations) against the gold labels
    probs = m.predict_proba([ex["text"] for ex in TRAIN])
    gold = torch.tensor([ex["label"] for ex in TRAIN])
    assert last["eval/accuracy"] == pytest.approx((probs.argmax(-1) == gold).float().mean().item())
    for part in ("generator", "predictor"):
        after = getattr(m, part).state_dict()
        changed = [k for k, v in before[part].items() if not torch.equal(v, after[k])]
        # every trainable tensor that receives gradient changes (T5's relative-attention table of the decoder
        # cross-attention does not exist; count the bulk)
        assert len(changed) >= 0.8 * len(before[part]), (part, len(changed), len(before[part]))


def test_self_training_adds_exactly_the_most_confident(tmp_path):
    m = make_model(k=2)
    args = make_args(tmp_path, num_em_rounds=0, self_training_rounds=1, self_training_samples_per_round=2)
    trainer = ELVTrainer(m, args, train_dataset=TRAIN, unlabeled_dataset=UNLABELED)
    trainer.train()  # init_generator, pseudo_label
    # independent: the predictor's probabilities with retrieved explanations, top-2 by confidence
    probs = m.predict_proba([u["text"] for u in UNLABELED])
    conf, pred = probs.max(-1)
    top = sorted(range(3), key=lambda i: (-float(conf[i]), i))[:2]
    assert [p["id"] for p in trainer._pseudo] == [len(TRAIN) + i for i in top]
    assert [p["label"] for p in trainer._pseudo] == [int(pred[i]) for i in top]
    assert len(trainer._labelled()) == len(TRAIN) + 2
    log = trainer.state["log_history"][-1]
    assert log["phase"] == "pseudo_label" and log["self_training/added"] == 2
    # the next round never picks an already pseudo-labelled example
    chosen, _ = trainer.select_pseudo_labels()
    assert [c["id"] for c in chosen] == [len(TRAIN) + i for i in range(3) if i not in top]


def test_self_training_from_scratch_restores_initial_weights(tmp_path):
    m = make_model(k=2)
    initial = {k: v.clone() for k, v in m.generator.state_dict().items()}
    args = make_args(
        tmp_path,
        num_em_rounds=0,
        self_training_rounds=1,
        self_training_samples_per_round=1,
        self_training_from_scratch=True,
    )
    trainer = ELVTrainer(m, args, train_dataset=TRAIN, unlabeled_dataset=UNLABELED)
    assert [p for _, _, p in trainer._schedule] == ["init_generator", "pseudo_label", "init_generator"]
    trainer._schedule = trainer._schedule[:2]  # stop right after the re-initialisation
    trainer.train()
    assert math.isfinite(trainer.state["log_history"][0]["generator/loss"])  # the generator was trained, then reset
    for key, value in m.generator.state_dict().items():
        assert torch.equal(value, initial[key]), key
    assert len(trainer._pseudo) == 1  # the pseudo-labels survive the re-initialisation


# ---------------------------------------------------------------------------------------------------------------------
# Save / load / push
# ---------------------------------------------------------------------------------------------------------------------
def _filled_model():
    m = make_model(k=2)
    sources = ["the food is good", "the movie was bad and dull", "good fun"]
    m.bank.add(["ea", "eb", "ec"], sources, m.embed(sources), source_ids=[0, 1, 2], origin="human", labels=[1, 0, 1])
    return m


def test_save_and_load_roundtrip(tmp_path):
    m = _filled_model()
    m.save_pretrained(tmp_path / "elv")
    files = set(os.listdir(tmp_path / "elv"))
    assert {"generator", "predictor", "retriever", "elv_config.json", "explanation_bank.json"} <= files
    assert os.path.isfile(tmp_path / "elv" / "predictor" / "model.safetensors")
    loaded = ELVModel.from_pretrained(tmp_path / "elv")
    texts = ["the food was good", "the movie is bad"]
    torch.testing.assert_close(loaded.predict_proba(texts), m.predict_proba(texts))
    assert loaded.generate_explanations(texts, [1, 0]) == m.generate_explanations(texts, [1, 0])
    assert loaded.bank.explanations == m.bank.explanations and loaded.bank.labels == [1, 0, 1]
    torch.testing.assert_close(loaded.bank.embeddings, m.bank.embeddings)
    assert loaded.config == m.config
    from transformers import AutoModel

    assert type(AutoModel.from_pretrained(tmp_path / "elv" / "predictor")) is ELVPredictorModel
    for a, b in zip(m.predictor.state_dict().values(), loaded.predictor.state_dict().values()):
        assert torch.equal(a, b)


def test_push_to_hub_and_load_by_repo_id(local_hub):
    """Both parts, the retriever and the bank travel as one repository through the local Hub server."""
    import uuid

    from huggingface_hub import HfApi

    m = _filled_model()
    repo = f"tester/elv-{uuid.uuid4().hex[:8]}"
    m.push_to_hub(repo)
    files = set(HfApi().list_repo_files(repo))
    assert {"elv_config.json", "predictor/model.safetensors", "generator/model.safetensors", "README.md"} <= files
    from huggingface_hub import ModelCard

    assert "2011.05268" in ModelCard.load(repo).text
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    loaded = ELVModel.from_pretrained(repo)
    texts = ["the food was good", "the movie is bad"]
    torch.testing.assert_close(loaded.predict_proba(texts), m.predict_proba(texts))
    assert loaded.bank.explanations == ["ea", "eb", "ec"] and loaded.config.label_names == LABELS
    with pytest.raises(Exception, match="not-a-revision"):
        ELVModel.from_pretrained(repo, revision="not-a-revision")


def test_load_rejects_a_folder_without_elv_config(tmp_path):
    with pytest.raises(ValueError, match="elv_config.json"):
        ELVModel.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints and resume
# ---------------------------------------------------------------------------------------------------------------------
def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    # Not bit-exact: CPU kernels may pick different reduction paths depending on memory alignment, so two processes
    # (or two allocation histories) running identical float32 steps can differ in the last bits.
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=1e-4, atol=1e-5, msg=key)


def test_resume_mid_em_reproduces_the_uninterrupted_run(tmp_path):
    kw = dict(num_em_rounds=1, em_save_strategy="phase", self_training_rounds=1, self_training_samples_per_round=1)

    def trainer(out, **extra):
        return ELVTrainer(
            make_model(k=2),
            make_args(tmp_path / out, **{**kw, **extra}),
            train_dataset=TRAIN,
            unlabeled_dataset=UNLABELED,
        )

    full = trainer("a")
    full.train()
    names = sorted(os.listdir(tmp_path / "a"))
    assert names == sorted(f"checkpoint-{i}" for i in range(1, len(full._schedule) + 1))  # no temporary leftovers
    # checkpoint-3 = after round 1's E-step: resuming must reuse the saved E-step samples
    with open(tmp_path / "a" / "checkpoint-3" / "elv_trainer_state.json") as f:
        state = json.load(f)
    assert state["completed_phases"] == 3 and state["schedule"][2] == [0, 1, "e_step"]
    assert len(state["e_step_samples"]) == len(TRAIN)

    resumed = trainer("b", em_save_strategy="no")  # the save strategy is not part of the schedule
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))
    _assert_same_weights(full.model.generator, resumed.model.generator)
    _assert_same_weights(full.model.predictor, resumed.model.predictor)
    assert resumed.model.bank.explanations == full.model.bank.explanations
    assert [(p["id"], p["label"]) for p in resumed._pseudo] == [(p["id"], p["label"]) for p in full._pseudo]
    phases = lambda t: [(e["stage"], e["round"], e["phase"]) for e in t.state["log_history"]]  # noqa: E731
    assert phases(resumed) == phases(full)
    for a, b in zip(full.state["log_history"], resumed.state["log_history"]):
        for key, value in a.items():
            expected = value if isinstance(value, str) else pytest.approx(value, rel=1e-4, abs=1e-5)
            assert b[key] == expected, key

    # resume_from_checkpoint=True picks the latest checkpoint: nothing is left to do
    again = trainer("a")
    again.train(resume_from_checkpoint=True)
    assert again.state["completed_phases"] == len(again._schedule)


def test_resume_rejects_a_different_schedule(tmp_path):
    args = make_args(tmp_path, num_em_rounds=0, em_save_strategy="phase", self_training_init_predictor_epochs=1)
    ELVTrainer(make_model(k=2), args, train_dataset=TRAIN).train()
    assert os.path.isdir(tmp_path / "checkpoint-2")  # init_generator, init_predictor
    # a schedule whose completed part differs (no init_predictor) cannot resume from it
    other = ELVTrainer(make_model(k=2), make_args(tmp_path, num_em_rounds=1), train_dataset=TRAIN)
    with pytest.raises(ValueError, match="different schedule"):
        other.train(resume_from_checkpoint=True)
    with pytest.raises(ValueError, match="has no checkpoint"):
        ELVTrainer(make_model(k=2), make_args(tmp_path / "empty"), train_dataset=TRAIN).train(True)


# ---------------------------------------------------------------------------------------------------------------------
# Errors and exports
# ---------------------------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors(tmp_path):
    m = make_model()
    with pytest.raises(ValueError, match="no human explanation"):
        ELVTrainer(m, make_args(tmp_path), train_dataset=[{"text": "a", "label": 0}])
    with pytest.raises(ValueError, match=r"train_dataset\[1\]: label 5"):
        ELVTrainer(m, make_args(tmp_path), train_dataset=[TRAIN[0], {"text": "a", "label": 5}])
    with pytest.raises(ValueError, match="unlabeled_dataset"):
        ELVTrainer(m, make_args(tmp_path, self_training_rounds=1), train_dataset=TRAIN)
    with pytest.raises(ValueError, match="e_step_scoring"):
        make_args(tmp_path, e_step_scoring="mean")
    with pytest.raises(ValueError, match="label_names"):
        ELVModelConfig(label_names=[])
    with pytest.raises(ValueError, match="num_labels"):
        ELVModel(
            m.generator,
            m.generator_tokenizer,
            m.predictor,
            m.predictor_tokenizer,
            ELVModelConfig(label_names=["a", "b", "c"]),
        )
    with pytest.raises(ValueError, match="pooling"):
        ELVPredictorConfig(pooling="max")


def test_official_code_scoring_matches_its_formula(tmp_path):
    m = make_model(k=2)
    trainer = ELVTrainer(m, make_args(tmp_path, e_step_scoring="official_code"), train_dataset=TRAIN)
    sources = ["the food is good", "the movie was bad and dull"]
    m.bank.add(["ea", "eb"], sources, m.embed(sources), source_ids=[10, 11], origin="human")
    text, gold = "the food is good and fun", 1
    q, idx, mask, lik = trainer.e_step_distribution([text], [gold], [-1])
    assert lik is None
    cands = [["ea", "eb"][int(i)] for i in idx[0]]
    p = float(m.predict_proba_with([text], [cands])[0, gold])  # one probability shared by all candidates
    cos = [float(m.embed([text])[0] @ m.embed([sources[int(i)]])[0]) for i in idx[0]]
    scores = [math.sqrt(2 - 2 * c) * p for c in cos]
    expected = [math.exp(x) / sum(math.exp(y) for y in scores) for x in scores]
    torch.testing.assert_close(q[0], torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_lazy_exports():
    import hf_ext

    assert hf_ext.ELVTrainer is ELVTrainer and hf_ext.ELVConfig is ELVConfig and hf_ext.ELVModel is ELVModel


_DDP_SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests_dir!r})
from test_elv import TRAIN, make_args, make_model
from hf_ext.trainers.elv import ELVTrainer
t = ELVTrainer(make_model(k=2), make_args(sys.argv[1], em_save_strategy="round"), train_dataset=TRAIN * 2)
last = t.train()
result = {{"world": t.accelerator.num_processes, "type": str(t.accelerator.distributed_type), "last": last}}
with open(sys.argv[1] + f"-rank{{t.accelerator.process_index}}.json", "w") as f:
    json.dump(result, f)
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_ddp_run(tmp_path):
    """Two CPU ranks (torchrun + ACCELERATE_USE_CPU, the MULTI_CPU path of `accelerate launch`) run one EM round;
    both ranks end with the same metrics and rank 0 writes the checkpoint."""
    import subprocess
    import sys

    script = tmp_path / "ddp_elv.py"
    script.write_text(_DDP_SCRIPT.format(tests_dir=os.path.dirname(__file__)))
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    proc = subprocess.run(
        # --standalone: a free rendezvous port, so concurrent multi-process tests (xdist) do not collide on 29500
        [torchrun, "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = []
    for rank in (0, 1):
        with open(f"{tmp_path / 'out'}-rank{rank}.json") as f:
            results.append(json.load(f))
    assert all(r["world"] == 2 and "MULTI_CPU" in r["type"] for r in results)
    assert results[0]["last"] == results[1]["last"]
    assert os.path.isfile(tmp_path / "out" / "checkpoint-4" / "elv_trainer_state.json")


def test_trainer_package_defines_no_transformers_model_or_config():
    """The predictor (a PreTrainedModel with its PretrainedConfig) lives under hf_ext.models; the trainer package holds
    training code and plain-dataclass configs only (ELVConfig, ELVModelConfig, both in elv_config)."""
    from transformers import PretrainedConfig, PreTrainedModel

    from hf_ext.trainers.elv import elv_config, elv_model, elv_trainer, retrieval

    defined = [
        obj
        for module in (elv_config, elv_model, elv_trainer, retrieval)
        for obj in vars(module).values()
        if isinstance(obj, type) and obj.__module__ == module.__name__
    ]
    assert {cls.__name__ for cls in defined} >= {"ELVConfig", "ELVModelConfig", "ELVModel", "ELVTrainer"}
    assert ELVConfig.__module__ == ELVModelConfig.__module__ == "hf_ext.trainers.elv.elv_config"
    assert [cls for cls in defined if issubclass(cls, (PreTrainedModel, PretrainedConfig))] == []
    assert ELVPredictorModel.__module__.startswith("hf_ext.models.elv_predictor.")
