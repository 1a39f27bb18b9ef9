"""Which commits may change production: the desired commit's SSH signature, checked against an
allowed-signers file, before the reconciler touches the database (as Flux's `verify` does
before it applies a revision).

Git does the cryptography (`git verify-commit`, or `git verify-tag` when the ref is an annotated
tag) with `gpg.format ssh` and `gpg.ssh.allowedSignersFile`; a commit passes only when git
exits 0 AND names the principal that signed it, so "a good signature by a key nobody allowed"
is refused.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from registry.errors import Refused, UsageError
from registry.repository.git import Git

GOOD = re.compile(r'^Good "git" signature for (?P<principal>.+) with (?P<key>.+)$', re.MULTILINE)


@dataclass(frozen=True)
class Signature:
    """Who signed the desired revision, as git verified it."""

    revision: str
    principal: str
    key: str


def allowed_signers(git: Git, explicit: Path | None) -> Path:
    """`explicit`, else git config `gpg.ssh.allowedSignersFile` (a relative path is taken from
    the repository root, as git does); it must exist. Asked of `git config`, not GitPython's
    config reader: that one ignores GIT_CONFIG_GLOBAL and GIT_CONFIG_NOSYSTEM, and which file
    a key comes from decides who may change production."""
    if explicit is None:
        configured = git.run("config", "--get", "gpg.ssh.allowedSignersFile", check=False).strip()
        if not configured:
            raise UsageError(
                "--require-signed needs an allowed signers file",
                fix="pass --allowed-signers FILE or set git config gpg.ssh.allowedSignersFile",
            )
        explicit = Path(os.path.expanduser(configured))
        if not explicit.is_absolute():
            explicit = git.root / explicit
    if not explicit.is_file():
        raise UsageError(f"allowed signers file {explicit} does not exist",
                         fix="pass --allowed-signers with an ssh-keygen allowed_signers file")
    return explicit


def verify(git: Git, ref: str, commit: str, signers: Path) -> Signature:
    """The signature of `ref` (an annotated tag's own signature, else the commit's), or Refused
    saying why it does not verify."""
    tag = git.object_type(ref) == "tag"
    revision = ref if tag else commit
    command = "verify-tag" if tag else "verify-commit"
    status, out, err = git.execute(
        # The verifier is pinned too: a repository's own config must not swap it for a
        # program that always says "Good".
        "-c", "gpg.format=ssh", "-c", "gpg.ssh.program=ssh-keygen",
        "-c", f"gpg.ssh.allowedSignersFile={signers}", command, revision,
    )
    output = (err + out.decode("utf-8", errors="replace")).strip()
    good = GOOD.search(output)
    what = f"tag {ref}" if tag else f"commit {commit[:10]} ({ref})"
    if status == 0 and good is not None:
        return Signature(revision, good["principal"], good["key"])
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines:
        reason = "it carries no signature"
    elif "No principal matched" in output:
        reason = "it is signed by a key that is not in the allowed signers file"
    else:
        reason = lines[-1].removeprefix("error: ")
    raise Refused(f"{what} is not signed by an allowed signer: {reason}; nothing was applied",
                  fix=f"sign the merge with a key listed in {signers} (git commit -S with "
                  "gpg.format=ssh), or reconcile without --require-signed")
