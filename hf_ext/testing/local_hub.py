r"""A local server that speaks the Hugging Face Hub's HTTP protocol, for tests and benchmarks.

The Hub cannot be reached from CI, yet ``push_to_hub`` / ``from_pretrained`` / ``load_dataset`` must be exercised
with the *real*, unpatched ``huggingface_hub`` client. :class:`LocalHub` implements the part of the protocol
those clients use, over plain HTTP on 127.0.0.1:

* repositories: create / delete (models, datasets, spaces), repo info (``siblings``, ``sha``), refs, commit log;
* commits: ``preupload`` (regular vs LFS), the git-LFS "basic" batch API with uploads verified by sha256, NDJSON
  ``commit`` (files, LFS files, deletions, ``parentCommit``) applied **atomically**: a commit that references an
  LFS object that never arrived (an interrupted upload), or a stale parent, is refused with a clear error and
  leaves the branch exactly as it was;
* revisions: branches, tags and commit shas; an unknown one answers ``RevisionNotFound``;
* files: ``HEAD`` / ``GET`` on ``resolve`` (with ``Range``), ``tree`` (recursive) and ``paths-info`` listings.

Like the Hub it validates what clients send: repository names (``[\w.-]``, at most 96 characters, no ``--`` or
``..``, not starting or ending with ``-`` or ``.``) and file paths in commits (relative, ``/``-separated, no ``..``,
``.`` or empty segments, no backslashes, nothing under ``.git/``) are checked; a malformed request (bad JSON, a
missing field) answers 400 with a JSON ``{"error": ...}``; given a ``token``, every write needs
``Authorization: Bearer <token>`` (none: 401, another one: 403) and a wrong token is refused on reads too; LFS
uploads go to a per-object signed URL handed out by the (authenticated) LFS batch call, so an anonymous ``PUT`` is
refused.

It is not a Hub: there is one user and no permissions beyond the token, no pull requests, Xet storage or rate
limits. Clients must set ``HF_HUB_DISABLE_XET=1`` (``LocalHub.env()`` returns the variables to set).

Example:

```python
>>> from hf_ext.testing.local_hub import LocalHub
>>> with LocalHub() as hub, hub.patch_env():
...     model.push_to_hub("me/tiny")
...     AutoModel.from_pretrained("me/tiny")
```
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["LocalHub"]

_LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".parquet", ".arrow", ".h5", ".msgpack", ".npz")
_LFS_MIN_SIZE = 10 * 1024 * 1024  # like the Hub: large files go to LFS whatever their name
_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


_NAME_RE = re.compile(r"[\w](?:[\w.-]{0,94}[\w])?")


def _check_name(name: Any, what: str = "repository name") -> str:
    r"""A Hub namespace or repository name: ``[\w.-]``, 1-96 characters, no ``--``/``..``, no leading/trailing
    ``-``/``.``."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or "--" in name or ".." in name:
        raise _HubError(
            400,
            f"Invalid {what} {name!r}: use letters, digits, '-', '_' and '.', at most 96 characters, no '--' or '..', "
            "not starting or ending with '-' or '.'.",
            "InvalidRepoName",
        )
    return name


def _check_repo_id(namespace: Any, name: Any) -> str:
    return f"{_check_name(namespace, 'namespace')}/{_check_name(name)}"


def _check_path(path: Any, folder: bool = False) -> str:
    """A file path inside a repository: relative, ``/``-separated, no ``.``/``..``/empty segment, no backslash."""
    if isinstance(path, str) and folder:
        path = path.rstrip("/")
    segments = path.split("/") if isinstance(path, str) else []
    if (
        not isinstance(path, str)
        or not path
        or "\\" in path
        or "\0" in path
        or any(seg in ("", ".", "..") for seg in segments)
        or segments[0] == ".git"
    ):
        raise _HubError(
            400,
            f"Invalid path {path!r}: paths are relative, '/'-separated, without '..', '.', empty segments, "
            "backslashes or a '.git' folder.",
            "InvalidPath",
        )
    return path


