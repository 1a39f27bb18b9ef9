"""Memory by shape, not only size: one `registry ingest --workers 1` (chunking in the process
itself) of a document just under the 16 MiB limit, in the worst shapes we could construct,
stays under the bound the README states. Peak RSS is the kernel's (getrusage of the child)."""

from __future__ import annotations

import random
import resource
import string
import subprocess
from pathlib import Path
from typing import Any

import pytest

from registry.commands.reconcile import reconcile
from tests.helpers import RegistryRepo
from tests.reliability.conftest import registry_command

pytestmark = pytest.mark.reliability
SIZE = int(15.7 * 1024 * 1024)
BOUND_MB = 700
"""The README's bound for one worker on any document within --max-document-mb 16."""


def _repeat(unit: str) -> str:
    return (unit * (SIZE // len(unit) + 1))[:SIZE]


def _random_dense() -> str:
    rng = random.Random(15)
    return "".join(rng.choices(string.ascii_letters + "!?.,;:()[]{}<>-_/#*", k=SIZE))


SHAPES = {
    "punctuation only, no whitespace": lambda: _repeat("!?.,;:()[]{}<>"),
    "one character between punctuation": lambda: _repeat("a!b?c.d,e;f:"),
    "one token repeated, no whitespace": lambda: _repeat("the"),
    "one token repeated, spaced": lambda: _repeat("the "),
    "random letters and punctuation (nothing repeats)": _random_dense,
}


def _peak_rss_mb(*args: str | Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run `registry ARGS` in a fresh helper process and return the peak RSS of the registry
    process alone (RUSAGE_CHILDREN of the helper holds exactly that one child)."""
    helper = ("import resource, subprocess, sys\n"
              "proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
              "sys.stderr.write(proc.stderr)\n"
              "print(proc.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    command = registry_command(*args)
    proc = subprocess.run([command[0], "-c", helper, *command], capture_output=True, text=True,
                          timeout=900, check=False)
    code, kilobytes = proc.stdout.split()[-2:]
    proc.returncode = int(code)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0
    return int(kilobytes) / 1024, proc


@pytest.mark.timeout(900)  # a 16 MB ingest on one worker; the suite's 300 s is for ordinary tests
@pytest.mark.parametrize("shape", list(SHAPES))
def test_one_worker_stays_under_the_bound_on_the_worst_shapes(
    registry_repo: RegistryRepo, dsn: str, tmp_path: Path, shape: str,
    figures: dict[str, Any],
) -> None:
    version = registry_repo.locked()
    reconcile(registry_repo.path, dsn=dsn, fetch=False)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "pathological.txt").write_text(SHAPES[shape]())
    peak, proc = _peak_rss_mb("ingest", version, "--repo", registry_repo.path, "--dsn", dsn,
                              "--source", corpus, "--tokenizer-file",
                              registry_repo.tokenizer_file, "--workers", "1")
    figures.setdefault("peak RSS of one ingest worker, 15.7 MB document (MB)", {})[shape] = (
        round(peak))
    assert proc.returncode == 0, proc.stderr
    assert peak < BOUND_MB, f"{shape}: {peak:.0f} MB"
