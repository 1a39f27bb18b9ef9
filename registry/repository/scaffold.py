"""`registry init`: a team's own registry repository, ready to use.

The files come from registry/templates/registry-repo (package data, so the wheel carries them),
with this tool's released version and the repository that publishes it filled in. Nothing is
ever overwritten: a file that exists with the same content is left alone (a rerun is a no-op),
one with other content stops the command before anything is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from registry.errors import InitConflict, UsageError

TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "registry-repo"
DEFAULT_TOOL_REPO = "chunk-registry/chunk-registry"
"""The GitHub repository whose release tags the workflows and the pre-commit hook pin."""
README_MARKER = "<!-- chunk-registry: written by `registry init` -->"
FILES: dict[str, str] = {
    "configs/production.yaml": "configs/production.yaml",
    ".github/workflows/validate.yml": "github/workflows/validate.yml",
    ".github/workflows/reconcile.yml": "github/workflows/reconcile.yml",
    ".github/zizmor.yml": "github/zizmor.yml",
    ".pre-commit-config.yaml": "pre-commit-config.yaml",
}
"""Target path in the registry repository -> template (no dot names inside the package)."""
STAGED_FILES: dict[str, str] = {
    **FILES,
    "configs/environments/staging.yaml": "configs/environments/staging.yaml",
    ".github/workflows/reconcile.yml": "github/workflows/reconcile-staged.yml",
}
"""`init --staging`: staging and production, one reconcile job each."""
STAGED_PRODUCTION = """production: null
# The database: the variable dsn_env names (in CI: the REGISTRY_DSN secret of the GitHub
# environment `production`). The path: a version reaches production only after staging served
# it for the soak with passing health reports (checked by promote, the PR plan, the reconciler).
dsn_env: PRODUCTION_DSN
promotion: {from: staging, soak: 24h, require_healthy: true}
"""
_SHA = re.compile(r"^[0-9a-f]{40}$")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$")


@dataclass
class InitResult:
    root: Path
    version: str
    git_initialised: bool = False
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.git_initialised or bool(self.written)


def tool_version() -> str:
    """The installed chunk-registry version: the release the new repository pins."""
    from importlib.metadata import version

    return version("chunk-registry")


def registry_name(directory: Path) -> str:
    """The `registry:` name `init` writes: the directory's name made a valid one
    (`[a-z][a-z0-9-]{0,62}`), `registry` when nothing of it is left."""
    slug = re.sub(r"[^a-z0-9]+", "-", directory.name.lower()).strip("-").lstrip("0123456789-")
    return slug[:63].rstrip("-") or "registry"


def render(version: str, tool_repo: str = DEFAULT_TOOL_REPO,
           pin_sha: str | None = None, name: str = "registry", *,
           staging: bool = False) -> dict[str, str]:
    """Every file `init` writes (README.md: the section it appends), by target path; `name`
    is the registry's identity written into production.yaml; `staging` adds the staging
    environment and production's promotion path from it."""
    if not _REPO.match(tool_repo):
        raise UsageError(f"--tool-repo {tool_repo!r} is not OWNER/NAME")
    if pin_sha is not None and not _SHA.match(pin_sha):
        raise UsageError(f"--pin-sha {pin_sha!r} is not a 40-digit commit SHA",
                         fix=f"the full SHA of tag v{version} of {tool_repo}")
    tag = f"v{version}"
    values = {
        "@TOOL_REPO@": tool_repo,
        "@TOOL_OWNER@": tool_repo.split("/")[0],
        "@VERSION@": version,
        "@REF@": f"{pin_sha} # {tag}" if pin_sha else tag,
        "@REV@": f"{pin_sha}  # frozen: {tag}" if pin_sha else tag,
        "@REGISTRY_NAME@": name,
    }
    out = {}
    files = STAGED_FILES if staging else FILES
    for target, template in {**files, "README.md": "README-section.md"}.items():
        text = (TEMPLATES / template).read_text("utf-8")
        for key, value in values.items():
            text = text.replace(key, value)
        if staging and target == "configs/production.yaml":
            text = text.replace("production: null\n", STAGED_PRODUCTION, 1)
        out[target] = text
    return out


def init(directory: Path, *, tool_repo: str = DEFAULT_TOOL_REPO, pin_sha: str | None = None,
         version: str | None = None, staging: bool = False) -> InitResult:
    """Make `directory` a registry repository (git init when it is not one)."""
    import git

    root = directory.resolve()
    if root.exists() and not root.is_dir():
        raise UsageError(f"{directory} exists and is not a directory")
    version = version or tool_version()
    files = render(version, tool_repo, pin_sha, registry_name(root), staging=staging)
    readme = files.pop("README.md")
    result = InitResult(root, version)
    for target, text in files.items():
        path = root / target
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise InitConflict(f"{target} exists and is not a regular file", where=str(root),
                               fix="move it aside and rerun `registry init`")
        if path.exists() and path.read_text("utf-8", errors="replace") != text:
            raise InitConflict(f"{target} exists with other content", where=str(root),
                               fix="move it aside or merge it by hand; `registry init` never "
                               "overwrites")
    readme_path = root / "README.md"
    if readme_path.is_symlink() or (readme_path.exists() and not readme_path.is_file()):
        raise InitConflict("README.md exists and is not a regular file", where=str(root),
                           fix="move it aside and rerun `registry init`")
    root.mkdir(parents=True, exist_ok=True)
    try:
        git.Repo(root, search_parent_directories=False)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        git.Repo.init(root, initial_branch="main")
        result.git_initialised = True
    for target, text in files.items():
        path = root / target
        if path.exists():
            result.unchanged.append(target)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, "utf-8")
        result.written.append(target)
    current = readme_path.read_text("utf-8", errors="replace") if readme_path.exists() else ""
    if README_MARKER in current:
        result.unchanged.append("README.md")
    else:
        separator = "" if not current else ("\n" if current.endswith("\n") else "\n\n")
        readme_path.write_text(current + separator + readme, "utf-8")
        result.written.append("README.md")
    return result
