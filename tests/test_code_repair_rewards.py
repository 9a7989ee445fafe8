"""The code-repair diff rewards (examples/code_repair/rewards.py): diff parsing, similarity, exact match, TRL calls."""

import doctest
import os
import subprocess

import pytest

from code_repair import rewards


# Blank context lines are written without their leading space, as editors leave them: the rewards ignore trailing
# whitespace.
UTILS_FIX = """\
diff --git a/src/pkg/utils.py b/src/pkg/utils.py
index 3b18e51..a9c7d2f 100644
--- a/src/pkg/utils.py
+++ b/src/pkg/utils.py
@@ -10,7 +10,7 @@ def parse_version(text):
     parts = text.strip().split(".")
     if not parts:
         raise ValueError("empty version")
-    return tuple(int(p) for p in parts)
+    return tuple(int(p) for p in parts if p.isdigit())


 def format_version(version):
"""
# The same edit as UTILS_FIX from another tool: no index line, one line of context, other line numbers.
UTILS_FIX_U1 = """\
--- a/src/pkg/utils.py
+++ b/src/pkg/utils.py
@@ -13,2 +13,2 @@
         raise ValueError("empty version")
-    return tuple(int(p) for p in parts)
+    return tuple(int(p) for p in parts if p.isdigit())

"""
UTILS_GIT_U1 = "diff --git a/src/pkg/utils.py b/src/pkg/utils.py\n" + UTILS_FIX_U1
UTILS_OTHER_LINE = UTILS_FIX.replace("if p.isdigit())", "if p)")
CORE_FIX = """\
diff --git a/src/pkg/core.py b/src/pkg/core.py
index 5e0f1c2..77d3b90 100644
--- a/src/pkg/core.py
+++ b/src/pkg/core.py
@@ -42,6 +42,8 @@ class Resolver:
     def resolve(self, name):
         if name in self._cache:
             return self._cache[name]
-        value = self._lookup(name)
+        value = self._lookup(name.lower())
+        if value is None:
+            raise KeyError(name)
         self._cache[name] = value
         return value
"""
CORE_NEAR_MISS = CORE_FIX.replace("raise KeyError(name)", "raise LookupError(name)")
CORE_DIFFERENT = """\
diff --git a/src/pkg/core.py b/src/pkg/core.py
index 5e0f1c2..0c4e8a1 100644
--- a/src/pkg/core.py
+++ b/src/pkg/core.py
@@ -12,4 +12,5 @@ import logging
 class Resolver:
-    def __init__(self, source):
+    def __init__(self, source, strict=False):
         self._source = source
+        self._strict = strict
         self._cache = {}
"""
ORACLE = UTILS_FIX + CORE_FIX


@pytest.mark.parametrize(
    ("generated", "oracle", "low", "high"),
    [
        pytest.param(ORACLE, ORACLE, 1.0, 1.0, id="same diff"),
        pytest.param(CORE_FIX + UTILS_FIX, ORACLE, 1.0, 1.0, id="files in another order"),
        pytest.param(UTILS_FIX, ORACLE, 0.45, 0.55, id="one of two files, other missing"),
        pytest.param(UTILS_FIX + CORE_NEAR_MISS, ORACLE, 0.5, 0.999, id="one of two right, other slightly off"),
        pytest.param(UTILS_FIX + CORE_FIX, UTILS_FIX, 0.5, 0.5, id="extra file touched"),
        pytest.param("", ORACLE, 0.0, 0.0, id="empty generated"),
        pytest.param(" \n\n\t\n", ORACLE, 0.0, 0.0, id="whitespace-only generated"),
        pytest.param(ORACLE.replace("index 3b18e51..a9c7d2f", "index 0123abc..fedc987"), ORACLE, 1.0, 1.0, id="index"),
        pytest.param(ORACLE.replace("index 5e0f1c2..77d3b90 100644\n", ""), ORACLE, 1.0, 1.0, id="no index line"),
        pytest.param("", "", 1.0, 1.0, id="both empty"),
        pytest.param(ORACLE, "", 0.0, 0.0, id="empty oracle"),
        pytest.param("I could not fix it.", ORACLE, 0.0, 0.0, id="not a diff"),
    ],
)
def test_unified_diff_similarity(generated, oracle, low, high):
    assert low <= rewards.unified_diff_similarity(generated, oracle) <= high


def test_different_edit_scores_clearly_below_near_miss():
    near_miss = rewards.unified_diff_similarity(CORE_NEAR_MISS, CORE_FIX)
    different = rewards.unified_diff_similarity(CORE_DIFFERENT, CORE_FIX)
    assert near_miss > 0.9
    assert different < near_miss - 0.3


def test_split_diff_by_file():
    assert list(rewards.split_diff_by_file("Fixes the parser.\n\n" + ORACLE)) == [
        "src/pkg/utils.py",
        "src/pkg/core.py",
    ]
    assert rewards.split_diff_by_file(ORACLE) == {"src/pkg/utils.py": UTILS_FIX, "src/pkg/core.py": CORE_FIX}
    assert list(rewards.split_diff_by_file(UTILS_FIX_U1)) == ["src/pkg/utils.py"]  # plain unified diff
    assert rewards.split_diff_by_file("") == rewards.split_diff_by_file("no diff here") == {}
    # A removed line `-- x` reads `--- x` inside a hunk: it does not start a file.
    sql = "--- a/q.sql\n+++ b/q.sql\n@@ -1,2 +1,2 @@\n--- old\n+++ new\n select 1;\n"
    assert list(rewards.split_diff_by_file(sql)) == ["q.sql"]
    new_and_renamed = (
        'diff --git "a/tab\\there.py" "b/tab\\there.py"\nnew file mode 100644\n--- /dev/null\n+++ "b/tab\\there.py"\n'
        "@@ -0,0 +1 @@\n+x = 1\n"
        "diff --git a/old name.py b/new name.py\nsimilarity index 100%\nrename from old name.py\nrename to new name.py\n"
    )
    assert list(rewards.split_diff_by_file(new_and_renamed)) == ["tab\\there.py", "new name.py"]


