"""Fault regressions (issue #16): LocalHub validates names, paths, tokens and request bodies like the Hub."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
import requests
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from hf_ext.testing import LocalHub


@pytest.fixture(scope="module")
def hub():
    with LocalHub(token="hf_secret") as server:
        yield server


def _auth(token="hf_secret"):
    return {"Authorization": f"Bearer {token}"}


def _create(hub, name, token="hf_secret"):
    return requests.post(f"{hub.endpoint}/api/repos/create", json={"name": name}, headers=_auth(token), timeout=10)


def _commit(hub, repo_id, lines, token="hf_secret"):
    body = "\n".join(json.dumps(line) for line in lines)
    return requests.post(
        f"{hub.endpoint}/api/models/{repo_id}/commit/main", data=body, headers=_auth(token), timeout=10
    )


def _file(path, content=b"x"):
    return {
        "key": "file",
        "value": {"path": path, "content": base64.b64encode(content).decode(), "encoding": "base64"},
    }


HEADER = {"key": "header", "value": {"summary": "test"}}


@pytest.mark.parametrize("name", ["../..", "..", "a..b", "-a", "a-", "a--b", "a/b", "a b", "x" * 97, ""])
def test_invalid_repo_names_are_refused(hub, name):
    r = _create(hub, name)
    assert r.status_code == 400, (name, r.status_code, r.text)
    assert "error" in r.json()
    assert all("/.." not in repo_id for repo_id in hub.repo_ids())


def test_valid_repo_names_are_accepted(hub):
    for name in ("tiny-model", "a", "A.b_c-1", "x" * 96):
        assert _create(hub, name).status_code in (200, 409), name


@pytest.mark.parametrize(
    "path", ["../evil.txt", "a/../../evil.txt", "/etc/passwd", "dir\\file.txt", "a//b.txt", "./a.txt", ".git/config"]
)
def test_invalid_file_paths_in_commits_are_refused(hub, path):
    _create(hub, "paths")
    before = hub.repo_files("hf-ext-tester/paths")
    r = _commit(hub, "hf-ext-tester/paths", [HEADER, _file("ok.txt"), _file(path)])
    assert r.status_code == 400 and "Invalid path" in r.json()["error"]
    assert hub.repo_files("hf-ext-tester/paths") == before  # nothing of the refused commit was applied


def test_token_is_enforced(hub):
    assert _create(hub, "tok", token="").status_code == 401  # "Bearer " with nothing
    r = requests.post(f"{hub.endpoint}/api/repos/create", json={"name": "tok"}, timeout=10)
    assert r.status_code == 401 and "Authentication required" in r.json()["error"]
    assert _create(hub, "tok", token="hf_wrong").status_code == 403
    assert "hf-ext-tester/tok" not in hub.repo_ids("model")
    assert _create(hub, "tok").status_code == 200
    # reads of a public repo need no token, but a wrong one is refused
    url = f"{hub.endpoint}/api/models/hf-ext-tester/tok"
    assert requests.get(url, timeout=10).status_code == 200
    assert requests.get(url, headers=_auth("hf_wrong"), timeout=10).status_code == 401
    # the real client: the right token works, a wrong one raises
    api = HfApi(endpoint=hub.endpoint, token="hf_secret")
    api.upload_file(path_or_fileobj=b"hello", path_in_repo="a.txt", repo_id="hf-ext-tester/tok")
    assert hub.repo_files("hf-ext-tester/tok")["a.txt"] == b"hello"
    with pytest.raises(HfHubHTTPError):
        HfApi(endpoint=hub.endpoint, token="hf_wrong").upload_file(
            path_or_fileobj=b"x", path_in_repo="b.txt", repo_id="hf-ext-tester/tok"
        )


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/api/repos/create", b"{not json"),
        ("/api/repos/create", b"[1, 2]"),
        ("/api/models/hf-ext-tester/bodies/commit/main", b'{"key": "header"\n{broken'),
        ("/api/models/hf-ext-tester/bodies/commit/main", b'{"key": "file", "value": {"content": "eA=="}}'),
        ("/api/models/hf-ext-tester/bodies/preupload/main", b'{"files": [{"size": 3}]}'),
        ("/hf-ext-tester/bodies.git/info/lfs/objects/batch", b'{"objects": [{"oid": "../x", "size": 1}]}'),
    ],
)
def test_malformed_requests_answer_400_with_a_json_error(hub, route, body):
    _create(hub, "bodies")
    r = requests.post(f"{hub.endpoint}{route}", data=body, headers=_auth(), timeout=10)
    assert r.status_code == 400, (r.status_code, r.text)
    assert r.json()["error"].startswith("Malformed request")


def test_anonymous_lfs_upload_is_refused(hub):
    data = b"weights" * 10
    oid = hashlib.sha256(data).hexdigest()
    r = requests.put(f"{hub.endpoint}/lfs-upload/{oid}", data=data, timeout=10)
    assert r.status_code == 403
    assert hub.stored_object(oid) is None
    # the batch API (authenticated) hands out a signed URL that works
    _create(hub, "lfs")
    batch = requests.post(
        f"{hub.endpoint}/hf-ext-tester/lfs.git/info/lfs/objects/batch",
        json={"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]},
        headers=_auth(),
        timeout=10,
    )
    href = batch.json()["objects"][0]["actions"]["upload"]["href"]
    assert requests.put(href, data=data, timeout=10).status_code == 200
    assert hub.stored_object(oid) == data
    other = hashlib.sha256(b"other").hexdigest()
    assert requests.put(href.replace(oid, other), data=b"other", timeout=10).status_code == 403
    # and the batch call itself needs the token
    r = requests.post(
        f"{hub.endpoint}/hf-ext-tester/lfs.git/info/lfs/objects/batch",
        json={"operation": "upload", "objects": [{"oid": other, "size": 5}]},
        timeout=10,
    )
    assert r.status_code == 401
