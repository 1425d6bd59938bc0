"""CPM-Bee's beam search over structured answers (OpenBMB ``CPMBeeBeamSearch`` and VisCPM's ``VLLMCPMBeeBeamSearch``).

Stock `generate()` cannot reproduce it: the answer may have several leaves (a `</s>` moves to the next leaf and
restarts its positions at 0), `<unk>` and the extension columns absent from a sentence are masked, and the repetition
penalty, temperature and beam scores are applied to the *raw* logits in an order of its own. This module re-implements
that search from the original's conventions; it is checked against the original's outputs (beam ids, every finished
hypothesis and its score).

Settings: CPM-Bee's defaults are `temperature=1`, `length_penalty=1`; VisCPM-Chat uses beam 3, `temperature=0.7`,
`repetition_penalty=1.1`, `length_penalty=3` (:data:`VISCPM_CHAT_BEAM_SETTINGS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import LogitsProcessor
from transformers.utils import ModelOutput, logging

logger = logging.get_logger(__name__)

__all__ = [
    "VISCPM_CHAT_BEAM_SETTINGS",
    "CpmBeeBeamSearchOutput",
    "CpmBeeTokenMaskLogitsProcessor",
    "cpmbee_beam_search",
]

VISCPM_CHAT_BEAM_SETTINGS = {"beam_size": 3, "temperature": 0.7, "repetition_penalty": 1.1, "length_penalty": 3.0}


class CpmBeeTokenMaskLogitsProcessor(LogitsProcessor):
    """CPM-Bee's output mask for stock `generate()`: `<unk>` is forbidden unless the prompt has an OOV piece it stands
    for, and every extension column that is not one of the row's own pieces is forbidden (set to `mask_value`, as the
    original's -10000).

    Args:
        vocab_size (`int`): the vocabulary size (extension columns follow it).
        unk_token_id (`int`): id of `<unk>`.
        rev_ext_tables (`list[dict]`): per prompt, `infos[i]["rev_ext_table"]` from
            [`CpmBeeTokenizer.prepare_for_generation`]; rows of a `num_beams`/`num_return_sequences` expanded batch map
            to prompt `row // (rows / prompts)`.
        mask_value (`float`, *optional*, defaults to -10000.0): value of forbidden logits.
    """

    def __init__(
        self,
        vocab_size: int,
        unk_token_id: int,
        rev_ext_tables: Sequence[Mapping[int, str]],
        mask_value: float = -10000.0,
    ):
        self.vocab_size = vocab_size
        self.unk_token_id = unk_token_id
        self.allowed = [{int(k) for k in table} for table in rev_ext_tables]
        self.mask_value = mask_value

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        rows, width = scores.shape
        if rows % len(self.allowed):
            raise ValueError(f"{rows} rows cannot be split over {len(self.allowed)} prompts.")
        per_prompt = rows // len(self.allowed)
        blocked = torch.zeros(len(self.allowed), width, dtype=torch.bool, device=scores.device)
        for b, allowed in enumerate(self.allowed):
            if self.unk_token_id not in allowed:
                blocked[b, self.unk_token_id] = True
            blocked[b, self.vocab_size :] = True
            for col in allowed:
                if col >= self.vocab_size:
                    blocked[b, col] = False
        return scores.masked_fill(blocked.repeat_interleave(per_prompt, dim=0), self.mask_value)


@dataclass
class CpmBeeBeamSearchOutput(ModelOutput):
    """
    Args:
        answers (`list[dict]`): each input with its `<ans>` leaves filled (`None` for leaves never reached).
        result_ids (`list[list[tuple[int, int]]]`): per input, the best hypothesis as `(logit column, answer number)`
            pairs, including each leaf's closing `</s>`.
        hypotheses (`list[list[tuple[float, list[tuple[int, int]]]]]`): per input, all kept finished hypotheses as
            `(score, tokens)`, best first.
    """

    answers: list[dict[str, Any]] | None = None
    result_ids: list[list[tuple[int, int]]] | None = None
    hypotheses: list[list[tuple[float, list[tuple[int, int]]]]] | None = None


@torch.no_grad()
def cpmbee_beam_search(
    model,
    tokenizer,
    data: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    beam_size: int = 3,
    max_length: int = 100,
    repetition_penalty: float = 1.0,
    length_penalty: float = 1.0,
    temperature: float = 1.0,
    model_inputs: Mapping[str, torch.Tensor] | None = None,
    infos: Sequence[Mapping[str, Any]] | None = None,
    inputs_embeds: torch.Tensor | None = None,
) -> CpmBeeBeamSearchOutput:
    r"""
    Beam search over the `<ans>` leaves of structured prompts, as CPM-Bee / VisCPM decode.

    Args:
        model ([`CpmBeeForCausalLM`]): the language model (any module with its forward signature).
        tokenizer ([`CpmBeeTokenizer`]): its tokenizer.
        data (`dict` or `list[dict]`, *optional*): prompts with a top-level `"<ans>"` key; leaves under it are
            generated (ignored when `model_inputs` is given).
        beam_size (`int`, *optional*, defaults to 3): beams per input.
        max_length (`int`, *optional*, defaults to 100): maximum generated tokens (the search runs `max_length + 2`
            steps, as the original).
        repetition_penalty (`float`, *optional*, defaults to 1.0): divides positive / multiplies negative logits of
            every token already fed (including `<s>`; extension tokens count as their base id).
        length_penalty (`float`, *optional*, defaults to 1.0): hypothesis score = sum of log-probs / length**lp.
        temperature (`float`, *optional*, defaults to 1.0): logits are divided by it before the log-softmax.
        model_inputs (`Mapping`, *optional*), infos (`Sequence`, *optional*): the outputs of
            [`CpmBeeTokenizer.prepare_for_generation`] (e.g. to inject image features with `inputs_embeds`).
        inputs_embeds (`torch.Tensor`, *optional*): prompt embeddings (VisCPM-Chat's image injection).

    Returns:
        [`CpmBeeBeamSearchOutput`].
    """
    if beam_size < 1 or max_length < 1:
        raise ValueError(f"beam_size ({beam_size}) and max_length ({max_length}) must be >= 1.")
    if temperature <= 0 or repetition_penalty <= 0:
        raise ValueError(f"temperature ({temperature}) and repetition_penalty ({repetition_penalty}) must be > 0.")
    if model_inputs is None:
        if data is None:
            raise ValueError("Pass `data` (structured prompts) or `model_inputs` + `infos`.")
        model_inputs, infos = tokenizer.prepare_for_generation(data)
    if infos is None:
        raise ValueError("`infos` (from `prepare_for_generation`) is required with `model_inputs`.")
    device = next(model.parameters()).device
    enc = {k: torch.as_tensor(v).to(device) for k, v in model_inputs.items()}
    batch = enc["input_ids"].shape[0]
    vocab = tokenizer.vocab_size
    ext_ids, ext_subs = enc["ext_table_ids"], enc["ext_table_sub"]
    width = vocab + ext_ids.numel()
    bos, eos, unk = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id

    prompt = dict(enc)
    if inputs_embeds is not None:
        prompt.pop("input_ids")
        prompt["inputs_embeds"] = inputs_embeds.to(device)
    out = model(**prompt, use_cache=True)
    cache = out.cache
    cache.batch_repeat_interleave(beam_size)

    # per sentence: which columns may be produced
    blocked = torch.zeros(batch, width, dtype=torch.bool, device=device)
    for b, info in enumerate(infos):
        rev = {int(k) for k in info["rev_ext_table"]}
        if unk not in rev:
            blocked[b, unk] = True
        for col in range(vocab, width):
            if col not in rev:
                blocked[b, col] = True

    beams: list[list[dict[str, Any]]] = []
    for info in infos:
        first_seg = info["predict_segments"][0][0]
        beams.append([{"fed": [], "leaf": 0, "ans": [], "next": (bos, 0, first_seg, 0)} for _ in range(beam_size)])
    scores = torch.full((batch, beam_size), -1e9, device=device)
    scores[:, 0] = 0.0
    hyps: list[list[tuple[float, list[tuple[int, int]]]]] = [[] for _ in range(batch)]
    worst = [1e9] * batch
    done = [False] * batch
    internal_max = max_length + 1

    for step in range(internal_max + 1):
        feed = [bm["next"] for row in beams for bm in row]
        for row in beams:
            for bm in row:
                bm["fed"] = bm["fed"] + [bm["next"][0]]
        ids = torch.tensor([[f[0]] for f in feed], device=device)
        logits = (
            model(
                input_ids=ids,
                input_id_sub=torch.tensor([[f[1]] for f in feed], device=device),
                segment_ids=torch.tensor([[f[2]] for f in feed], device=device),
                position_ids=torch.tensor([[f[3]] for f in feed], device=device),
                context=torch.ones_like(ids),
                ext_table_ids=ext_ids,
                ext_table_sub=ext_subs,
                cache=cache,
                use_cache=True,
            )
            .logits[:, -1]
            .float()
        )
        logits = logits.view(batch, beam_size, width)
        logits = logits.masked_fill(blocked[:, None, :], -10000.0)
        if repetition_penalty != 1.0:
            for b in range(batch):
                for k, bm in enumerate(beams[b]):
                    cols = torch.tensor(sorted(set(bm["fed"])), device=device)
                    vals = logits[b, k, cols]
                    logits[b, k, cols] = torch.where(vals < 0, vals * repetition_penalty, vals / repetition_penalty)
        logprobs = torch.log_softmax(logits / temperature, dim=-1) + scores[:, :, None]
        flat = logprobs.view(batch, -1)
        order = torch.sort(flat, dim=-1, descending=True, stable=True)
        top_vals, top_idx = order.values[:, : 2 * beam_size].tolist(), order.indices[:, : 2 * beam_size].tolist()

        new_beams, new_scores, sources = [], [], []
        for b in range(batch):
            if done[b]:
                new_beams.append(beams[b])
                new_scores.append(scores[b].tolist())
                sources.append(list(range(beam_size)))
                continue
            if len(hyps[b]) >= beam_size and worst[b] >= top_vals[b][0] / step**length_penalty:
                done[b] = True
                new_beams.append(beams[b])
                new_scores.append(scores[b].tolist())
                sources.append(list(range(beam_size)))
                continue
            nxt: list[tuple[dict[str, Any], float, int]] = []
            for flat_idx, val in zip(top_idx[b], top_vals[b]):
                k, word = divmod(flat_idx, width)
                bm = beams[b][k]
                segs = infos[b]["predict_segments"]
                ans_id = segs[bm["leaf"]][1]
                if (word == eos and bm["leaf"] + 1 == len(segs)) or step == internal_max:
                    tokens = bm["ans"] + [(word, ans_id)]
                    score = val / len(tokens) ** length_penalty
                    if len(hyps[b]) < beam_size or score > worst[b]:
                        hyps[b].append((score, tokens))
                        if len(hyps[b]) > beam_size:
                            lowest = min(range(len(hyps[b])), key=lambda j: hyps[b][j][0])
                            del hyps[b][lowest]
                            worst[b] = min(s for s, _ in hyps[b])
                        else:
                            worst[b] = min(score, worst[b])
                elif word == eos:
                    nxt_seg = segs[bm["leaf"] + 1][0]
                    nxt.append(
                        (
                            {
                                "fed": bm["fed"],
                                "leaf": bm["leaf"] + 1,
                                "ans": bm["ans"] + [(word, ans_id)],
                                "next": (bos, 0, nxt_seg, 0),
                            },
                            val,
                            k,
                        )
                    )
                else:
                    tid, sub = (
                        (int(ext_ids[word - vocab]), int(ext_subs[word - vocab])) if word >= vocab else (word, 0)
                    )
                    _, _, seg, pos = bm["next"]
                    nxt.append(
                        (
                            {
                                "fed": bm["fed"],
                                "leaf": bm["leaf"],
                                "ans": bm["ans"] + [(word, ans_id)],
                                "next": (tid, sub, seg, pos + 1),
                            },
                            val,
                            k,
                        )
                    )
                if len(nxt) == beam_size:
                    break
            if step == internal_max or not nxt:
                done[b] = True
            while len(nxt) < beam_size:  # pad with dead beams (never selected again)
                src = nxt[0] if nxt else (beams[b][0], float("-inf"), 0)
                nxt.append((dict(src[0]), float("-inf"), src[2]))
            new_beams.append([n[0] for n in nxt])
            new_scores.append([n[1] for n in nxt])
            sources.append([n[2] for n in nxt])
        if all(done):
            break
        beams = new_beams
        scores = torch.tensor(new_scores, device=device)
        beam_idx = torch.tensor([b * beam_size + s for b in range(batch) for s in sources[b]], device=device)
        cache.reorder_cache(beam_idx)

    result_ids, ranked = [], []
    for b in range(batch):
        ordered = sorted(hyps[b], key=lambda h: -h[0])
        ranked.append(ordered)
        result_ids.append(max(hyps[b], key=lambda h: h[0])[1] if hyps[b] else [])
    answers = tokenizer.decode_answers(result_ids, infos)
    return CpmBeeBeamSearchOutput(answers=answers, result_ids=result_ids, hypotheses=ranked)
