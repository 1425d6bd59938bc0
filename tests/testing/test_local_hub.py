"""The local Hub-protocol server against the real, unpatched huggingface_hub client."""

import uuid

import pytest
import torch
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError


def _repo(prefix="t"):
    return f"tester/{prefix}-{uuid.uuid4().hex[:8]}"


def test_endpoint_is_local(local_hub):
    from huggingface_hub import constants

    assert constants.ENDPOINT == local_hub.endpoint
    assert local_hub.endpoint.startswith("http://127.0.0.1:")


def test_upload_download_revisions_and_listing(local_hub):
    api = HfApi()
    repo = _repo()
    api.create_repo(repo)
    api.create_repo(repo, exist_ok=True)  # 409 + url, accepted
    api.upload_file(path_or_fileobj=b"v1", path_in_repo="a/x.txt", repo_id=repo)
    first = api.model_info(repo).sha
    api.upload_file(path_or_fileobj=b"v2", path_in_repo="a/x.txt", repo_id=repo)
    api.upload_file(path_or_fileobj=b"\x00" * 64, path_in_repo="w.safetensors", repo_id=repo)  # LFS route
    assert open(hf_hub_download(repo, "a/x.txt"), "rb").read() == b"v2"
    assert open(hf_hub_download(repo, "a/x.txt", revision=first), "rb").read() == b"v1"
    assert open(hf_hub_download(repo, "w.safetensors"), "rb").read() == b"\x00" * 64
    assert sorted(api.list_repo_files(repo)) == [".gitattributes", "a/x.txt", "w.safetensors"]
    tree = {e.path: e for e in api.list_repo_tree(repo, recursive=True)}
    assert tree["w.safetensors"].lfs is not None and tree["w.safetensors"].size == 64
    assert type(tree["a"]).__name__ == "RepoFolder"
    api.create_branch(repo, branch="dev", revision=first)
    assert open(hf_hub_download(repo, "a/x.txt", revision="dev"), "rb").read() == b"v1"
    api.create_tag(repo, tag="v1.0", revision=first)
    assert open(hf_hub_download(repo, "a/x.txt", revision="v1.0"), "rb").read() == b"v1"
    commits = api.list_repo_commits(repo)
    assert len(commits) == 4  # initial commit + three uploads
    assert commits[0].title == "Upload w.safetensors with huggingface_hub"
    assert commits[-1].commit_id != first
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo, "a/x.txt", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo, "missing.txt")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(_repo("absent"), "a/x.txt")


def test_commit_with_missing_lfs_object_is_refused_and_leaves_repo_intact(local_hub):
    """An upload interrupted before its LFS object arrived cannot corrupt what is already on the server."""
    from huggingface_hub import CommitOperationAdd

    api = HfApi()
    repo = _repo()
    api.create_repo(repo)
    api.upload_file(path_or_fileobj=b"keep me", path_in_repo="model.safetensors", repo_id=repo)
    before = api.model_info(repo).sha
    op = CommitOperationAdd(path_in_repo="model.safetensors", path_or_fileobj=b"new weights")
    op._upload_mode = "lfs"  # what preupload answers; then skip the LFS upload itself, as if interrupted
    op._is_uploaded = True
    with pytest.raises(Exception, match="never uploaded"):
        api.create_commit(repo, operations=[op], commit_message="interrupted")
    assert api.model_info(repo).sha == before
    assert local_hub.repo_files(repo)["model.safetensors"] == b"keep me"


def test_transformers_model_round_trip(local_hub):
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    repo = _repo("gpt2")
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32)).eval()
    model.push_to_hub(repo)
    loaded = AutoModelForCausalLM.from_pretrained(repo).eval()
    x = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(model(x).logits, loaded(x).logits)
    assert "model.safetensors" in HfApi().list_repo_files(repo)


def test_dataset_round_trip(local_hub):
    from datasets import Dataset, load_dataset

    repo = _repo("ds")
    ds = Dataset.from_dict({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    ds.push_to_hub(repo)
    assert load_dataset(repo, split="train").to_dict() == ds.to_dict()
