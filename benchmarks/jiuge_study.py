"""Jiuge study: form accuracy, rhyme and 平仄 of a small Jiuge model, with/without constrained decoding and with/without
the form-stressed loss.

Two models with the same initialisation, data and order are trained on the ``chinese-poetry`` corpus: one with the
form-stressed weighted loss (``JiugeConfig`` defaults) and one with plain cross-entropy (``use_form_weighting=False``).
Each writes poems for titles of held-out poems in every evaluated form, once freely and once through
``PoemFormLogitsProcessor``; the poems are scored with ``hf_ext.metrics.poetry``. Held-out perplexity (plain
cross-entropy) is reported for both models.

Fetch the corpus first (``make poetry-corpus`` puts it in ``data/chinese-poetry``), then::

    python benchmarks/jiuge_study.py --corpus data/chinese-poetry
    python benchmarks/jiuge_study.py --corpus data/chinese-poetry --steps 100 --shi-files 2 --ci-files 1  # smoke run

The defaults are sized for ~10 minutes on 2 shared CPU cores; numbers from such a small budget describe the methods'
direction, not the paper's quality.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import random
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for `benchmarks._common`
from benchmarks._common import study_training_kwargs  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--corpus", required=True, help="chinese-poetry package root (holding dist/) or its dist/ folder")
    p.add_argument("--shi-files", type=int, default=10, help="poet.tang.*.json files to read (1,000 poems each)")
    p.add_argument("--ci-files", type=int, default=6, help="ci.song.*.json files to read (1,000 ci each)")
    p.add_argument("--ci-tunes", type=int, default=4, help="most frequent 词牌 (of at most --max-body chars) to use")
    p.add_argument("--max-per-form", type=int, default=1500, help="cap on training poems per form")
    p.add_argument("--max-body", type=int, default=64, help="longest body (characters and marks) kept")
    p.add_argument("--min-char-freq", type=int, default=3, help="rarer characters become [UNK]")
    p.add_argument("--n-layer", type=int, default=3)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--samples-per-form", type=int, default=24, help="poems written per form and condition")
    p.add_argument("--top-k", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    root = Path(args.corpus)
    args.dist = root if (root / "songci").is_dir() else root / "dist"
    if not (args.dist / "songci").is_dir() or not (args.dist / "quantangshi").is_dir():
        p.error(f"--corpus {args.corpus}: no dist/songci and dist/quantangshi inside; run `make poetry-corpus`.")
    return args


def load_corpus(args):
    from dataset_builders.chinese_poetry import load_chinese_poetry
    from hf_ext.models.jiuge import learn_ci_forms

    def files(pattern, n):
        found = [f for f in glob.glob(str(args.dist / pattern)) if f.split(".")[-2].isdigit()]
        found.sort(key=lambda f: int(f.split(".")[-2]))
        return found[:n]

    shi_files = files("quantangshi/poet.tang.*.json", args.shi_files)
    ci_files = files("songci/ci.song.*.json", args.ci_files)
    ds, report = load_chinese_poetry(shi_files + ci_files, on_bad_row="skip", return_report=True)
    print(
        f"corpus: {len(shi_files)} Tang shi + {len(ci_files)} Song ci files -> {len(ds)} classified poems; "
        f"{len(report['malformed'])} malformed and {len(report['unclassified'])} unclassified poems reported"
    )
    reasons = Counter(re.sub(r"'[^']*'", "'…'", r.reason).split(":")[0] for r in report["malformed"].rows)
    print("  malformed, by reason:", dict(reasons.most_common(4)))

    ci = [(r["form"], r["body"]) for r in ds if r["kind"] == "ci"]
    ci_forms = learn_ci_forms(ci, min_count=20)
    tunes = sorted(
        (f for f in ci_forms.values() if f.body_length <= args.max_body),
        key=lambda f: -sum(1 for name, _ in ci if name == f.name),
    )[: args.ci_tunes]
    ci_forms = {f.name: f for f in tunes}
    for f in tunes:
        print(f"  learned 词牌 {f.name}: {f.template()} (support {f.support:.2f})")

    by_form = defaultdict(list)
    for r in ds:
        if r["kind"] == "ci" and r["form"] not in ci_forms:
            continue
        if len(r["body"]) > args.max_body:
            continue
        by_form[r["form"]].append(r)
    rng = random.Random(args.seed)
    train, test = [], {}
    for form, rows in sorted(by_form.items()):
        rng.shuffle(rows)
        n_test = max(args.samples_per_form, len(rows) // 20)
        test[form] = rows[:n_test]
        train += rows[n_test : n_test + args.max_per_form]
    rng.shuffle(train)
    print("  training poems per form:", dict(Counter(r["form"] for r in train)))
    return train, test, ci_forms


def train_model(args, tokenizer, train, ci_forms, weighted: bool):
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from hf_ext.models.jiuge import JiugeConfig, JiugeForCausalLM, format_sample

    texts = [format_sample(r["form"], r["title"], r["body"]) for r in train]
    data = Dataset.from_dict({"text": texts}).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=128), batched=True, remove_columns=["text"]
    )
    config = JiugeConfig.from_tokenizer(
        tokenizer,
        n_embd=args.n_embd,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_positions=128,
        use_form_weighting=weighted,
        ci_forms={k: v.to_dict() for k, v in ci_forms.items()},
    )
    torch.manual_seed(args.seed)
    model = JiugeForCausalLM(config)
    targs = TrainingArguments(
        **study_training_kwargs(
            tempfile.mkdtemp(prefix=f"jiuge_study_{'weighted' if weighted else 'plain'}_"),  # nothing is saved
            args.steps,
            args.batch_size,
            args.lr,
            args.seed,
            num_logs=5,
            dataloader_num_workers=0,
        )
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    trainer = Trainer(model=model, args=targs, train_dataset=data, data_collator=collator)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print(f"  {'weighted' if weighted else 'plain'}: {args.steps} steps in {seconds:.0f} s, training loss {losses}")
    model.eval()
    model.set_tokenizer(tokenizer)
    return model, seconds


@torch.no_grad()
def heldout_perplexity(model, tokenizer, test) -> float:
    from hf_ext.models.jiuge import format_sample

    total, count = 0.0, 0
    for rows in test.values():
        for i in range(0, len(rows), 32):
            texts = [format_sample(r["form"], r["title"], r["body"]) for r in rows[i : i + 32]]
            batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=128)
            labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
            out = model(**batch, labels=labels)
            n = int((labels[:, 1:] != -100).sum())
            total, count = total + out.lm_loss.item() * n, count + n
    return math.exp(total / count)


@torch.no_grad()
def write(model, tokenizer, form, titles, constrained: bool, top_k: int) -> list[str]:
    from hf_ext.models.jiuge import PoemFormLogitsProcessor, format_sample

    tokenizer.padding_side = "left"
    batch = tokenizer([format_sample(form.name, t) for t in titles], return_tensors="pt", padding=True)
    tokenizer.padding_side = "right"
    processors = [PoemFormLogitsProcessor.from_tokenizer(form, tokenizer)] if constrained else []
    out = model.generate(
        **batch,
        logits_processor=processors,
        do_sample=True,
        top_k=top_k,
        max_new_tokens=form.body_length + 1 if constrained else 2 * form.body_length,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    bodies = tokenizer.decode(out[:, batch.input_ids.shape[1] :], skip_special_tokens=True)
    return ["".join(b.split()) for b in bodies]


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from hf_ext.metrics.poetry import poetry_metrics
    from hf_ext.models.jiuge import BUILTIN_FORMS, JiugeTokenizer

    t0 = time.perf_counter()
    train, test, ci_forms = load_corpus(args)
    tokenizer = JiugeTokenizer.from_corpus(
        [r["form"] + r["title"] + r["body"] for r in train], min_frequency=args.min_char_freq
    )
    print(f"tokenizer: {len(tokenizer)} tokens")
    forms = {name: BUILTIN_FORMS.get(name) or ci_forms[name] for name in test}

    results = {"args": {k: str(v) for k, v in vars(args).items()}, "models": {}}
    for weighted in (False, True):
        name = "weighted" if weighted else "plain"
        model, seconds = train_model(args, tokenizer, train, ci_forms, weighted)
        entry = {"train_seconds": seconds, "heldout_ppl": heldout_perplexity(model, tokenizer, test)}
        for constrained in (False, True):
            poems, requested, per_kind = [], [], defaultdict(list)
            torch.manual_seed(args.seed + 1)
            for form_name, rows in test.items():
                form = forms[form_name]
                titles = [r["title"] for r in rows[: args.samples_per_form]]
                bodies = write(model, tokenizer, form, titles, constrained, args.top_k)
                poems += bodies
                requested += [form] * len(bodies)
                per_kind[form.kind] += [form.matches(b) for b in bodies]
            metrics = poetry_metrics(poems, requested)
            metrics.update({f"form_accuracy/{k}": sum(v) / len(v) for k, v in per_kind.items()})
            metrics["examples"] = {f.name: p for p, f in list(zip(poems, requested))[:: args.samples_per_form]}
            entry["constrained" if constrained else "free"] = metrics
        results["models"][name] = entry

    # Reference: the same metrics on held-out human poems.
    human = [r["body"] for rows in test.values() for r in rows[: args.samples_per_form]]
    human_forms = [forms[r["form"]] for rows in test.values() for r in rows[: args.samples_per_form]]
    results["human"] = poetry_metrics(human, human_forms)
    for kind in {f.kind for f in human_forms}:
        ok = [f.matches(b) for b, f in zip(human, human_forms) if f.kind == kind]
        results["human"][f"form_accuracy/{kind}"] = sum(ok) / len(ok)
    results["total_seconds"] = time.perf_counter() - t0

    keys = [
        "form_accuracy",
        "form_accuracy/jueju",
        "form_accuracy/lushi",
        "form_accuracy/ci",
        "rhyme_consistency",
        "tonal_conformance",
        "dist-2",
    ]
    header = ["form", "form 绝句", "form 律诗", "form 词", "rhyme", "平仄", "dist-2"]
    print(f"\n{'condition':24s}" + "".join(f"{h:>10s}" for h in header))
    rows = [("human (held-out)", results["human"])]
    for name, entry in results["models"].items():
        rows += [(f"{name} / free", entry["free"]), (f"{name} / constrained", entry["constrained"])]
    for label, m in rows:
        print(f"{label:24s}" + "".join(f"{m.get(k, float('nan')):10.3f}" for k in keys))
    for name, entry in results["models"].items():
        print(f"{name}: held-out perplexity {entry['heldout_ppl']:.1f}, training {entry['train_seconds']:.0f} s")
        for form_name, body in entry["constrained"]["examples"].items():
            print(f"  {form_name}: {body}")
    print(f"total {results['total_seconds']:.0f} s")
    if args.output:
        from hf_ext.utils.io import atomic_write

        with atomic_write(args.output, "w") as f:
            json.dump(results, f, ensure_ascii=False, indent=1)
    return results


if __name__ == "__main__":
    main()
