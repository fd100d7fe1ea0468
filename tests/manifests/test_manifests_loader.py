"""The loader: valid manifests, cross-file checks, the parse cache, and hostile input."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.manifests.errors import ManifestError, ManifestErrors
from reconciler.manifests.loader import MAX_FILE_SIZE, SourceFile, load, safe_relpath
from reconciler.manifests.models import ConfigSpec, make_task
from reconciler.manifests.yaml_safety import new_loader, release
from tests.manifests.manifest_support import BASE, Repo, errors_of, load_files

ROOT = Path(__file__).resolve().parents[2]


def task(name: str, extra: str = "", *, lane: str = "web", repo: str = "webapp") -> str:
    return (
        "apiVersion: reconciler/v1\n"
        "kind: Task\n"
        f"metadata: {{name: {name}}}\n"
        "spec:\n"
        f"  lane: {lane}\n"
        f"  repo: {repo}\n"
        "  agent: claude\n"
        "  prompt: fix it\n" + extra
    )


# ---------------------------------------------------------------------------------- valid


def test_example_manifests_of_this_repository_load() -> None:
    def read(path: str) -> bytes | None:
        target = (ROOT / path).resolve()
        if ROOT not in target.parents or not target.is_file():
            return None
        return target.read_bytes()

    files = []
    for p in sorted((ROOT / "manifests").rglob("*.y*ml")):
        rel = p.relative_to(ROOT).as_posix()
        data = p.read_bytes()
        files.append(SourceFile(rel, rel, len(data)))
    desired = load(files, read, "abc")
    assert desired.lanes["web"].max_concurrency == 2
    assert desired.lanes["docs"].max_concurrency == 1
    assert [r.name for r in desired.lanes["web"].repos] == ["webapp"]
    assert [r.name for r in desired.lanes["docs"].repos] == ["handbook"]
    assert set(desired.agents) == {"claude"}
    assert len(desired.tasks) == 5
    fix = desired.tasks["fix-add"]
    assert fix.prompt == (ROOT / "manifests/prompts/fix-add.md").read_text()
    assert fix.source.path == "manifests/tasks/webapp.yaml"
    assert desired.tasks["link-style-guide"].spec.depends_on == ["write-style-guide"]
    for t in desired.tasks.values():
        assert t.spec.lane in desired.lanes
        assert desired.lanes[t.spec.lane].repo(t.spec.repo) is not None
        assert t.spec.agent in desired.agents


def test_a_valid_task_is_resolved_with_its_source_and_generation() -> None:
    desired = load_files({"manifests/t.yaml": "# comment\n---\n" + task("alpha")})
    alpha = desired.tasks["alpha"]
    assert alpha.prompt == "fix it"
    assert str(alpha.source) == "manifests/t.yaml:3:1"
    assert alpha.generation == make_task("alpha", alpha.spec).generation
    assert desired.revision == "0" * 40
    assert desired.config == ConfigSpec()


def test_documents_keep_their_own_start_line() -> None:
    text = task("one") + "---\n\n" + task("two")
    desired = load_files({"manifests/t.yaml": text})
    assert desired.tasks["one"].source.line == 1
    assert desired.tasks["two"].source.line == 11


def test_empty_documents_and_comment_only_files_are_skipped() -> None:
    desired = load_files(
        {
            "manifests/empty.yaml": "",
            "manifests/comments.yml": "# nothing here yet\n# really\n",
            "manifests/dashes.yaml": "---\n---\n# c\n---\n" + task("solo") + "---\n",
        }
    )
    assert list(desired.tasks) == ["solo"]


def test_config_document_is_used() -> None:
    desired = load_files(
        {
            "manifests/config.yaml": (
                "apiVersion: reconciler/v1\nkind: Config\nmetadata: {name: c}\n"
                "spec: {maxConcurrency: 7, branchPrefix: bots/, backoff: {base: 1m}}\n"
            )
        }
    )
    assert desired.config.max_concurrency == 7
    assert desired.config.branch_prefix == "bots/"
    assert desired.config.backoff.base == 60.0


def test_prompt_file_is_read_relative_to_the_repo_root() -> None:
    text = task("pf").replace("  prompt: fix it\n", "  promptFile: ./prompts/../prompts/ok.md\n")
    desired = load_files({"manifests/deep/dir/t.yaml": text})
    assert desired.tasks["pf"].prompt == "Fix it.\n"


def test_unknown_dependency_is_not_an_error() -> None:
    desired = load_files({"manifests/t.yaml": task("waits", "  dependsOn: [not-yet]\n")})
    assert desired.tasks["waits"].spec.depends_on == ["not-yet"]


def test_aliases_within_budget_are_fine() -> None:
    text = task("aliased", "  success:\n    markers: &m [DONE]\n  pr: {labels: *m}\n")
    desired = load_files({"manifests/t.yaml": text})
    assert desired.tasks["aliased"].spec.pr.labels == ["DONE"]


def test_file_with_many_dashes_takes_the_safe_parser_and_loads_the_same() -> None:
    prompt = "  prompt: |\n" + "".join(f"    - item {i} -- {'-' * 20}\n" for i in range(200))
    text = "# header\n" + task("dashes").replace("  prompt: fix it\n", prompt)
    assert text.count("-") > 2000
    t = load_files({"manifests/t.yaml": text}).tasks["dashes"]
    assert t.prompt.count("\n") == 200
    assert str(t.source) == "manifests/t.yaml:2:1"


def test_yaml_11_directive_is_honoured() -> None:
    text = "%YAML 1.1\n---\n" + task("old", "  paused: yes\n")
    assert load_files({"manifests/t.yaml": text}).tasks["old"].spec.paused is True


# ------------------------------------------------------------------------------ cross-file


def test_duplicate_names_across_files_point_at_the_second() -> None:
    errors = errors_of(
        {"manifests/a.yaml": task("same"), "manifests/b.yaml": "\n\n" + task("same")}
    )
    assert [str(e).splitlines()[0] for e in errors] == [
        "manifests/b.yaml:5:18: duplicate Task name 'same': "
        "already defined at manifests/a.yaml:3:18"
    ]


def test_an_invalid_task_s_references_are_checked_in_the_same_load() -> None:
    # a schema error and an unknown agent in one task: both at once, not one fix at a time
    broken = task("t", "  retries: 3\n").replace("agent: claude", "agent: fakee")
    messages = [e.message for e in errors_of({"manifests/t.yaml": broken})]
    assert any("retries" in m for m in messages), messages
    assert "task 't' refers to unknown agent 'fakee'" in messages
    # a reference the schema itself refused is that error alone, not also an unknown name
    refused = task("t").replace("lane: web", "lane: [web]")
    assert not any("unknown lane" in e.message for e in errors_of({"manifests/t.yaml": refused}))


def test_a_depends_on_naming_no_task_is_a_warning_with_what_it_may_mean() -> None:
    files = {
        "manifests/a.yaml": task("write-guide"),
        "manifests/b.yaml": task("link", "  dependsOn: [write-giude]\n"),
    }
    desired = load_files(files)
    assert "link" in desired.tasks  # valid: the task may come in a later commit
    (warning,) = desired.warnings
    assert warning.position.startswith("manifests/b.yaml:")
    assert "depends on 'write-giude', which is not a task" in warning.message
    assert warning.hint.startswith("did you mean 'write-guide'?")


def test_same_name_in_different_kinds_is_fine() -> None:
    agent = "apiVersion: reconciler/v1\nkind: Agent\nmetadata: {name: web}\nspec: {kind: claude}\n"
    desired = load_files({"manifests/a.yaml": agent, "manifests/t.yaml": task("web")})
    assert "web" in desired.agents
    assert "web" in desired.tasks
    assert "web" in desired.lanes


def test_every_error_of_every_file_is_reported_in_order() -> None:
    errors = errors_of(
        {
            "manifests/b.yaml": task("b", "  maxAttempts: 0\n  bogus: 1\n"),
            "manifests/a.yaml": "a: [\n",
            "manifests/c.yaml": task("c", lane="nowhere"),
        }
    )
    assert [(e.path, e.line, e.column) for e in errors] == [
        ("manifests/a.yaml", 2, 1),
        ("manifests/b.yaml", 9, 16),
        ("manifests/b.yaml", 10, 3),
        ("manifests/c.yaml", 5, 9),
    ]


def test_invalid_lane_does_not_also_make_its_tasks_unknown() -> None:
    lane = "apiVersion: reconciler/v1\nkind: Lane\nmetadata: {name: mobile}\nspec: {repos: 3}\n"
    errors = errors_of({"manifests/lane.yaml": lane, "manifests/t.yaml": task("m", lane="mobile")})
    assert [e.path for e in errors] == ["manifests/lane.yaml"]


def test_long_cycles_are_reported_once() -> None:
    files = {
        f"manifests/t{i:02d}.yaml": task(f"t{i:02d}", f"  dependsOn: [t{(i + 1) % 12:02d}]\n")
        for i in range(12)
    }
    errors = errors_of(files)
    assert len(errors) == 1
    assert errors[0].message.startswith("dependency cycle: t00 → t01 → ")
    assert errors[0].message.endswith("t11 → t00")


def test_cycle_through_part_of_a_graph_leaves_the_rest_alone() -> None:
    errors = errors_of(
        {
            "manifests/a.yaml": task("a", "  dependsOn: [b]\n"),
            "manifests/b.yaml": task("b", "  dependsOn: [a]\n"),
            "manifests/c.yaml": task("c", "  dependsOn: [a, b]\n"),
        }
    )
    assert [(e.path, e.message) for e in errors] == [
        ("manifests/a.yaml", "dependency cycle: a → b → a"),
        ("manifests/b.yaml", "dependency cycle: b → a → b"),
    ]


def test_prompt_file_that_is_not_utf8() -> None:
    text = task("pf").replace("  prompt: fix it\n", "  promptFile: prompts/bad.md\n")
    errors = errors_of({"manifests/t.yaml": text, "prompts/bad.md": b"ok\n\xff"})
    assert [(e.line, e.column) for e in errors] == [(8, 15)]
    assert "is not UTF-8 text (bad byte at line 2, column 1)" in errors[0].message


# ---------------------------------------------------------------------------------- limits


def test_oversized_file_is_reported_at_1_1_and_not_read() -> None:
    repo = Repo({**BASE, "manifests/big.yaml": b"# x\n"})
    files = repo.source_files()
    files = [SourceFile(f.path, f.blob, MAX_FILE_SIZE + 1) if "big" in f.path else f for f in files]
    with pytest.raises(ManifestErrors) as info:
        load(files, repo.read, "rev")
    (error,) = info.value.errors
    assert (error.path, error.line, error.column) == ("manifests/big.yaml", 1, 1)
    assert "over the limit" in error.message
    assert repo.reads["manifests/big.yaml"] == 0


def test_oversized_content_is_refused_even_if_the_listing_is_wrong() -> None:
    big = b"a: " + b"x" * MAX_FILE_SIZE + b"\n"
    repo = Repo({"manifests/big.yaml": big})
    files = [SourceFile("manifests/big.yaml", "b" * 40, 10)]
    with pytest.raises(ManifestErrors) as info:
        load(files, repo.read, "rev")
    assert "over the limit" in info.value.errors[0].message


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    for text in ("a: " + "[" * 50_000 + "]" * 50_000 + "\n", "- " * 5_000 + "x\n"):
        (error,) = errors_of({"manifests/deep.yaml": text}, base=False)
        assert "nests more than 100 levels" in error.message


def test_deep_nesting_split_over_documents_is_still_refused() -> None:
    # the nesting bound is per document: documents nested across a `---` line are refused by
    # the parser, so a file cannot hide a deep one behind small ones
    deep = "a: " + "[" * 3_000 + "]" * 3_000 + "\n"
    errors = errors_of({"manifests/deep.yaml": task("ok") + "---\n" + deep})
    assert [e.line for e in errors if "nests more than 100 levels" in e.message] == [10]
    across = task("ok") + "  labels: [" + "[\n---\n" * 3_000 + "]\n"
    (error,) = errors_of({"manifests/x.yaml": across})
    assert (error.line, error.message) == (10, "invalid YAML: did not find expected node content")


def test_a_file_of_many_small_documents_takes_the_c_parser() -> None:
    many = "---\n".join(task(f"t{i}", "  pr: {labels: [a-b, c-d]}\n") for i in range(600))
    assert many.count("-") + many.count("[") + many.count("{") > 2_000
    loader, is_c = new_loader(many.encode())
    release(loader)
    assert is_c
    tasks = load_files({**BASE, "manifests/many.yaml": many}).tasks
    assert len([n for n in tasks if n.startswith("t")]) == 600
    loader, is_c = new_loader(("a: " + "[" * 2_001 + "]" * 2_001 + "\n").encode())
    release(loader)
    assert not is_c


def test_alias_reference_budget() -> None:
    text = "a: &a x\nb: [" + ", ".join(["*a"] * 10_001) + "]\n"
    (error,) = errors_of({"manifests/refs.yaml": text}, base=False)
    assert "more than 10000 alias references" in error.message


def test_missing_listed_file_is_an_error() -> None:
    files = [SourceFile("manifests/gone.yaml", "c" * 40, 10)]
    with pytest.raises(ManifestErrors) as info:
        load(files, lambda _: None, "rev")
    assert str(info.value.errors[0]).startswith("manifests/gone.yaml:1:1: the file is listed")


def test_equal_parts_of_task_specs_are_held_once() -> None:
    same = "  success: {requireCommits: true}\n"
    desired = load_files(
        {
            "manifests/a.yaml": task("a", same),
            "manifests/b.yaml": task("b", same),
            "manifests/c.yaml": task("c", "  success: {requireCommits: false}\n"),
            "manifests/d.yaml": task("d"),
        }
    )
    a, b, c, d = (desired.tasks[name].spec for name in "abcd")
    assert a.success is b.success and a.success.require_commits
    assert c.success is not a.success and not c.success.require_commits
    # the default says the same as `requireCommits: true`, but sets no field: kept apart
    assert d.success == a.success and d.success is not a.success
    assert d.success.model_fields_set == set() and a.success.model_fields_set == {"require_commits"}
    assert a.pr is d.pr and a.budget is d.budget and a.depends_on is d.depends_on
    assert a.model_fields_set is b.model_fields_set and a.lane is d.lane
    assert desired.tasks["a"].labels is desired.tasks["d"].labels


# ----------------------------------------------------------------------------------- cache


def test_cache_skips_reading_and_parsing_unchanged_files() -> None:
    prompt_task = task("pf").replace("  prompt: fix it\n", "  promptFile: prompts/ok.md\n")
    repo = Repo({**BASE, "manifests/a.yaml": task("a"), "manifests/pf.yaml": prompt_task})
    cache: dict[str, object] = {}
    first = repo.load(cache)
    assert len(cache) == 3
    assert repo.reads["manifests/a.yaml"] == 1
    repo.reads.clear()
    second = repo.load(cache)
    assert not [p for p in repo.reads if p.startswith("manifests/")]
    assert repo.reads["prompts/ok.md"] == 1  # prompt files are always resolved
    assert second.tasks == first.tasks
    assert second.lanes == first.lanes


def test_cache_sees_changed_prompt_files() -> None:
    prompt_task = task("pf").replace("  prompt: fix it\n", "  promptFile: prompts/ok.md\n")
    repo = Repo({**BASE, "manifests/pf.yaml": prompt_task})
    cache: dict[str, object] = {}
    before = repo.load(cache).tasks["pf"]
    repo.files["prompts/ok.md"] = b"Now something else.\n"
    after = repo.load(cache).tasks["pf"]
    assert after.prompt == "Now something else.\n"
    assert after.generation != before.generation


def test_cache_only_holds_valid_files_and_cross_checks_still_run() -> None:
    repo = Repo({**BASE, "manifests/b.yaml": task("same"), "manifests/x.yaml": "a: [\n"})
    cache: dict[str, object] = {}
    with pytest.raises(ManifestErrors):
        repo.load(cache)
    blobs = {f.path: f.blob for f in repo.source_files()}
    assert blobs["manifests/b.yaml"] in cache
    assert blobs["manifests/x.yaml"] not in cache
    # a new file sorted before the cached one: the duplicate is the cached file's document,
    # and its position is found by reading that file again (errors only)
    del repo.files["manifests/x.yaml"]
    repo.files["manifests/a.yaml"] = task("same").encode()
    repo.reads.clear()
    with pytest.raises(ManifestErrors) as info:
        repo.load(cache)
    (error,) = info.value.errors
    assert error.position == "manifests/b.yaml:3:18"
    assert "already defined at manifests/a.yaml:3:18" in error.message


def test_a_garbage_cache_entry_is_a_miss() -> None:
    repo = Repo({**BASE, "manifests/a.yaml": task("a")})
    cache: dict[str, object] = {f.blob: "garbage" for f in repo.source_files()}
    assert "a" in repo.load(cache).tasks
    assert all(isinstance(v, tuple) for v in cache.values())


# ------------------------------------------------------------------------------ formatting


def test_error_text_and_sorting() -> None:
    e1 = ManifestError("b.yaml", 2, 1, "second", "fix b")
    e2 = ManifestError("a.yaml", 9, 3, "first")
    e3 = ManifestError("b.yaml", 1, 5, "third", "fix c")
    errors = ManifestErrors([e1, e2, e3, e1])
    assert [e.message for e in errors] == ["first", "third", "second"]
    assert str(e1) == "b.yaml:2:1: second\n  hint: fix b"
    assert str(e2) == "a.yaml:9:3: first"
    assert errors.summary() == "3 manifest errors in 2 files"
    assert str(errors).splitlines()[0] == "a.yaml:9:3: first"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("prompts/a.md", "prompts/a.md"),
        ("./prompts//a.md", "prompts/a.md"),
        ("prompts/../x.md", "x.md"),
        ("../x.md", None),
        ("prompts/../../x.md", None),
        ("/etc/passwd", None),
        ("~/x.md", None),
        ("C:/x.md", None),
        ("", None),
        (".", None),
        ("a\nb", None),
        ("a\0b", None),
    ],
)
def test_safe_relpath(path: str, expected: str | None) -> None:
    assert safe_relpath(path) == expected


def test_who_commits_defaults_by_kind_and_an_explicit_choice_stays() -> None:
    """Codex's sandbox keeps .git read-only, so a codex Agent that does not say is committed
    for by the reconciler; claude commits itself; what a manifest says is kept."""
    agents = "".join(
        f"---\napiVersion: reconciler/v1\nkind: Agent\nmetadata: {{name: {name}}}\n"
        f"spec: {{kind: {kind}{extra}}}\n"
        for name, kind, extra in [
            ("codex", "codex", ""),
            ("codex-commits", "codex", ", commits: agent"),
            ("aider-reconciler", "aider", ", commits: reconciler"),
        ]
    )
    desired = load_files({"manifests/agents.yaml": agents})
    commits = {name: spec.commits for name, spec in desired.agents.items()}
    assert commits == {
        "claude": "agent",
        "codex": "reconciler",
        "codex-commits": "agent",
        "aider-reconciler": "reconciler",
    }


def test_a_flood_of_errors_is_one_screen_and_a_count() -> None:
    from reconciler.manifests.errors import SHOWN

    files = {f"manifests/t{i:03}.yaml": task(f"t{i}", "  retries: 3\n") for i in range(120)}
    with pytest.raises(ManifestErrors) as info:
        load_files(files)
    lines = info.value.shown()
    assert len(info.value.errors) == 120
    assert len(lines) == SHOWN + 1
    assert lines[-1] == f"… and {120 - SHOWN} more errors in {120 - SHOWN} files (fix these first)"
    assert info.value.shown(limit=200) == [str(e) for e in info.value.errors]
