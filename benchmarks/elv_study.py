"""Study: does ELV beat the same predictor trained on labels alone when labels are few?

The paper's claim (Zhou, Hu et al., NeurIPS 2020): with a small set of human explanations, treating explanations as
latent variables (variational EM between an explanation generator and an explanation-augmented predictor) improves
prediction over a predictor trained on the labels alone, especially with few labels.

The task is synthetic and built in code, so the study runs offline on a CPU with tiny random models:

* 3 classes. Each class owns a group of cue words and a group of topic words. A sentence is 7 filler words, some of
  them drawn from its class's topic words (``--topic-prob``), plus one cue word of its class at a random position.
* Human explanations name the cue and its group: "the word zorb is a warm word" (groups warm / cold / dry for the
  labels A / B / C). Only ``--n-explained`` labelled examples have one.
* Conditions, same predictor architecture, tokenizer, optimiser and number of predictor epochs:
  - ``labels-only``: the predictor reads the sentence (one empty explanation slot), trained on the labelled examples.
  - ``elv``: ``ELVTrainer`` (init generator, ``--em-rounds`` EM rounds); prediction with K retrieved explanations.
  - ``self-train`` (with ``--self-training``): labels-only plus plain self-training on the unlabelled pool (same
    pseudo-labelling schedule as EST), to separate the effect of explanations from that of pseudo-labels.
  - ``elv+est`` (with ``--self-training``): ELV plus explanation-based self-training on the unlabelled pool.

Run (reduced size: 5 seeds, 12 labels; a few minutes on 2 shared cores)::

    .venv/bin/python benchmarks/elv_study.py
    .venv/bin/python benchmarks/elv_study.py --full          # more seeds and label budgets, with self-training

Models are tiny and randomly initialised (hidden 32, 2 layers), unlike the paper's pretrained BERT/UniLM, so learning
rates are 1e-3 rather than the paper's 1e-5. Numbers printed are test accuracy / macro-F1, mean ± std over seeds, and
the per-seed paired difference ELV − labels-only.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from hf_ext.testing import tiny_elv_model  # noqa: E402
from hf_ext.trainers.elv import ELVConfig, ELVModel, ELVTrainer

LABELS = ["A", "B", "C"]
GROUPS = ["warm", "cold", "dry"]


def _words(rng: random.Random, n: int, used: set[str]) -> list[str]:
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    out = []
    while len(out) < n:
        w = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(2)) + rng.choice(consonants)
        if w not in used:
            used.add(w)
            out.append(w)
    return out


def make_task(seed: int, n_labeled: int, n_explained: int, n_unlabeled: int, n_test: int, topic_prob: float):
    rng = random.Random(seed)
    used: set[str] = set()
    cues = [_words(rng, 6, used) for _ in LABELS]
    topics = [_words(rng, 8, used) for _ in LABELS]
    filler = _words(rng, 40, used)

    def sentence(label: int) -> tuple[str, str]:
        words = [rng.choice(topics[label]) if rng.random() < topic_prob else rng.choice(filler) for _ in range(7)]
        cue = rng.choice(cues[label])
        words.insert(rng.randrange(len(words) + 1), cue)
        return " ".join(words), cue

    def examples(n: int, explain: int = 0):
        rows = []
        for i in range(n):
            label = i % len(LABELS)
            text, cue = sentence(label)
            expl = f"the word {cue} is a {GROUPS[label]} word" if i < explain else None
            rows.append({"text": text, "label": label, "explanation": expl})
        rng.shuffle(rows)
        return rows

    train = examples(n_labeled, n_explained)
    unlabeled = examples(n_unlabeled)
    test = examples(n_test)
    corpus = [r["text"] for r in train + unlabeled + test] + [
        f"the word {c} is a {g} word" for cs, g in zip(cues, GROUPS) for c in cs
    ]
    corpus += [f"{label} || " for label in LABELS]
    return train, unlabeled, test, corpus


def word_tokenizers(corpus: list[str]):
    """Word-level tokenizers built in memory: a plain one for the generator, a BERT-style one ([CLS] a [SEP] b [SEP])
    for the predictor and the retriever. Same vocabulary, so embeddings can be shared."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>", "[CLS]", "[SEP]"]
    words = sorted({w for line in corpus for w in line.split()} - set(specials))
    vocab = {t: i for i, t in enumerate(specials + words)}

    def make(template: bool) -> PreTrainedTokenizerFast:
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        if template:
            tok.post_processor = processors.TemplateProcessing(
                single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 3), ("[SEP]", 4)]
            )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            pad_token="<pad>",
            eos_token="</s>",
            unk_token="<unk>",
            cls_token="[CLS]",
            sep_token="[SEP]",
        )

    return make(False), make(True)