@pytest.mark.parametrize(
    ("generated", "oracle", "expected"),
    [
        pytest.param(ORACLE, ORACLE, True, id="same diff"),
        pytest.param(UTILS_FIX_U1, UTILS_FIX, True, id="other context size and line numbers"),
        pytest.param(CORE_FIX + UTILS_GIT_U1, ORACLE, True, id="other file order and context"),
        pytest.param(UTILS_OTHER_LINE, UTILS_FIX, False, id="different added line"),
        pytest.param(UTILS_FIX + CORE_FIX, UTILS_FIX, False, id="extra file"),
        pytest.param(UTILS_FIX, ORACLE, False, id="missing file"),
        pytest.param("", UTILS_FIX, False, id="empty generated"),
    ],
)
def test_exact_patch_match(generated, oracle, expected):
    assert rewards.exact_patch_match(generated, oracle) is expected


REWARDS = [rewards.diff_similarity_reward, rewards.exact_patch_reward, rewards.non_empty_patch_reward]


@pytest.mark.parametrize("reward", REWARDS, ids=lambda f: f.__name__)
def test_rewards_score_failed_episodes_zero(reward):
    assert reward(completions=["a", "b"], generated_diff=[None, ORACLE], patch=[ORACLE] * 2) == [0.0, 1.0]


@pytest.mark.parametrize("reward", REWARDS, ids=lambda f: f.__name__)
def test_rewards_reject_length_mismatch(reward):
    with pytest.raises(ValueError, match="3 completions but 2 `generated_diff` values"):
        reward(completions=["a", "b", "c"], generated_diff=[ORACLE, ORACLE], patch=[ORACLE] * 3)
    if reward is not rewards.non_empty_patch_reward:
        with pytest.raises(ValueError, match="2 completions but 1 `patch` values"):
            reward(completions=["a", "b"], generated_diff=[ORACLE, ORACLE], patch=[ORACLE])


def test_rewards_take_grpo_trainer_kwargs():
    """The call GRPOTrainer makes: prompts, completions, completion_ids, every dataset column and agent key, extras."""
    kwargs = {
        "prompts": [[{"role": "user", "content": "Fix the parser."}]] * 3,
        "completions": [[{"role": "assistant", "content": "Done."}]] * 3,
        "completion_ids": [[1, 2, 3]] * 3,
        "patch": [ORACLE] * 3,
        "instance_id": ["pkg__pkg-1"] * 3,
        "problem_statement": ["parse_version fails on '1.2rc1'"] * 3,
        "generated_diff": [ORACLE, UTILS_FIX, None],
        "failure": [None, None, "timeout"],
        "trainer_state": object(),
        "log_extra": lambda *args: None,
        "log_metric": lambda *args: None,
    }
    assert rewards.diff_similarity_reward(**kwargs)[::2] == [1.0, 0.0]
    assert 0.45 <= rewards.diff_similarity_reward(**kwargs)[1] <= 0.55
    assert rewards.exact_patch_reward(**kwargs) == [1.0, 0.0, 0.0]
    assert rewards.non_empty_patch_reward(**kwargs) == [1.0, 1.0, 0.0]


def test_non_empty_patch_reward_needs_a_changed_line():
    rename = "diff --git a/a.py b/b.py\nsimilarity index 100%\nrename from a.py\nrename to b.py\n"
    diffs = [UTILS_FIX_U1, rename, "", "diff --git a/x b/x\nold mode 100644\nnew mode 100755\n"]
    assert rewards.non_empty_patch_reward(completions=[""] * 4, generated_diff=diffs) == [1.0, 0.0, 0.0, 0.0]


def test_doctests():
    result = doctest.testmod(rewards)
    assert result.failed == 0
    assert result.attempted >= 5


def test_real_git_diff(tmp_path):
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}  # no user diff settings

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, env=env, check=True, capture_output=True, text=True).stdout

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("".join(f"x{i} = {i}\n" for i in range(30)))
    (tmp_path / "read me.md").write_text("# Title\n\nSome text.\n")
    (tmp_path / "old.py").write_text("print('bye')\n")
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base")
    (tmp_path / "pkg" / "mod.py").write_text("".join(f"x{i} = {i * (i != 7)}\n" for i in range(30)) + "y = 1\n")
    (tmp_path / "read me.md").write_text("# Title\n\nSome better text.\n")
    (tmp_path / "old.py").unlink()
    diff = git("diff", "--no-color", "--no-ext-diff")

    assert sorted(rewards.split_diff_by_file(diff)) == ["old.py", "pkg/mod.py", "read me.md"]
    assert rewards.unified_diff_similarity(diff, diff) == 1.0
    assert rewards.exact_patch_match(diff, diff)
    no_context = git("diff", "--no-color", "--no-ext-diff", "--unified=0")
    assert rewards.exact_patch_match(no_context, diff)
    assert 0.5 < rewards.unified_diff_similarity(no_context, diff) < 1.0