def _git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class _File:
    content_key: str  # sha256 of the content (key into the blob store)
    size: int
    git_oid: str  # git blob sha1 (what the Hub reports as the file's oid)
    lfs: bool


@dataclass
class _Commit:
    sha: str
    parent: str | None
    files: dict[str, _File]
    title: str
    message: str
    date: float


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, _Commit] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)


class _BadRequest(Exception):
    """A malformed request (answered 400 with a JSON error)."""


class _HubError(Exception):
    def __init__(self, status: int, message: str, error_code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.error_code = status, message, error_code


class LocalHub:
    """A Hub-protocol server on ``127.0.0.1:<free port>``; start/stop it with ``with LocalHub() as hub:``.

    Args:
        host (`str`, *optional*, defaults to `"127.0.0.1"`): the address to bind; loopback only by design.
        port (`int`, *optional*, defaults to `0`): `0` picks a free port.
        user (`str`, *optional*, defaults to `"hf-ext-tester"`): the name ``whoami`` returns.
        token (`str`, *optional*): when given, writes (``POST`` / ``PUT`` / ``DELETE``) and ``whoami`` need
            ``Authorization: Bearer <token>`` (missing: 401, another token: 403), and a request carrying another token
            is refused (401) even for reads, as on the Hub. ``None`` (default): any token or none is accepted.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, user: str = "hf-ext-tester", token: str | None = None):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"LocalHub only binds to loopback addresses, got host={host!r}.")
        if token is not None and (not isinstance(token, str) or not token):
            raise ValueError("LocalHub(token=...) must be a non-empty string or None.")
        self.user = user
        self.token = token
        self._upload_key = secrets.token_bytes(32)  # signs the LFS upload URLs handed out by the batch API
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._blobs: dict[str, bytes] = {}  # sha256 -> content (committed files and verified LFS uploads)
        self._lock = threading.RLock()
        self._server = ThreadingHTTPServer((host, port), self._make_handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None
        self.requests: list[tuple[str, str]] = []  # (method, path) log, handy in tests

    # ------------------------------------------------------------------ lifecycle
    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LocalHub:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="LocalHub", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """Environment variables that point ``huggingface_hub`` at this server."""
        return {
            "HF_ENDPOINT": self.endpoint,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_OFFLINE": "0",
            "HF_TOKEN": self.token or "hf_local_test_token",
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }

    @contextlib.contextmanager
    def patch_env(self) -> Iterator[None]:
        """Set :meth:`env` in ``os.environ`` and in ``huggingface_hub.constants`` for the duration of the block.

        ``huggingface_hub`` reads ``HF_ENDPOINT`` once at import time into ``constants.ENDPOINT`` (and derived URL
        templates); this helper updates those documented constants, it does not patch any client code.
        """
        from huggingface_hub import constants

        new_env = self.env()
        old_env = {k: os.environ.get(k) for k in new_env}
        names = ("ENDPOINT", "HUGGINGFACE_CO_URL_TEMPLATE", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_XET")
        old_consts = {n: getattr(constants, n) for n in names if hasattr(constants, n)}
        os.environ.update(new_env)
        constants.ENDPOINT = self.endpoint
        constants.HUGGINGFACE_CO_URL_TEMPLATE = self.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        if hasattr(constants, "HF_HUB_OFFLINE"):
            constants.HF_HUB_OFFLINE = False
        if hasattr(constants, "HF_HUB_DISABLE_XET"):
            constants.HF_HUB_DISABLE_XET = True
        try:
            yield
        finally:
            for k, v in old_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            for n, v in old_consts.items():
                setattr(constants, n, v)

    # ------------------------------------------------------------------ inspection helpers (tests)
    def repo_files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """Return ``{path: content}`` of a revision, straight from the store (bypassing HTTP)."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            commit = self._resolve(repo, revision)
            return {p: self._blobs[f.content_key] for p, f in commit.files.items()}

    def corrupt_file(self, repo_id: str, path: str, data: bytes, repo_type: str = "model") -> None:
        """Replace the stored bytes of ``path`` at ``main`` *without* updating its hashes (simulates corruption)."""
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            f = self._resolve(repo, "main").files[path]
            key = "corrupt-" + hashlib.sha256(data).hexdigest()
            self._blobs[key] = data
            f.content_key = key

    def _sign_upload(self, oid: str) -> str:
        return hmac.new(self._upload_key, oid.encode(), hashlib.sha256).hexdigest()

    # ------------------------------------------------------------------ store logic
    def _get_repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise _HubError(404, f"Repository {repo_type} {repo_id!r} not found.", "RepoNotFound")
        return repo

    def _resolve(self, repo: _Repo, revision: str) -> _Commit:
        rev = unquote(revision)
        sha = repo.branches.get(rev) or repo.tags.get(rev)
        if sha is None and rev in repo.commits:
            sha = rev
        if sha is None and len(rev) >= 7:
            matches = [c for c in repo.commits if c.startswith(rev)]
            sha = matches[0] if len(matches) == 1 else None
        if sha is None:
            raise _HubError(
                404, f"Invalid rev id: {rev!r} is not a branch, tag or commit of {repo.repo_id}.", "RevisionNotFound"
            )
        return repo.commits[sha]

    def _new_commit(self, repo: _Repo, parent: _Commit | None, files: dict[str, _File], title: str, message: str):
        payload = json.dumps(
            {
                "parent": parent.sha if parent else None,
                "files": sorted((p, f.git_oid) for p, f in files.items()),
                "title": title,
                "t": time.time_ns(),
            }
        ).encode()
        sha = hashlib.sha1(payload).hexdigest()
        commit = _Commit(sha, parent.sha if parent else None, files, title, message, time.time())
        repo.commits[sha] = commit
        return commit

    def _create_repo(self, repo_type: str, repo_id: str) -> tuple[_Repo, bool]:
        with self._lock:
            key = (repo_type, repo_id)
            if key in self._repos:
                return self._repos[key], False
            repo = _Repo(repo_type, repo_id)
            gitattributes = (
                b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.parquet filter=lfs diff=lfs merge=lfs -text\n"
            )
            blob = self._store(gitattributes)
            init = self._new_commit(
                repo,
                None,
                {".gitattributes": _File(blob, len(gitattributes), _git_blob_sha1(gitattributes), False)},
                "initial commit",
                "",
            )
            repo.branches["main"] = init.sha
            self._repos[key] = repo
            return repo, True

    def _store(self, content: bytes) -> str:
        key = hashlib.sha256(content).hexdigest()
        self._blobs[key] = content
        return key

    def _apply_commit(self, repo: _Repo, revision: str, lines: list[dict]) -> _Commit:
        """Validate every operation first, then swap the branch head: all or nothing."""
        with self._lock:
            rev = unquote(revision)
            if rev not in repo.branches:
                if rev in repo.tags or rev in repo.commits:
                    raise _HubError(400, f"Cannot commit to {rev!r}: it is not a branch.", "RevisionNotFound")
                raise _HubError(404, f"Branch {rev!r} not found in {repo.repo_id}.", "RevisionNotFound")
            head = repo.commits[repo.branches[rev]]
            files = dict(head.files)
            title, message = "", ""
            for item in lines:
                key, value = item.get("key"), item.get("value", {})
                if key == "header":
                    title = value.get("summary", "")
                    message = value.get("description", "")
                    parent = value.get("parentCommit")
                    if parent and parent != head.sha:
                        raise _HubError(
                            412,
                            f"parentCommit {parent} is not the head of {rev!r} ({head.sha}).",
                            "PreconditionFailed",
                        )
                elif key == "file":
                    content = (
                        base64.b64decode(value["content"])
                        if value.get("encoding") == "base64"
                        else value["content"].encode()
                    )
                    blob = self._store(content)
                    files[_check_path(value["path"])] = _File(blob, len(content), _git_blob_sha1(content), False)
                elif key == "lfsFile":
                    _check_path(value["path"])
                    oid = value["oid"]
                    if oid not in self._blobs:
                        raise _HubError(
                            422,
                            f"LFS object {oid} for {value['path']!r} was never uploaded (interrupted upload?); "
                            "nothing was committed.",
                            "LfsObjectMissing",
                        )
                    content = self._blobs[oid]
                    files[value["path"]] = _File(oid, len(content), _git_blob_sha1(content), True)
                elif key == "deletedFile":
                    if _check_path(value["path"]) not in files:
                        raise _HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
                    del files[value["path"]]
                elif key == "deletedFolder":
                    prefix = _check_path(value["path"], folder=True) + "/"
                    for p in [p for p in files if p.startswith(prefix)]:
                        del files[p]
                else:
                    raise _HubError(400, f"Unsupported commit operation {key!r}.")
            commit = self._new_commit(repo, head, files, title or "Upload", message)
            repo.branches[rev] = commit.sha
            return commit

    # ------------------------------------------------------------------ HTTP
    def _make_handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(chunks)
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else b""
                if len(data) != length:
                    raise _HubError(400, f"Incomplete request body: got {len(data)} of {length} bytes.")
                return data

            def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head_only=False):
                self.send_response(status)
                headers = dict(headers or {})
                headers.setdefault("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if body and not head_only:
                    self.wfile.write(body)

            def _json(self, status: int, obj: Any, headers: dict | None = None):
                self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

            def _dispatch(self, method: str):
                hub.requests.append((method, self.path))
                try:
                    self._route(method)
                except (
                    _BadRequest,
                    json.JSONDecodeError,
                    UnicodeDecodeError,
                    KeyError,
                    TypeError,
                    AttributeError,
                ) as e:
                    # a malformed request (bad JSON, a missing or mistyped field): the client's fault, answered 400
                    detail = f"missing field {e}" if isinstance(e, KeyError) else str(e)
                    message = f"Malformed request: {detail}"
                    if method == "HEAD":
                        self._send(400, b"", {"X-Error-Message": message, "X-Error-Code": "BadRequest"})
                    else:
                        self._json(400, {"error": message}, {"X-Error-Code": "BadRequest"})
                except _HubError as e:
                    headers = {"X-Error-Message": e.message}
                    if e.error_code:
                        headers["X-Error-Code"] = e.error_code
                    if method == "HEAD":
                        self._send(e.status, b"", headers)
                    else:
                        self._json(e.status, {"error": e.message}, headers)
                except Exception as e:  # pragma: no cover - a bug in the fake server must be visible
                    self._json(500, {"error": f"Internal error ({type(e).__name__})"})

            def do_GET(self):
                self._dispatch("GET")

            def do_HEAD(self):
                self._dispatch("HEAD")

            def do_POST(self):
                self._dispatch("POST")

            def do_PUT(self):
                self._dispatch("PUT")

            def do_DELETE(self):
                self._dispatch("DELETE")

            # -------------------------------------------------------------- routing
            def _read_json(self) -> dict:
                body = self._body()
                try:
                    obj = json.loads(body or b"{}")
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise _BadRequest(f"the body is not valid JSON ({e})") from None
                if not isinstance(obj, dict):
                    raise _BadRequest(f"expected a JSON object, got {type(obj).__name__}")
                return obj

            def _authorize(self, method: str, parts: list[str]) -> None:
                if hub.token is None or parts[:1] == ["lfs-upload"]:  # uploads carry their own signature
                    return
                auth = self.headers.get("Authorization") or ""
                given = auth[7:].strip() if auth.lower().startswith("bearer ") else None
                if given is not None and not hmac.compare_digest(given.encode(), hub.token.encode()):
                    if given == "":
                        given = None
                    else:
                        status = 403 if method in ("POST", "PUT", "DELETE") else 401
                        raise _HubError(status, "Invalid credentials in Authorization header.", "Unauthorized")
                needs_token = method in ("POST", "PUT", "DELETE") or parts[:2] == ["api", "whoami-v2"]
                if given is None and needs_token:
                    raise _HubError(
                        401, "Authentication required: send `Authorization: Bearer <token>`.", "Unauthorized"
                    )

            def _route(self, method: str):
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                parts = [p for p in url.path.split("/") if p != ""]
                self._authorize(method, parts)
                if parts[:1] == ["api"]:
                    return self._api(method, parts[1:], query)
                if parts[:1] == ["lfs-upload"] and method == "PUT":
                    return self._lfs_upload(parts[1], query.get("signature", [""])[0])
                repo_type = "model"
                if parts and parts[0] in ("datasets", "spaces"):
                    repo_type = _REPO_TYPES[parts[0]]
                    parts = parts[1:]
                if len(parts) >= 2 and parts[1].endswith(".git"):
                    repo_id = _check_repo_id(parts[0], parts[1][:-4])
                    if parts[2:] == ["info", "lfs", "objects", "batch"] and method == "POST":
                        return self._lfs_batch(repo_type, repo_id)
                if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
                    repo_id = _check_repo_id(parts[0], parts[1])
                    path = _check_path("/".join(map(unquote, parts[4:])))
                    return self._resolve_file(method, repo_type, repo_id, parts[3], path)
                raise _HubError(404, f"No route for {method} {url.path}", "EntryNotFound")

            def _api(self, method: str, parts: list[str], query):
                if parts == ["whoami-v2"]:
                    return self._json(
                        200,
                        {
                            "type": "user",
                            "name": hub.user,
                            "fullname": hub.user,
                            "orgs": [],
                            "auth": {"type": "access_token", "accessToken": {"role": "write"}},
                        },
                    )
                if parts == ["validate-yaml"]:
                    self._body()
                    return self._json(200, {"errors": [], "warnings": []})
                if parts == ["repos", "create"] and method == "POST":
                    body = self._read_json()
                    name, org = body.get("name"), body.get("organization")
                    repo_type = body.get("type") or "model"
                    if not name:
                        raise _HubError(400, "Missing repository name.")
                    if repo_type not in _URL_PREFIX:
                        raise _HubError(400, f"Invalid repository type {repo_type!r}.")
                    repo_id = _check_repo_id(org or hub.user, name)
                    _, created = hub._create_repo(repo_type, repo_id)
                    url = f"{hub.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}"
                    if not created:
                        return self._json(409, {"error": "You already created this repo", "url": url})
                    return self._json(200, {"url": url, "name": repo_id})
                if parts == ["repos", "delete"] and method == "DELETE":
                    body = self._read_json()
                    repo_type = body.get("type") or "model"
                    repo_id = _check_repo_id(body.get("organization") or hub.user, body["name"])
                    with hub._lock:
                        hub._get_repo(repo_type, repo_id)
                        del hub._repos[(repo_type, repo_id)]
                    return self._json(200, {})
                if len(parts) >= 3 and parts[0] in _REPO_TYPES:
                    repo_type = _REPO_TYPES[parts[0]]
                    repo_id = _check_repo_id(unquote(parts[1]), unquote(parts[2]))
                    rest = parts[3:]
                    with hub._lock:
                        repo = hub._get_repo(repo_type, repo_id)
                    return self._repo_api(method, repo, rest, query)
                raise _HubError(404, f"No API route /api/{'/'.join(parts)}", "EntryNotFound")

            def _repo_api(self, method: str, repo: _Repo, rest: list[str], query):
                if not rest or rest[0] == "revision":
                    commit = hub._resolve(repo, rest[1] if len(rest) > 1 else "main")
                    info = {
                        "id": repo.repo_id,
                        "_id": repo.repo_id,
                        "sha": commit.sha,
                        "private": False,
                        "gated": False,
                        "disabled": False,
                        "author": repo.repo_id.split("/")[0],
                        "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.date)),
                        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(repo.created_at)),
                        "siblings": [{"rfilename": p} for p in sorted(commit.files)],
                        "tags": [],
                        "downloads": 0,
                        "likes": 0,
                    }
                    return self._json(200, info)
                op = rest[0]
                if op == "tree" and method == "GET":
                    commit = hub._resolve(repo, rest[1])
                    path = "/".join(unquote(p) for p in rest[2:]).strip("/")
                    recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                    return self._json(200, self._tree(commit, path, recursive))
                if op == "paths-info" and method == "POST":
                    commit = hub._resolve(repo, rest[1])
                    form = parse_qs(self._body().decode())
                    out = []
                    for p in form.get("paths", []):
                        p = p.strip("/")
                        if p in commit.files:
                            out.append(self._file_entry(p, commit.files[p]))
                        elif any(f.startswith(p + "/") for f in commit.files) or p == "":
                            out.append({"type": "directory", "oid": commit.sha, "size": 0, "path": p})
                    return self._json(200, out)
                if op == "refs" and method == "GET":

                    def ref(kind, name, sha):
                        return {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": sha}

                    return self._json(
                        200,
                        {
                            "branches": [ref("heads", n, s) for n, s in repo.branches.items()],
                            "tags": [ref("tags", n, s) for n, s in repo.tags.items()],
                            "converts": [],
                            "pullRequests": [],
                        },
                    )
                if op == "commits" and method == "GET":
                    commit = hub._resolve(repo, rest[1])
                    log = []
                    while commit is not None:
                        log.append(
                            {
                                "id": commit.sha,
                                "title": commit.title,
                                "message": commit.message,
                                "authors": [{"user": hub.user}],
                                "date": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.date)),
                            }
                        )
                        commit = repo.commits.get(commit.parent) if commit.parent else None
                    return self._json(200, log)
                if op == "preupload" and method == "POST":
                    head = hub._resolve(repo, rest[1])
                    body = self._read_json()
                    files = []
                    for f in body.get("files", []):
                        _check_path(f["path"])
                        lfs = f["path"].endswith(_LFS_SUFFIXES) or int(f.get("size", 0)) >= _LFS_MIN_SIZE
                        existing = head.files.get(f["path"])
                        oid = None
                        if existing is not None:
                            oid = existing.content_key if existing.lfs else existing.git_oid
                        files.append(
                            {
                                "path": f["path"],
                                "uploadMode": "lfs" if lfs else "regular",
                                "shouldIgnore": False,
                                "oid": oid,
                            }
                        )
                    return self._json(200, {"files": files, "commitOid": head.sha})
                if op == "commit" and method == "POST":
                    lines = []
                    for n, line in enumerate(self._body().splitlines()):
                        if not line.strip():
                            continue
                        try:
                            item = json.loads(line)
                        except (json.JSONDecodeError, UnicodeDecodeError) as e:
                            raise _BadRequest(f"commit line {n + 1} is not valid JSON ({e})") from None
                        if not isinstance(item, dict) or not isinstance(item.get("value", {}), dict):
                            raise _BadRequest(f"commit line {n + 1} is not an object with a `value` object")
                        lines.append(item)
                    commit = hub._apply_commit(repo, rest[1], lines)
                    url = f"{hub.endpoint}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}/commit/{commit.sha}"
                    return self._json(200, {"commitUrl": url, "commitOid": commit.sha, "pullRequestUrl": None})
                if op == "branch" and len(rest) == 2:
                    name = unquote(rest[1])
                    with hub._lock:
                        if method == "POST":
                            body = self._read_json()
                            if name in repo.branches:
                                raise _HubError(409, f"Branch {name!r} already exists.")
                            start = hub._resolve(repo, body.get("startingPoint") or "main")
                            repo.branches[name] = start.sha
                            return self._json(200, {})
                        if method == "DELETE":
                            if name not in repo.branches:
                                raise _HubError(404, f"Branch {name!r} not found.", "RevisionNotFound")
                            del repo.branches[name]
                            return self._json(200, {})
                if op == "tag" and len(rest) == 2:
                    with hub._lock:
                        if method == "POST":
                            body = self._read_json()
                            tag = body["tag"]
                            if tag in repo.tags:
                                raise _HubError(409, f"Tag {tag!r} already exists.")
                            repo.tags[tag] = hub._resolve(repo, rest[1]).sha
                            return self._json(200, {})
                        if method == "DELETE":
                            repo.tags.pop(unquote(rest[1]), None)
                            return self._json(200, {})
                raise _HubError(404, f"No API route for {method} {'/'.join(rest)}", "EntryNotFound")

            # -------------------------------------------------------------- listings
            def _file_entry(self, path: str, f: _File) -> dict:
                entry = {"type": "file", "oid": f.git_oid, "size": f.size, "path": path}
                if f.lfs:
                    entry["lfs"] = {"oid": f.content_key, "size": f.size, "pointerSize": 134}
                return entry

            def _tree(self, commit: _Commit, path: str, recursive: bool) -> list[dict]:
                prefix = path + "/" if path else ""
                if path and path in commit.files:
                    return [self._file_entry(path, commit.files[path])]
                out, dirs = [], set()
                for p, f in sorted(commit.files.items()):
                    if not p.startswith(prefix):
                        continue
                    rel = p[len(prefix) :]
                    if "/" in rel:
                        parts = rel.split("/")
                        for i in range(1, (len(parts) if recursive else 1) + 1):
                            d = prefix + "/".join(parts[:i])
                            if d not in dirs and d != p:
                                dirs.add(d)
                                out.append({"type": "directory", "oid": commit.sha, "size": 0, "path": d})
                        if not recursive:
                            continue
                    out.append(self._file_entry(p, f))
                if path and not out:
                    raise _HubError(404, f"{path!r} does not exist at this revision.", "EntryNotFound")
                return out

            # -------------------------------------------------------------- files
            def _resolve_file(self, method: str, repo_type: str, repo_id: str, revision: str, path: str):
                with hub._lock:
                    repo = hub._get_repo(repo_type, repo_id)
                    commit = hub._resolve(repo, revision)
                    f = commit.files.get(path)
                    if f is None:
                        raise _HubError(404, f"Entry {path!r} not found in {repo_id}@{revision}.", "EntryNotFound")
                    content = hub._blobs[f.content_key]
                headers = {"X-Repo-Commit": commit.sha, "Accept-Ranges": "bytes"}
                if f.lfs:
                    # the real Hub's ETag of an LFS file is its sha256, which clients use to check the download
                    headers.update(
                        {
                            "ETag": f'"{f.content_key}"',
                            "X-Linked-Etag": f'"{f.content_key}"',
                            "X-Linked-Size": str(f.size),
                        }
                    )
                else:
                    headers["ETag"] = f'"{f.git_oid}"'
                status = 200
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes=") and method == "GET":
                    start_s, _, end_s = rng[6:].partition("-")
                    start = int(start_s) if start_s else max(0, len(content) - int(end_s))
                    end = int(end_s) if (end_s and start_s) else len(content) - 1
                    end = min(end, len(content) - 1)
                    if start > end and len(content) > 0:
                        return self._send(416, b"", {"Content-Range": f"bytes */{len(content)}"})
                    headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
                    content = content[start : end + 1]
                    status = 206
                headers["Content-Length"] = str(len(content))
                self._send(status, content, headers, head_only=(method == "HEAD"))

            def _lfs_batch(self, repo_type: str, repo_id: str):
                with hub._lock:
                    hub._get_repo(repo_type, repo_id)
                body = self._read_json()
                objects = []
                for obj in body.get("objects", []):
                    oid = obj["oid"]
                    if not isinstance(oid, str) or not re.fullmatch(r"[0-9a-f]{64}", oid):
                        raise _BadRequest(f"LFS oid {oid!r} is not a sha256 hex digest")
                    entry = {"oid": oid, "size": obj["size"]}
                    if oid not in hub._blobs:
                        href = f"{hub.endpoint}/lfs-upload/{oid}?signature={hub._sign_upload(oid)}"
                        entry["actions"] = {"upload": {"href": href, "header": {}}}
                    objects.append(entry)
                self._json(
                    200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"}
                )

            def _lfs_upload(self, oid: str, signature: str):
                if not hmac.compare_digest(signature.encode(), hub._sign_upload(oid).encode()):
                    raise _HubError(
                        403,
                        "LFS uploads need the signed URL returned by the LFS batch API (an authenticated request).",
                        "Unauthorized",
                    )
                data = self._body()
                digest = hashlib.sha256(data).hexdigest()
                if digest != oid:
                    raise _HubError(400, f"LFS upload for {oid} has sha256 {digest}: content corrupted in transit.")
                with hub._lock:
                    hub._blobs[oid] = data
                self._send(200)

        return Handler