def ppmi_svd_embeddings(texts: list[str], tok, dim: int) -> torch.Tensor:
    """Unsupervised word vectors (PPMI of within-sentence co-occurrence, truncated SVD), the stand-in for a pretrained
    encoder's knowledge; computed from unlabelled text only."""
    n = len(tok)
    counts = torch.zeros(n, n)
    for t in texts:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        for i in ids:
            for j in ids:
                if i != j:
                    counts[i, j] += 1
    total = counts.sum()
    row, col = counts.sum(1, keepdim=True), counts.sum(0, keepdim=True)
    pmi = torch.log((counts * total) / (row * col).clamp_min(1e-12)).nan_to_num(0.0, 0.0, 0.0)
    ppmi = pmi.clamp_min(0.0)
    u, sv, _ = torch.linalg.svd(ppmi)
    vec = u[:, :dim] * sv[:dim].sqrt()
    return torch.nn.functional.normalize(vec, dim=-1) * 0.5


def build_model(gen_tok, enc_tok, seed: int, k: int, embeddings: torch.Tensor | None) -> ELVModel:
    # Retriever: a frozen bag-of-embeddings sentence encoder (no layers, no position information), like
    # Sentence-BERT's mean pooling over a pretrained encoder.
    return tiny_elv_model(
        LABELS,
        gen_tok,
        enc_tok,
        num_explanations=k,
        hidden_size=32,
        num_layers=2,
        max_position_embeddings=64,
        pooling="mean",
        generator_dropout_rate=0.0,
        bag_of_embeddings_retriever=True,
        word_embeddings=embeddings,
        seed=seed,
        max_target_length=12,
        max_seq_length=40,
    )


def accuracy_f1(preds: list[int], labels: list[int]) -> tuple[float, float]:
    acc = sum(p == y for p, y in zip(preds, labels)) / len(labels)
    f1s = []
    for c in range(len(LABELS)):
        tp = sum(p == c and y == c for p, y in zip(preds, labels))
        fp = sum(p == c and y != c for p, y in zip(preds, labels))
        fn = sum(p != c and y == c for p, y in zip(preds, labels))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return acc, sum(f1s) / len(f1s)


