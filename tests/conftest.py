"""Shared fixtures: the tiny model (built once per run) and real vLLM servers on it, torn down whatever happens.

Engine start-ups are most of the suite's time on 2 cores (a 2-replica gateway is eight vLLM processes, 60-70 s), so
the gateway is started once per run and shared by every module that uses the `gateway` fixture: tests there give
their sessions ids of their own, each module starts with the tiny model's own weights served (the fixture syncs them
back when a module before trained them), and a test that breaks the shared gateway (kills a replica) is marked
`breaks_gateway` and runs after every other test.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from tests.helpers import plain_text_bias
from trl.agents import ServerClient
from trl.agents.testing.servers import API_TOKEN, serve_async
from trl.agents.tiny_model import build


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    return str(build(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="session")
def plain_bias(tokenizer) -> dict[str, int]:
    """`tests.helpers.plain_text_bias` of the tiny model: a `logit_bias` that keeps it to plain ASCII text."""
    return plain_text_bias(tokenizer)


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm must not try to download its price list


@pytest.fixture
def auth() -> dict[str, str]:
    """Headers that pass the gateway fixture's control-endpoint check."""
    return {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture(scope="session")
def shared_gateway(tiny_model_dir, tmp_path_factory):
    """The one `trl vllm-serve-async` of the run (2 CPU replicas, 60-70 s to start on 2 cores); use `gateway`."""
    server = serve_async(
        tiny_model_dir,
        tmp_path_factory.mktemp("gateway-logs"),
        "--reasoning-parser", "qwen3",  # reasoning split from content, as with real Qwen3 models
        # the tests force reasoning + tool calls with a regex: apply it inside <think> too
        "--structured-outputs-config", '{"enable_in_reasoning": true}',
        # test_weight_sync: adapter-only syncs, and a sync to a stopped replica that fails within seconds
        "--enable-lora", "--max-lora-rank", "8", "--max-loras", "1", "--weight-sync-timeout", "20",
    )  # fmt: skip
    with server, ServerClient(server.url, api_token=API_TOKEN, timeout=120) as client:
        server.tiny_weights_version = client.weight_version
        yield server


@pytest.fixture(scope="module")
def gateway(shared_gateway, tiny_model_dir):
    """The shared gateway as a module finds it when it is its own: no live session (sessions go to the replica with
    fewer live ones) and the tiny model's own weights served (a module before may have trained them, and tests such as
    "4 tokens sampled without an end-of-text" assume the random weights)."""
    with ServerClient(shared_gateway.url, api_token=API_TOKEN, timeout=120) as client:
        for session in client.sessions():  # no live sessions: new ones spread evenly over the replicas again
            client.close_session(session["session_id"])
        if client.weight_version != shared_gateway.tiny_weights_version:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
            shared_gateway.tiny_weights_version = client.update_weights(model)
    return shared_gateway


def pytest_configure(config):
    """Under pytest-xdist the run's own scheduling group takes the priority of the replicas it starts (`nice +19`,
    `server.process`): with Linux's autogroup scheduling a group at +0 gets ~98% of a core against one at +19, so a
    worker busy with CPU work would otherwise starve the replicas the other worker is waiting on. Where there is no
    autogroup to set, the run's processes take that niceness themselves."""
    if not config.getoption("numprocesses", None):
        return
    autogroup = Path("/proc/self/autogroup")
    if autogroup.exists():
        try:
            autogroup.write_text("19")
            return
        except OSError as error:
            # EINVAL: this run is in the root scheduling group (its session began outside any login, as under a CI
            # daemon); that group's share cannot be set, and there each process competes by its own niceness
            if error.errno != errno.EINVAL:
                raise
    os.nice(19 - os.nice(0))


# The modules that use the shared gateway. They run first, and under `make test`'s two workers one worker runs them
# all, against one gateway (theirs is the longest chain of the run); collection refuses a module missing here.
SHARED_GATEWAY_MODULES = {
    "test_apis.py",
    "test_async_rollout.py",
    "test_code_repair_agent.py",
    "test_code_repair_training.py",
    "test_gateway.py",
    "test_rollout.py",
    "test_vllm_smoke.py",
    "test_weight_sync.py",
}


# The longest of the other modules (each starts servers of its own or trains): they come next, longest first, so that
# under two workers no long module is left for the end while the other worker idles.
LONG_MODULES = (
    "test_remote_replicas.py",
    "test_benchmarks.py",
    "test_tiny_coder.py",
    "test_journal.py",
    "test_stream_derender.py",
    "test_nccl_layout.py",
    "test_toy_suite.py",
    "test_collator.py",
)


def _run_order(item) -> tuple:
    name = item.path.name
    rank = LONG_MODULES.index(name) if name in LONG_MODULES else len(LONG_MODULES)
    return name not in SHARED_GATEWAY_MODULES, bool(item.get_closest_marker("breaks_gateway")), rank


def pytest_collection_modifyitems(config, items):
    """The shared gateway's modules first, in file order, tests marked `breaks_gateway` after all of them; then the
    `LONG_MODULES`; then the rest in file order."""
    missing = {item.path.name for item in items if "shared_gateway" in item.fixturenames} - SHARED_GATEWAY_MODULES
    if missing:
        raise pytest.UsageError(f"{sorted(missing)} use the shared gateway: add them to SHARED_GATEWAY_MODULES")
    stale = sorted(
        name for name in {*SHARED_GATEWAY_MODULES, *LONG_MODULES} if not (Path(__file__).parent / name).exists()
    )
    if stale:
        raise pytest.UsageError(f"SHARED_GATEWAY_MODULES or LONG_MODULES name modules that do not exist: {stale}")
    items.sort(key=_run_order)  # stable: file order within each rank


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: `make test` runs two workers (`-n 2`)
def pytest_xdist_make_scheduler(config, log):
    """Give workers whole modules (a module's own servers start once), and the shared gateway's modules as one unit,
    in the order `pytest_collection_modifyitems` made (xdist's default reorders them by test count, which ran the
    journal's two gateway starts last, while the other worker idled)."""
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "shared-gateway" if Path(path).name in SHARED_GATEWAY_MODULES else path

    return ModuleScheduling(config, log)
