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


class _HubServer(ThreadingHTTPServer):
    """The HTTP server and everything it stores: repositories, blobs, the token and the request log.

    Request handlers (:class:`_HubRequestHandler`, one per connection) reach this state as ``self.server``; every
    read or write of ``repos`` / ``blobs`` happens under ``lock``.
    """

    daemon_threads = True

    def __init__(self, address: tuple[str, int], user: str, token: str | None):
        self.user = user
        self.token = token
        self.upload_key = secrets.token_bytes(32)  # signs the LFS upload URLs handed out by the batch API
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.blobs: dict[str, bytes] = {}  # sha256 -> content (committed files and verified LFS uploads)
        self.lock = threading.RLock()
        self.requests: list[tuple[str, str]] = []  # (method, path) log
        super().__init__(address, _HubRequestHandler)

    @property
    def endpoint(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ LFS upload URLs
    def sign_upload(self, oid: str) -> str:
        return hmac.new(self.upload_key, oid.encode(), hashlib.sha256).hexdigest()

    def check_upload_signature(self, oid: str, signature: str) -> None:
        if not hmac.compare_digest(signature.encode(), self.sign_upload(oid).encode()):
            raise _HubError(
                403,
                "LFS uploads need the signed URL returned by the LFS batch API (an authenticated request).",
                "Unauthorized",
            )

    # ------------------------------------------------------------------ store
    def store(self, content: bytes) -> str:
        key = hashlib.sha256(content).hexdigest()
        self.blobs[key] = content
        return key

    def get_repo(self, repo_type: str, repo_id: str) -> _Repo:
        with self.lock:
            repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise _HubError(404, f"Repository {repo_type} {repo_id!r} not found.", "RepoNotFound")
        return repo

    def resolve(self, repo: _Repo, revision: str) -> _Commit:
        """The commit a branch, tag, full or abbreviated (>= 7 characters) commit sha points at."""
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

    def new_commit(
        self, repo: _Repo, parent: _Commit | None, files: dict[str, _File], title: str, message: str
    ) -> _Commit:
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

    def create_repo(self, repo_type: str, repo_id: str) -> tuple[_Repo, bool]:
        """Return ``(repo, created)``; a new repository starts with one commit holding ``.gitattributes``."""
        with self.lock:
            key = (repo_type, repo_id)
            if key in self.repos:
                return self.repos[key], False
            repo = _Repo(repo_type, repo_id)
            gitattributes = (
                b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.parquet filter=lfs diff=lfs merge=lfs -text\n"
            )
            blob = self.store(gitattributes)
            init = self.new_commit(
                repo,
                None,
                {".gitattributes": _File(blob, len(gitattributes), _git_blob_sha1(gitattributes), False)},
                "initial commit",
                "",
            )
            repo.branches["main"] = init.sha
            self.repos[key] = repo
            return repo, True

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self.lock:
            self.get_repo(repo_type, repo_id)
            del self.repos[(repo_type, repo_id)]

    def apply_commit(self, repo: _Repo, revision: str, lines: list[dict]) -> _Commit:
        """Validate every operation first, then swap the branch head: all or nothing."""
        with self.lock:
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
                    blob = self.store(content)
                    files[_check_path(value["path"])] = _File(blob, len(content), _git_blob_sha1(content), False)
                elif key == "lfsFile":
                    _check_path(value["path"])
                    oid = value["oid"]
                    if oid not in self.blobs:
                        raise _HubError(
                            422,
                            f"LFS object {oid} for {value['path']!r} was never uploaded (interrupted upload?); "
                            "nothing was committed.",
                            "LfsObjectMissing",
                        )
                    content = self.blobs[oid]
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
            commit = self.new_commit(repo, head, files, title or "Upload", message)
            repo.branches[rev] = commit.sha
            return commit


# ---------------------------------------------------------------------- routes
_WRITE_METHODS = ("POST", "PUT", "DELETE")


@dataclass(frozen=True)
class _Route:
    """``pattern`` is matched against the request path without its leading ``/`` (empty segments dropped).

    ``methods``: the HTTP methods served (``None``: any). ``auth``: ``"write"`` (a token is needed for POST / PUT /
    DELETE), ``"always"`` (needed for every method) or ``"signed"`` (the URL carries its own signature). A pattern
    with ``namespace`` / ``name`` groups addresses one repository (``kind``: its URL prefix): the handler gets the
    repository as ``repo``, after its id is validated and found.
    """

    methods: frozenset[str] | None
    pattern: re.Pattern[str]
    handler: str
    auth: str = "write"


def _route(methods: str | None, pattern: str, handler: str, auth: str = "write") -> _Route:
    return _Route(frozenset(methods.split()) if methods else None, re.compile(pattern), handler, auth)


_SEGMENT = r"[^/]+"
_API_REPO = rf"api/(?P<kind>models|datasets|spaces)/(?P<namespace>{_SEGMENT})/(?P<name>{_SEGMENT})"
# git and file URLs: no prefix for models, `datasets/` or `spaces/` for the others (never a namespace of that name)
_GIT_REPO = rf"(?:(?P<kind>datasets|spaces)/|(?!(?:datasets|spaces)/))(?P<namespace>{_SEGMENT})/(?P<name>{_SEGMENT})"
_REV = rf"(?P<revision>{_SEGMENT})"

_ROUTES: tuple[_Route, ...] = (
    _route(None, r"api/whoami-v2", "whoami", auth="always"),
    _route(None, r"api/validate-yaml", "validate_yaml"),
    _route("POST", r"api/repos/create", "create_repo"),
    _route("DELETE", r"api/repos/delete", "delete_repo"),
    _route(None, rf"{_API_REPO}(?:/revision(?:/{_REV})?(?:/.*)?)?", "repo_info"),
    _route("GET", rf"{_API_REPO}/tree/{_REV}(?:/(?P<path>.*))?", "tree"),
    _route("POST", rf"{_API_REPO}/paths-info/{_REV}(?:/.*)?", "paths_info"),
    _route("GET", rf"{_API_REPO}/refs(?:/.*)?", "refs"),
    _route("GET", rf"{_API_REPO}/commits/{_REV}(?:/.*)?", "commits"),
    _route("POST", rf"{_API_REPO}/preupload/{_REV}(?:/.*)?", "preupload"),
    _route("POST", rf"{_API_REPO}/commit/{_REV}(?:/.*)?", "commit"),
    _route("POST", rf"{_API_REPO}/branch/(?P<branch>{_SEGMENT})", "create_branch"),
    _route("DELETE", rf"{_API_REPO}/branch/(?P<branch>{_SEGMENT})", "delete_branch"),
    _route("POST", rf"{_API_REPO}/tag/{_REV}", "create_tag"),
    _route("DELETE", rf"{_API_REPO}/tag/(?P<tag>{_SEGMENT})", "delete_tag"),
    _route(None, rf"{_API_REPO}/(?P<rest>.*)", "no_repo_route"),
    _route(None, r"api(?:/(?P<rest>.*))?", "no_api_route"),
    _route("PUT", rf"lfs-upload/(?P<oid>{_SEGMENT})", "lfs_upload", auth="signed"),
    _route("POST", rf"{_GIT_REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
    _route("GET HEAD", rf"{_GIT_REPO}/resolve/{_REV}/(?P<path>.+)", "resolve_file"),
)


def _hub_time(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(timestamp))


class _HubRequestHandler(BaseHTTPRequestHandler):
    """Answers one connection of :class:`_HubServer`: routing by :data:`_ROUTES`, one ``_<handler>`` method a route.

    The methods starting with ``_`` and named in :data:`_ROUTES` answer one route each; the rest read the request
    body, write the response and turn errors into the Hub's error responses.
    """

    protocol_version = "HTTP/1.1"
    server: _HubServer

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    # ------------------------------------------------------------------ request / response plumbing
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

    def _read_json(self) -> dict:
        body = self._body()
        try:
            obj = json.loads(body or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise _BadRequest(f"the body is not valid JSON ({e})") from None
        if not isinstance(obj, dict):
            raise _BadRequest(f"expected a JSON object, got {type(obj).__name__}")
        return obj

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head_only: bool = False) -> None:
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if body and not head_only:
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, message: str, error_code: str | None) -> None:
        headers = {"X-Error-Message": message}
        if error_code:
            headers["X-Error-Code"] = error_code
        if self.command == "HEAD":
            self._send(status, b"", headers)
        else:
            self._json(status, {"error": message}, headers)

    def _dispatch(self) -> None:
        self.server.requests.append((self.command, self.path))
        try:
            self._route()
        except (_BadRequest, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            # a malformed request (bad JSON, a missing or mistyped field): the client's fault, answered 400
            detail = f"missing field {e}" if isinstance(e, KeyError) else str(e)
            message = f"Malformed request: {detail}"
            if self.command == "HEAD":
                self._send(400, b"", {"X-Error-Message": message, "X-Error-Code": "BadRequest"})
            else:
                self._json(400, {"error": message}, {"X-Error-Code": "BadRequest"})
        except _HubError as e:
            self._error(e.status, e.message, e.error_code)
        except Exception as e:  # pragma: no cover - a bug in the fake server must be visible
            self._json(500, {"error": f"Internal error ({type(e).__name__})"})

    def _route(self) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        path = "/".join(p for p in url.path.split("/") if p != "")
        for route in _ROUTES:
            match = route.pattern.fullmatch(path)
            if match and (route.methods is None or self.command in route.methods):
                self._authorize(route.auth)
                args = match.groupdict()
                if "namespace" in args:
                    repo_type = _REPO_TYPES.get(args.pop("kind") or "models")
                    repo_id = _check_repo_id(unquote(args.pop("namespace")), unquote(args.pop("name")))
                    args["repo"] = self.server.get_repo(repo_type, repo_id)
                return getattr(self, f"_{route.handler}")(**args)
        self._authorize("write")
        raise _HubError(404, f"No route for {self.command} {url.path}", "EntryNotFound")

    def _authorize(self, policy: str) -> None:
        token = self.server.token
        if token is None or policy == "signed":  # LFS uploads carry their own signature
            return
        auth = self.headers.get("Authorization") or ""
        given = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if given is not None and not hmac.compare_digest(given.encode(), token.encode()):
            if given == "":
                given = None
            else:
                status = 403 if self.command in _WRITE_METHODS else 401
                raise _HubError(status, "Invalid credentials in Authorization header.", "Unauthorized")
        if given is None and (policy == "always" or self.command in _WRITE_METHODS):
            raise _HubError(401, "Authentication required: send `Authorization: Bearer <token>`.", "Unauthorized")

    # ------------------------------------------------------------------ account and repositories
    def _whoami(self) -> None:
        user = self.server.user
        self._json(
            200,
            {
                "type": "user",
                "name": user,
                "fullname": user,
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"role": "write"}},
            },
        )

    def _validate_yaml(self) -> None:
        self._body()
        self._json(200, {"errors": [], "warnings": []})

    def _create_repo(self) -> None:
        body = self._read_json()
        name, org = body.get("name"), body.get("organization")
        repo_type = body.get("type") or "model"
        if not name:
            raise _HubError(400, "Missing repository name.")
        if repo_type not in _URL_PREFIX:
            raise _HubError(400, f"Invalid repository type {repo_type!r}.")
        repo_id = _check_repo_id(org or self.server.user, name)
        _, created = self.server.create_repo(repo_type, repo_id)
        url = f"{self.server.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}"
        if not created:
            return self._json(409, {"error": "You already created this repo", "url": url})
        self._json(200, {"url": url, "name": repo_id})

    def _delete_repo(self) -> None:
        body = self._read_json()
        repo_type = body.get("type") or "model"
        self.server.delete_repo(repo_type, _check_repo_id(body.get("organization") or self.server.user, body["name"]))
        self._json(200, {})

    def _repo_info(self, repo: _Repo, revision: str | None) -> None:
        commit = self.server.resolve(repo, revision or "main")
        info = {
            "id": repo.repo_id,
            "_id": repo.repo_id,
            "sha": commit.sha,
            "private": False,
            "gated": False,
            "disabled": False,
            "author": repo.repo_id.split("/")[0],
            "lastModified": _hub_time(commit.date),
            "createdAt": _hub_time(repo.created_at),
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
            "tags": [],
            "downloads": 0,
            "likes": 0,
        }
        self._json(200, info)

    def _no_repo_route(self, repo: _Repo, rest: str) -> None:
        raise _HubError(404, f"No API route for {self.command} {rest}", "EntryNotFound")

    def _no_api_route(self, rest: str | None) -> None:
        raise _HubError(404, f"No API route /api/{rest or ''}", "EntryNotFound")

    # ------------------------------------------------------------------ listings
    def _tree(self, repo: _Repo, revision: str, path: str | None) -> None:
        commit = self.server.resolve(repo, revision)
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        self._json(200, _tree_entries(commit, unquote(path or "").strip("/"), recursive))

    def _paths_info(self, repo: _Repo, revision: str) -> None:
        commit = self.server.resolve(repo, revision)
        form = parse_qs(self._body().decode())
        out = []
        for p in form.get("paths", []):
            p = p.strip("/")
            if p in commit.files:
                out.append(_file_entry(p, commit.files[p]))
            elif any(f.startswith(p + "/") for f in commit.files) or p == "":
                out.append({"type": "directory", "oid": commit.sha, "size": 0, "path": p})
        self._json(200, out)

    def _refs(self, repo: _Repo) -> None:
        def ref(kind: str, name: str, sha: str) -> dict:
            return {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": sha}

        refs = {
            "branches": [ref("heads", n, s) for n, s in repo.branches.items()],
            "tags": [ref("tags", n, s) for n, s in repo.tags.items()],
            "converts": [],
            "pullRequests": [],
        }
        self._json(200, refs)

    def _commits(self, repo: _Repo, revision: str) -> None:
        commit: _Commit | None = self.server.resolve(repo, revision)
        log = []
        while commit is not None:
            log.append(
                {
                    "id": commit.sha,
                    "title": commit.title,
                    "message": commit.message,
                    "authors": [{"user": self.server.user}],
                    "date": _hub_time(commit.date),
                }
            )
            commit = repo.commits.get(commit.parent) if commit.parent else None
        self._json(200, log)

    # ------------------------------------------------------------------ commits, branches, tags
    def _preupload(self, repo: _Repo, revision: str) -> None:
        head = self.server.resolve(repo, revision)
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
                {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        self._json(200, {"files": files, "commitOid": head.sha})

    def _commit(self, repo: _Repo, revision: str) -> None:
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
        commit = self.server.apply_commit(repo, revision, lines)
        url = f"{self.server.endpoint}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}/commit/{commit.sha}"
        self._json(200, {"commitUrl": url, "commitOid": commit.sha, "pullRequestUrl": None})

    def _create_branch(self, repo: _Repo, branch: str) -> None:
        name = unquote(branch)
        body = self._read_json()
        with self.server.lock:
            if name in repo.branches:
                raise _HubError(409, f"Branch {name!r} already exists.")
            repo.branches[name] = self.server.resolve(repo, body.get("startingPoint") or "main").sha
        self._json(200, {})

    def _delete_branch(self, repo: _Repo, branch: str) -> None:
        name = unquote(branch)
        with self.server.lock:
            if name not in repo.branches:
                raise _HubError(404, f"Branch {name!r} not found.", "RevisionNotFound")
            del repo.branches[name]
        self._json(200, {})

    def _create_tag(self, repo: _Repo, revision: str) -> None:
        body = self._read_json()
        tag = body["tag"]
        with self.server.lock:
            if tag in repo.tags:
                raise _HubError(409, f"Tag {tag!r} already exists.")
            repo.tags[tag] = self.server.resolve(repo, revision).sha
        self._json(200, {})

    def _delete_tag(self, repo: _Repo, tag: str) -> None:
        with self.server.lock:
            repo.tags.pop(unquote(tag), None)
        self._json(200, {})

    # ------------------------------------------------------------------ files and LFS
    def _resolve_file(self, repo: _Repo, revision: str, path: str) -> None:
        path = _check_path(unquote(path))
        with self.server.lock:
            commit = self.server.resolve(repo, revision)
            f = commit.files.get(path)
            if f is None:
                raise _HubError(404, f"Entry {path!r} not found in {repo.repo_id}@{revision}.", "EntryNotFound")
            content = self.server.blobs[f.content_key]
        headers = {"X-Repo-Commit": commit.sha, "Accept-Ranges": "bytes"}
        if f.lfs:
            # the real Hub's ETag of an LFS file is its sha256, which clients use to check the download
            headers.update(
                {"ETag": f'"{f.content_key}"', "X-Linked-Etag": f'"{f.content_key}"', "X-Linked-Size": str(f.size)}
            )
        else:
            headers["ETag"] = f'"{f.git_oid}"'
        status = 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and self.command == "GET":
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
        self._send(status, content, headers, head_only=(self.command == "HEAD"))

    def _lfs_batch(self, repo: _Repo) -> None:
        body = self._read_json()
        objects = []
        for obj in body.get("objects", []):
            oid = obj["oid"]
            if not isinstance(oid, str) or not re.fullmatch(r"[0-9a-f]{64}", oid):
                raise _BadRequest(f"LFS oid {oid!r} is not a sha256 hex digest")
            entry = {"oid": oid, "size": obj["size"]}
            with self.server.lock:
                uploaded = oid in self.server.blobs
            if not uploaded:
                href = f"{self.server.endpoint}/lfs-upload/{oid}?signature={self.server.sign_upload(oid)}"
                entry["actions"] = {"upload": {"href": href, "header": {}}}
            objects.append(entry)
        self._json(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_upload(self, oid: str) -> None:
        self.server.check_upload_signature(oid, self.query.get("signature", [""])[0])
        data = self._body()
        digest = hashlib.sha256(data).hexdigest()
        if digest != oid:
            raise _HubError(400, f"LFS upload for {oid} has sha256 {digest}: content corrupted in transit.")
        with self.server.lock:
            self.server.blobs[oid] = data
        self._send(200)


def _file_entry(path: str, f: _File) -> dict:
    entry = {"type": "file", "oid": f.git_oid, "size": f.size, "path": path}
    if f.lfs:
        entry["lfs"] = {"oid": f.content_key, "size": f.size, "pointerSize": 134}
    return entry


def _tree_entries(commit: _Commit, path: str, recursive: bool) -> list[dict]:
    """The Hub's ``tree`` listing of ``path`` (a folder or one file) at ``commit``."""
    prefix = path + "/" if path else ""
    if path and path in commit.files:
        return [_file_entry(path, commit.files[path])]
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
        out.append(_file_entry(p, f))
    if path and not out:
        raise _HubError(404, f"{path!r} does not exist at this revision.", "EntryNotFound")
    return out


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
        self._server = _HubServer((host, port), user=user, token=token)
        self._thread: threading.Thread | None = None

    @property
    def user(self) -> str:
        """The name ``whoami`` returns (the default namespace of new repositories)."""
        return self._server.user

    @property
    def token(self) -> str | None:
        """The token writes need (``None``: none needed)."""
        return self._server.token

    @property
    def requests(self) -> list[tuple[str, str]]:
        """Every request received so far, as ``(method, path)``, oldest first."""
        return self._server.requests

    # ------------------------------------------------------------------ lifecycle
    @property
    def endpoint(self) -> str:
        return self._server.endpoint

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
    def repo_ids(self, repo_type: str | None = None) -> list[str]:
        """The ids of the stored repositories (of one ``repo_type``: ``"model"``, ``"dataset"``, ``"space"``)."""
        with self._server.lock:
            return sorted(rid for rtype, rid in self._server.repos if repo_type in (None, rtype))

    def stored_object(self, sha256: str) -> bytes | None:
        """The stored content whose sha256 is ``sha256`` (a committed file or an uploaded LFS object), else ``None``."""
        with self._server.lock:
            return self._server.blobs.get(sha256)

    def repo_files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        """Return ``{path: content}`` of a revision, straight from the store (bypassing HTTP)."""
        server = self._server
        with server.lock:
            commit = server.resolve(server.get_repo(repo_type, repo_id), revision)
            return {p: server.blobs[f.content_key] for p, f in commit.files.items()}

    def corrupt_file(self, repo_id: str, path: str, data: bytes, repo_type: str = "model") -> None:
        """Replace the stored bytes of ``path`` at ``main`` *without* updating its hashes (simulates corruption)."""
        server = self._server
        with server.lock:
            f = server.resolve(server.get_repo(repo_type, repo_id), "main").files[path]
            key = "corrupt-" + hashlib.sha256(data).hexdigest()
            server.blobs[key] = data
            f.content_key = key