def _train_predictor(model, rows, seed: int, epochs: int, lr: float, batch_size: int) -> None:
    pred = model.predictor
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(pred.parameters(), lr=lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    pred.train()
    for _ in range(epochs):
        order = torch.randperm(len(rows), generator=g).tolist()
        for s in range(0, len(order), batch_size):
            batch_rows = [rows[i] for i in order[s : s + batch_size]]
            batch = model.encode_predictor_inputs([r["text"] for r in batch_rows], [[""] for _ in batch_rows])
            loss = pred(**batch, labels=torch.tensor([r["label"] for r in batch_rows])).loss
            loss.backward()
            opt.step()
            opt.zero_grad()


def _no_explanation_proba(model, rows):
    return model.predict_proba_with([r["text"] for r in rows], [[""] for _ in rows], batch_size=64)


def run_labels_only(make_model, train, unlabeled, test, seed: int, args, self_training: bool):
    """The same predictor, one empty explanation slot, trained on the labelled examples only; with `self_training`,
    plain self-training (the same pseudo-labelling schedule as EST, without explanations)."""
    model = make_model(1)
    epochs = args.predictor_epochs * args.em_rounds  # as many predictor epochs as ELV's predictor sees per EM run
    rows = list(train)
    _train_predictor(model, rows, seed, epochs, args.lr, args.batch_size)
    if self_training:
        pool = list(unlabeled)
        for r in range(args.self_training_rounds):
            probs = _no_explanation_proba(model, pool)
            conf, pred = probs.max(-1)
            order = sorted(range(len(pool)), key=lambda i: (-float(conf[i]), i))[: args.self_training_samples]
            rows += [{**pool[i], "label": int(pred[i])} for i in order]
            chosen = set(order)
            pool = [x for i, x in enumerate(pool) if i not in chosen]
            _train_predictor(model, rows, seed + r + 1, epochs, args.lr, args.batch_size)
    probs = _no_explanation_proba(model, test)
    return accuracy_f1(probs.argmax(-1).tolist(), [r["label"] for r in test])


def run_elv(make_model, train, unlabeled, test, seed: int, args, self_training: bool, out_dir: str):
    model = make_model(args.k)
    config = ELVConfig(
        output_dir=out_dir,
        num_em_rounds=args.em_rounds,
        predictor_epochs=args.predictor_epochs,
        generator_epochs=args.generator_epochs,
        generator_init_epochs=args.generator_init_epochs,
        learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64,
        gradient_accumulation_steps=1,
        prior_temperature=0.1,
        em_save_strategy="no",
        disable_tqdm=True,
        seed=seed,
        self_training_rounds=args.self_training_rounds if self_training else 0,
        self_training_samples_per_round=args.self_training_samples,
        report_to="none",
    )
    trainer = ELVTrainer(model, config, train_dataset=train, unlabeled_dataset=unlabeled if self_training else None)
    trainer.train()
    probs = model.predict_proba([r["text"] for r in test], batch_size=64)
    return accuracy_f1(probs.argmax(-1).tolist(), [r["label"] for r in test])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="5 seeds, label budgets 12/30/60, with self-training.")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--n-labeled", type=int, nargs="+", default=[12])
    p.add_argument("--n-explained", type=int, default=6)
    p.add_argument("--n-unlabeled", type=int, default=300)
    p.add_argument("--n-test", type=int, default=150)
    p.add_argument("--topic-prob", type=float, default=0.3)
    p.add_argument("--k", type=int, default=4, help="explanations per input (paper: 10)")
    p.add_argument("--em-rounds", type=int, default=2)
    p.add_argument("--predictor-epochs", type=int, default=10)
    p.add_argument("--generator-epochs", type=int, default=5)
    p.add_argument("--generator-init-epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument(
        "--embeddings",
        choices=["pretrained", "random"],
        default="pretrained",
        help="word embeddings of the predictor and the retriever: PPMI-SVD vectors from the unlabelled text (a stand-in "
        "for pretraining, the same for both conditions) or random",
    )
    p.add_argument("--self-training", action="store_true", help="also run ELV + explanation-based self-training")
    p.add_argument("--self-training-rounds", type=int, default=2)
    p.add_argument("--self-training-samples", type=int, default=30)
    args = p.parse_args(argv)
    if args.full:
        args.seeds, args.n_labeled, args.self_training = 5, [12, 30, 60], True
        args.n_test = 300
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    logging.getLogger("hf_ext").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    conditions = ["labels-only", "elv"] + (["self-train", "elv+est"] if args.self_training else [])
    print(
        f"ELV study: seeds={args.seeds} labelled={args.n_labeled} explained={args.n_explained} K={args.k} "
        f"EM rounds={args.em_rounds} predictor epochs/round={args.predictor_epochs} embeddings={args.embeddings} "
        f"torch threads={torch.get_num_threads()}",
        flush=True,
    )
    start = time.time()
    for n_labeled in args.n_labeled:
        results: dict[str, list[tuple[float, float]]] = {c: [] for c in conditions}
        for seed in range(args.seeds):
            train, unlabeled, test, corpus = make_task(
                seed, n_labeled, min(args.n_explained, n_labeled), args.n_unlabeled, args.n_test, args.topic_prob
            )
            gen_tok, enc_tok = word_tokenizers(corpus)
            emb = None
            if args.embeddings == "pretrained":
                emb = ppmi_svd_embeddings([r["text"] for r in train + unlabeled], enc_tok, 32)

            def make_model(k, seed=seed, gen_tok=gen_tok, enc_tok=enc_tok, emb=emb):
                return build_model(gen_tok, enc_tok, seed, k, emb)

            # the baseline gets as many predictor epochs as ELV's predictor sees over all EM rounds
            results["labels-only"].append(run_labels_only(make_model, train, unlabeled, test, seed, args, False))
            if args.self_training:
                results["self-train"].append(run_labels_only(make_model, train, unlabeled, test, seed, args, True))
            with tempfile.TemporaryDirectory() as out:
                results["elv"].append(run_elv(make_model, train, unlabeled, test, seed, args, False, out))
                if args.self_training:
                    results["elv+est"].append(run_elv(make_model, train, unlabeled, test, seed, args, True, out))
            line = "  ".join(f"{c}: acc {results[c][-1][0]:.3f}" for c in conditions)
            print(f"  n_labeled={n_labeled} seed={seed}  {line}  ({time.time() - start:.0f}s)", flush=True)
        print(f"\nn_labeled={n_labeled} (test n={args.n_test}, chance 0.333)")
        print(f"  {'condition':<12} {'accuracy':>16} {'macro-F1':>16} {'Δacc vs labels-only (paired)':>32}")
        base = [a for a, _ in results["labels-only"]]
        for c in conditions:
            accs, f1s = [a for a, _ in results[c]], [f for _, f in results[c]]
            sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
            diffs = [a - b for a, b in zip(accs, base)]
            wins = sum(d > 0 for d in diffs)
            delta = (
                f"{statistics.mean(diffs):+.3f} ± {sd(diffs):.3f} ({wins}/{len(diffs)} seeds better)"
                if c != "labels-only"
                else "-"
            )
            print(
                f"  {c:<12} {statistics.mean(accs):.3f} ± {sd(accs):.3f}   {statistics.mean(f1s):.3f} ± {sd(f1s):.3f}"
                f"   {delta:>32}"
            )
    print(f"\ntotal {time.time() - start:.0f}s")


if __name__ == "__main__":
    sys.exit(main())
