"""Push / load time of a ~100 MB model through the local Hub-protocol server vs save / load on local disk.

The point: the Hub client path (huggingface_hub's real upload and download code over HTTP on 127.0.0.1) adds no
overhead of hf_ext's own. Both sides run in one process, on the same model, and the script prints ratios.

    python benchmarks/hub_round_trip.py                # ~100 MB GPT-2-style model, 3 repeats
    python benchmarks/hub_round_trip.py --n-embd 256   # smaller, quicker
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import tempfile
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--n-embd", type=int, default=768, help="hidden size (768, 3 layers, vocab 8000: ~108 MB fp32)"
    )
    parser.add_argument("--n-layer", type=int, default=3)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    # huggingface_hub reads HF_ENDPOINT at import: configure before importing it.
    port = _free_port()
    home = tempfile.mkdtemp(prefix="hub_bench_home_")
    os.environ.update(
        {
            "HF_HOME": home,
            "HF_ENDPOINT": f"http://127.0.0.1:{port}",
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_OFFLINE": "0",
            "HF_TOKEN": "hf_bench",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        }
    )
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    from hf_ext.testing import LocalHub

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=args.n_layer,
        n_embd=args.n_embd,
        n_head=12 if args.n_embd % 12 == 0 else 8,
        vocab_size=args.vocab_size,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config).eval()
    size_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    x = torch.tensor([[1, 2, 3, 4]])
    ref = model(x).logits

    from huggingface_hub import HfApi, snapshot_download

    api = HfApi()
    local_save, local_load, hub_push, hub_load, raw_push, raw_load = [], [], [], [], [], []
    with LocalHub(port=port) as _hub:
        for i in range(args.repeats):
            d = tempfile.mkdtemp(prefix="hub_bench_local_")
            t0 = time.perf_counter()
            model.save_pretrained(d)
            local_save.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            loaded = AutoModelForCausalLM.from_pretrained(d)
            local_load.append(time.perf_counter() - t0)
            assert torch.equal(loaded(x).logits, ref)

            # the bare client: save + upload_folder, snapshot_download + local from_pretrained
            raw_repo = f"bench/raw-{i}"
            t0 = time.perf_counter()
            model.save_pretrained(d)
            api.create_repo(raw_repo, exist_ok=True)
            api.upload_folder(folder_path=d, repo_id=raw_repo)
            raw_push.append(time.perf_counter() - t0)
            shutil.rmtree(os.path.join(home, "hub"), ignore_errors=True)
            t0 = time.perf_counter()
            AutoModelForCausalLM.from_pretrained(snapshot_download(raw_repo))
            raw_load.append(time.perf_counter() - t0)
            shutil.rmtree(d)

            repo = f"bench/model-{i}"
            t0 = time.perf_counter()
            model.push_to_hub(repo)
            hub_push.append(time.perf_counter() - t0)
            shutil.rmtree(os.path.join(home, "hub"), ignore_errors=True)  # cold cache: a real download
            t0 = time.perf_counter()
            loaded = AutoModelForCausalLM.from_pretrained(repo)
            hub_load.append(time.perf_counter() - t0)
            assert torch.equal(loaded(x).logits, ref)

    med = statistics.median
    print(f"model: GPT-2 n_layer={args.n_layer} n_embd={args.n_embd}, {size_mb:.1f} MB fp32, {args.repeats} repeats")
    header = (
        f"{'':20}{'local disk':>12}{'Hub: model API':>16}{'Hub: bare client':>18}{'Hub/disk':>10}{'model/bare':>12}"
    )
    print(header)
    for name, disk, hub, raw in (
        ("save / push", local_save, hub_push, raw_push),
        ("load", local_load, hub_load, raw_load),
    ):
        print(
            f"{name:20}{med(disk):11.3f}s{med(hub):15.3f}s{med(raw):17.3f}s"
            f"{med(hub) / med(disk):10.2f}{med(hub) / med(raw):12.2f}"
        )
    print(
        "Hub/disk: the protocol's cost (sha256 of every byte, HTTP transfer, cache). model/bare: push_to_hub / "
        "from_pretrained(repo) against save + upload_folder / snapshot_download + local load of the same files; "
        "~1.0 means the model API adds nothing on top of the client."
    )


if __name__ == "__main__":
    main()
