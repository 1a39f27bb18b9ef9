"""`registry tag`, `list`, `show`, `runbook`, `env`: the registry as a team reads it."""

from __future__ import annotations

import json

from tests.helpers import RegistryRepo, run_cli


def test_tag_annotates_each_config_on_the_commit_that_introduced_it(registry_repo: RegistryRepo) -> None:
    first = registry_repo.locked()
    second = registry_repo.locked(chunk_size=300)

    result = run_cli("tag", "--repo", registry_repo.path, "--push", "--format", "json")

    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["created"] == [f"chunk-config/{first}", f"chunk-config/{second}"]
    for version in (first, second):
        tag = f"chunk-config/{version}"
        assert registry_repo.git("cat-file", "-t", tag) == "tag"
        introduced = registry_repo.git("log", "--format=%H", "--diff-filter=A", "main", "--",
                                       f"configs/{version}.yaml")
        assert registry_repo.git("rev-list", "-n1", tag) == introduced
        assert registry_repo.git("ls-remote", "--tags", "origin", tag)


def test_tag_is_idempotent(registry_repo: RegistryRepo) -> None:
    registry_repo.locked()
    assert run_cli("tag", "--repo", registry_repo.path).code == 0
    tags_before = registry_repo.git("for-each-ref", "--format=%(objectname)", "refs/tags")

    again = run_cli("tag", "--repo", registry_repo.path)

    assert again.code == 0
    assert again.lines[-1] == "0 tags created, 1 already tagged"
    assert registry_repo.git("for-each-ref", "--format=%(objectname)", "refs/tags") == tags_before


def test_tag_prefix_is_configurable(registry_repo: RegistryRepo) -> None:
    production = registry_repo.read("configs/production.yaml") + "tags: {prefix: locks/}\n"
    registry_repo.write("configs/production.yaml", production, message="custom tag prefix")
    version = registry_repo.locked()

    run_cli("tag", "--repo", registry_repo.path)

    assert registry_repo.git("tag", "--list") == f"locks/{version}"


def test_list_and_show_report_params_tag_and_production(registry_repo: RegistryRepo) -> None:
    first = registry_repo.locked()
    second = registry_repo.locked(chunk_size=300, prefix_policy="B")
    production = registry_repo.read("configs/production.yaml").replace("production: null",
                                                                        f"production: {first}")
    registry_repo.write("configs/production.yaml", production, message="promote")
    run_cli("tag", "--repo", registry_repo.path)

    listed = json.loads(run_cli("list", "--repo", registry_repo.path, "--format", "json").stdout)
    shown = json.loads(run_cli("show", "production", "--repo", registry_repo.path, "--format",
                               "json").stdout)
    text = run_cli("list", "--repo", registry_repo.path).stdout

    assert [row["chunk_version"] for row in listed] == [second, first]
    assert [row["is_production"] for row in listed] == [False, True]
    assert listed[0]["label"] == "300/0.10/J=0.8/prefix-B"
    assert shown["chunk_version"] == first
    assert shown["tag"] == f"chunk-config/{first}"
    assert shown["table"] == "public.document_chunks_" + first.replace("-", "_")
    assert shown["overlap_tokens"] == 45
    assert f"*  {first}" in text


def test_show_an_unknown_version_is_one_clear_line(registry_repo: RegistryRepo) -> None:
    result = run_cli("show", "2020-01-01-000000-v1", "--repo", registry_repo.path)
    assert result.code == 16
    assert result.stderr == ("error: no locked config 2020-01-01-000000-v1 on origin/main "
                             "(run `registry list` to see the versions)\n")


def test_env_prints_exports_that_from_env_reads_back(registry_repo: RegistryRepo) -> None:
    import shlex

    from registry.config import ChunkingConfig

    version = registry_repo.locked(chunk_size=300, overlap_ratio=0.2)
    result = run_cli("env", version, "--repo", registry_repo.path)
    environ = {}
    for line in result.lines:
        key, value = line.removeprefix("export ").split("=", 1)
        environ[key] = shlex.split(value)[0]

    env = ChunkingConfig.from_env(environ)

    assert (env.chunk_size, env.overlap_ratio, env.chunk_version) == (300, 0.2, version)
    assert env.eval_disable_cache is True
    assert environ["INGEST_RUN_ID"].startswith(f"{version}-")


def test_runbook_formats(registry_repo: RegistryRepo) -> None:
    version = registry_repo.locked()
    text = run_cli("runbook", version, "--repo", registry_repo.path).stdout
    shell = run_cli("runbook", version, "--repo", registry_repo.path, "--format", "shell").stdout
    data = json.loads(run_cli("runbook", version, "--repo", registry_repo.path, "--format",
                              "json").stdout)

    assert f"registry ingest {version} --source $CORPUS" in text
    assert "export CHUNK_SIZE=450" in shell and shell.startswith("# Runbook")
    assert data["environment"]["PREFIX_POLICY"] == "A"
    assert any("prefix leaked" in c["check"] for c in data["sanity_checks"])


def test_lock_with_generate_runbook_commits_it_next_to_the_config(registry_repo: RegistryRepo) -> None:
    result = run_cli("lock", "--repo", registry_repo.path, "--tokenizer-file",
                     registry_repo.tokenizer_file, "--generate-runbook", "--format", "json")
    data = json.loads(result.stdout)
    files = registry_repo.git("diff", "--name-only", f"main..{data['branch']}").splitlines()
    assert files == [f"configs/{data['chunk_version']}.yaml", f"runbooks/{data['chunk_version']}.md"]
