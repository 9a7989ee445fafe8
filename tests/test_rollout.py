"""`AgentRollout` with upstream `GRPOTrainer` against `trl vllm-serve-async` (2 CPU replicas, tiny model): a scripted
multi-turn tool-using agent trains for real, masks are exact on the loss tensors, engine and trainer logprobs agree,
failing agents are isolated and counted, forks follow the documented policy, and two processes each run their slice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from tests.helpers import FORCE, TOOLS, trainer_logprobs
from trl import GRPOConfig, GRPOTrainer
from trl.agents import AgentRollout, ReplayRollout, ServerClient, WeightSyncCallback
from trl.agents.masking import MaskedTokens
from trl.agents.server.sessions import SessionStore
from trl.agents.testing.servers import API_TOKEN


HERE = Path(__file__).parent


def chat(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="-", timeout=60, max_retries=0)


def tool_agent(example: dict, base_url: str) -> dict:
    """Two forced tool calls answered by a real shell command, then a free answer: a multi-turn episode."""
    client = chat(base_url)
    messages = list(example["prompt"])
    calls = 0
    for _ in range(2):
        reply = client.chat.completions.create(
            model=example["model"], messages=messages, tools=TOOLS, max_tokens=200, extra_body=FORCE
        )
        message = reply.choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls or []:
            command = json.loads(call.function.arguments)["command"]
            output = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=10, cwd=HERE).stdout
            messages.append({"role": "tool", "tool_call_id": call.id, "content": output[:200]})
            calls += 1
    final = client.chat.completions.create(model=example["model"], messages=messages, max_tokens=12, temperature=1.0)
    return {"answer": final.choices[0].message.content or "", "calls": calls}


def answer_length(completions, answer, failure, **kwargs) -> list[float]:
    """Uses the agent's returned keys (extras) and the decoded completion, which varies with the sampled tokens."""
    assert all(isinstance(a, str) for a in answer)
    return [0.0 if f else float(len(str(c))) for c, f in zip(completions, failure, strict=True)]


def dataset(model_dir: str, n: int, **columns) -> Dataset:
    rows = {
        "prompt": [[{"role": "user", "content": f"Task {i}: what is in this folder?"}] for i in range(n)],
        "model": [model_dir] * n,
        "task_id": list(range(n)),
    }
    return Dataset.from_dict({**rows, **columns})


def grpo_args(tmp_path, **overrides) -> GRPOConfig:
    values = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=512,
        learning_rate=5e-3,
        beta=0.0,
        max_steps=3,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=0,
    )
    return GRPOConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def client(gateway):
    with ServerClient(gateway.url, api_token=API_TOKEN, timeout=120) as client:
        yield client


def fresh_model(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def test_rows_match_the_trajectory_and_the_engine_logprobs(gateway, client, tiny_model_dir, tokenizer, tmp_path):
    """Before any update the trainer's recomputed logprobs of sampled tokens agree with the engine's."""
    model = fresh_model(tiny_model_dir)
    client.update_weights(model)  # earlier tests in this session may have left other weights on the server
    data = dataset(tiny_model_dir, 4)
    rollout = AgentRollout(tool_agent, client, dataset=data, max_concurrency=4)
    trainer = GRPOTrainer(
        model=model, reward_funcs=answer_length, args=grpo_args(tmp_path), train_dataset=data, rollout_func=rollout
    )
    prompts = [row["prompt"] for row in data]
    output = rollout(prompts, trainer)

    assert [e.example["task_id"] for e in rollout.last_episodes] == [0, 1, 2, 3]  # whole rows reach the agent
    assert output["failure"] == [None] * 4 and output["calls"] == [2] * 4
    diffs = []
    for i, (prompt_ids, completion_ids, env_mask, logprobs) in enumerate(
        zip(output["prompt_ids"], output["completion_ids"], output["env_mask"], output["logprobs"], strict=True)
    ):
        assert len(completion_ids) == len(env_mask) == len(logprobs)
        assert env_mask[0] == 1 and 0 in env_mask  # starts with a sampled turn; tool results in between are 0
        inserted = tokenizer.decode([t for t, m in zip(completion_ids, env_mask, strict=True) if not m])
        sampled_text = tokenizer.decode([t for t, m in zip(completion_ids, env_mask, strict=True) if m])
        assert "<tool_response>" in inserted and "<|im_start|>assistant" in inserted  # tool results, template
        assert "<tool_response>" not in sampled_text and "<|im_start|>" not in sampled_text
        assert sampled_text.count("<tool_call>") == 2
        # Compare on the free last turn: the forced turns' engine logprobs are those of the grammar-constrained
        # distribution (vLLM applies the structured-output mask before computing logprobs), not the model's.
        turn = rollout.last_episodes[i].trajectory.segments[-1].turns[-1]
        start = turn.prompt_tokens - len(prompt_ids)
        free = slice(start, start + turn.completion_tokens)
        assert all(env_mask[free])
        mine, _ = trainer_logprobs(model, prompt_ids + completion_ids, len(prompt_ids))
        diffs.append((mine[free] - torch.tensor(logprobs[free])).abs())
    diffs = torch.cat(diffs)
    print(
        f"engine vs trainer logprobs (float32, {diffs.numel()} tokens): mean {diffs.mean():.2e} max {diffs.max():.2e}"
    )
    assert diffs.max() < 2e-3
    assert rollout.totals["episodes"] == 4 and rollout.totals["tool_calls/shell"] == 8
    rollout.close()


def test_grpo_trains_three_steps_with_a_tool_agent_and_syncs_each_step(gateway, client, tiny_model_dir, tmp_path):
    model = fresh_model(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    version = client.update_weights(model)
    data = dataset(tiny_model_dir, 8)
    rollout = AgentRollout(tool_agent, client, dataset=data, max_concurrency=4)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=answer_length,
        args=grpo_args(tmp_path),
        train_dataset=data,
        rollout_func=rollout,
        callbacks=[WeightSyncCallback(client)],
    )
    trainer.train()
    rollout.close()

    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "no parameter changed in 3 GRPO steps"
    assert client.weight_version == version + 3
    steps = [entry for entry in trainer.state.log_history if "agent/episodes" in entry]
    assert len(steps) == 3 and all(entry["agent/episodes"] == 4 for entry in steps)
    assert all(entry["agent/tool_calls/shell"] == 8 and entry["agent/tokens_sampled"] > 0 for entry in steps)
    assert all(entry["agent/turns_per_episode"] == 3 for entry in steps)
    assert rollout.totals["episodes"] == 12 and not any(
        k.startswith("failures/") and v for k, v in rollout.totals.items()
    )


def test_loss_and_gradients_come_only_from_sampled_tokens(gateway, client, tiny_model_dir, tmp_path):
    """On the trainer's own loss tensors: d(loss)/d(token logprob) is exactly zero wherever env_mask is 0."""
    model = fresh_model(tiny_model_dir)
    client.update_weights(model)
    data = dataset(tiny_model_dir, 1)

    def spread(completions, **kwargs):  # distinct rewards: every row gets a non-zero advantage
        return [float(i) for i in range(len(completions))]

    rollout = AgentRollout(tool_agent, client, dataset=data)
    trainer = GRPOTrainer(
        model=model, reward_funcs=spread, args=grpo_args(tmp_path), train_dataset=data, rollout_func=rollout
    )
    batch = [dict(row) for row in data for _ in range(4)]
    inputs = trainer._generate_and_score_completions(batch)  # upstream's own batch building, unchanged
    rollout.close()
    captured = {}

    def keep_grad(module, args, kwargs, output):  # the trainer asks for fused per-token log-probs, not logits
        output.log_probs.retain_grad()
        captured["log_probs"] = output.log_probs

    handle = model.register_forward_hook(keep_grad, with_kwargs=True)
    loss = trainer.compute_loss(model, inputs)
    handle.remove()
    loss.backward()

    width = inputs["completion_ids"].shape[1]
    per_position = captured["log_probs"].grad[:, -width:]  # d(loss)/d(logprob of completion token t)
    env = inputs["tool_mask"] == 0
    real = inputs["completion_mask"] == 1
    assert env[real].any() and (~env)[real].any()
    assert per_position[env & real].abs().max().item() == 0.0, "an environment token contributed to the loss"
    assert (per_position[~env & real] != 0).all(), "every sampled token should carry gradient"


def failing_agent(example: dict, base_url: str):
    mode = example["mode"]
    if mode == "raise":
        raise RuntimeError("the agent crashed")
    if mode == "hang":
        time.sleep(20)  # past the rollout timeout: the thread is abandoned, the episode counted
        return {"answer": "late"}
    if mode == "silent":
        return {"answer": ""}  # never called the model
    client = chat(base_url)
    overlong = mode == "overlong"
    reply = client.chat.completions.create(
        model=example["model"],
        messages=example["prompt"],
        max_tokens=300 if overlong else 8,
        extra_body={"ignore_eos": overlong},
    )
    return {"answer": reply.choices[0].message.content or ""}


def test_failing_episodes_never_stop_training_and_are_counted(gateway, client, tiny_model_dir, tmp_path):
    modes = ["ok"] * 12 + ["raise", "hang", "silent", "overlong"]
    data = dataset(tiny_model_dir, 16, mode=modes)
    model = fresh_model(tiny_model_dir)
    client.update_weights(model)
    # timeout: "hang" episodes must hit it; "ok" ones take well under a second, but a loaded 2-core CI machine
    # once stretched one past 4 s (counted as a timeout), so the margin is wide
    rollout = AgentRollout(failing_agent, client, dataset=data, max_concurrency=8, timeout=10)
    args = grpo_args(tmp_path, per_device_train_batch_size=8, num_generations=2, max_steps=4, max_completion_length=64)
    seen = []

    def reward(completions, failure, mode, **kwargs):
        seen.extend(zip(mode, failure, strict=True))
        return [0.0 if f else 1.0 for f in failure]

    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data, rollout_func=rollout)
    trainer.train()
    rollout.close()

    totals = rollout.totals
    assert totals["episodes"] == 32
    assert totals["failures/agent_error"] == 2 and totals["failures/timeout"] == 2
    assert totals["failures/no_tokens"] == 2 and totals["clipped"] == 2
    assert sum(v for k, v in totals.items() if k.startswith("failures/")) == 6
    expected = {"ok": None, "raise": "agent_error", "hang": "timeout", "silent": "no_tokens", "overlong": None}
    assert sorted(seen) == sorted((m, expected[m]) for m in modes for _ in range(2))


def test_forked_episode_trains_on_its_last_segment(gateway, client, tiny_model_dir, tmp_path):
    async def forking_agent(example: dict, base_url: str) -> dict:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="-", timeout=60, max_retries=0)
        messages = list(example["prompt"])
        first = await client.chat.completions.create(model=example["model"], messages=messages, max_tokens=6)
        messages += [{"role": "assistant", "content": first.choices[0].message.content}]
        messages += [{"role": "user", "content": "Go on."}]
        await client.chat.completions.create(model=example["model"], messages=messages, max_tokens=6)
        # compaction: the agent rewrites its history, so the gateway starts a new segment
        summary = [{"role": "user", "content": "Summary of the work so far: listed files. Finish."}]
        last = await client.chat.completions.create(model=example["model"], messages=summary, max_tokens=6)
        return {"answer": last.choices[0].message.content}

    data = dataset(tiny_model_dir, 2)
    # no dataset: the agent's rows (it reads "model") come from the trainer's train_dataset
    rollout = AgentRollout(forking_agent, client)
    trainer = GRPOTrainer(
        model=fresh_model(tiny_model_dir),
        reward_funcs=answer_length,
        args=grpo_args(tmp_path),
        train_dataset=data,
        rollout_func=rollout,
    )
    output = rollout([row["prompt"] for row in data], trainer)
    rollout.close()
    trajectories = [episode.trajectory for episode in rollout.last_episodes]
    for i, trajectory in enumerate(trajectories):
        assert len(trajectory.segments) == 2 and trajectory.forks == 1, trajectory.session_id
        last = trajectory.segments[-1].tokens
        start = last.prompt_length
        assert output["prompt_ids"][i] == last.token_ids[:start]
        assert output["completion_ids"][i] == last.token_ids[start:]
        assert output["env_mask"][i] == last.mask[start:]
    assert rollout.totals["forks"] == 2
    assert rollout.totals["tokens_dropped_by_forks"] == sum(t.segments[0].tokens.num_sampled for t in trajectories)


def test_two_processes_each_run_their_own_slice(gateway, client, tiny_model_dir, tmp_path):
    out = tmp_path / "ranks"
    out.mkdir()
    env = {**os.environ, "TRL_AGENTS_TEST_OUT": str(out), "OMP_NUM_THREADS": "1"}
    # `accelerate launch --cpu --num_processes 2` starts ONE process (accelerate 1.x's simple launcher); two CPU
    # processes need the torchrun launcher (`--multi_gpu`) and `use_cpu=True` in the training arguments.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--multi_gpu",
               str(HERE / "scripts" / "grpo_two_processes.py"), gateway.url, API_TOKEN, tiny_model_dir, str(tmp_path)]  # fmt: skip
    version = client.weight_version
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    sessions = [set(r["sessions"]) for r in ranks]
    assert all(sessions) and not sessions[0] & sessions[1]
    assert all(s.split("-r")[-1].startswith(str(r)) for r, ss in enumerate(sessions) for s in ss)
    assert ranks[0]["totals"]["episodes"] == ranks[1]["totals"]["episodes"] == 2 * 4 * 2  # 2 steps x 4 x 2 ranks
    assert ranks[0]["tasks"] != ranks[1]["tasks"]  # each process ran its own slice of the batch
    assert client.weight_version == version + 2  # rank 0 sent after each of the 2 steps


def test_agent_protocol_errors_are_clear(client):
    with pytest.raises(ValueError, match="max_concurrency"):
        AgentRollout(tool_agent, client, max_concurrency=0)
    duplicate = Dataset.from_dict({"prompt": ["same", "same"], "task_id": [1, 2]})
    with pytest.raises(ValueError, match="same prompt"):
        AgentRollout(tool_agent, client, dataset=duplicate)
    rollout = AgentRollout(tool_agent, client, dataset=Dataset.from_dict({"prompt": ["a"]}))
    with pytest.raises(KeyError, match="not found"):
        rollout.example_for("b")
    rollout.close()


# -- replay: recorded episodes back into the trainer without a server ---------------------------------------------


def test_replay_rebuilds_the_live_batch_and_trains_without_a_server(gateway, client, tiny_model_dir, tmp_path):
    model = fresh_model(tiny_model_dir)
    client.update_weights(model)
    data = dataset(tiny_model_dir, 2)
    record = tmp_path / "episodes.jsonl"
    rollout = AgentRollout(tool_agent, client, dataset=data, max_concurrency=4, record_to=record)
    trainer = GRPOTrainer(
        model=model, reward_funcs=answer_length, args=grpo_args(tmp_path), train_dataset=data, rollout_func=rollout
    )
    prompts = [row["prompt"] for row in data for _ in range(2)]
    live = rollout(prompts, trainer)
    rollout.close()
    assert len(record.read_text().splitlines()) == 4

    replay = ReplayRollout(record)
    replayed = replay(prompts, trainer)
    assert replayed == live  # token ids, masks, logprobs, the agent's returned keys, failures
    assert [e.session_id for e in replay.last_episodes] == [e.session_id for e in rollout.last_episodes]
    assert replay.totals["tool_calls/shell"] == rollout.totals["tool_calls/shell"] == 8

    version = client.weight_version
    model = fresh_model(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    replay = ReplayRollout(record)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=answer_length,
        args=grpo_args(tmp_path, max_steps=2),
        train_dataset=data,
        rollout_func=replay,
    )
    trainer.train()
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert replay.totals["episodes"] == 8  # 2 steps x 4 rows, each an episode recorded above (cycled)
    assert [e["agent/episodes"] for e in trainer.state.log_history if "agent/episodes" in e] == [4, 4]
    assert client.weight_version == version  # nothing talked to the server


def segment(prompt: list[int], turns: list[tuple[list[int], list[int]]]) -> dict:
    """A recorded segment: prompt tokens, then (sampled, inserted) token runs."""
    tokens = MaskedTokens()
    tokens.add_context(prompt)
    for sampled, inserted in turns:
        tokens.add_sampled(sampled, [-0.5] * len(sampled))
        tokens.add_context(inserted)
    return {"token_ids": tokens.token_ids, "mask": tokens.mask, "logprobs": tokens.logprobs, "turns": []}


def test_replay_reads_gateway_journals_and_bare_trajectories(tmp_path):
    store = SessionStore(tmp_path / "journal")
    for i in range(2):
        session = store.create(f"s{i}", "replica-0")
        seg = session.start_segment()
        seg.tokens.add_context([1, 2, 3])
        seg.tokens.add_sampled([10 + i, 11], [-0.1, -0.2])
        store.save(session)
    replay = ReplayRollout(tmp_path / "journal", match="order")
    output = replay(["a", "b", "c"], None)
    assert output["completion_ids"] == [[10, 11], [11, 11], [10, 11]]  # file order, cycling
    assert output["env_mask"] == [[1, 1]] * 3 and output["logprobs"][0] == [-0.1, -0.2]

    bare = tmp_path / "bare.jsonl"
    bare.write_text(json.dumps({"session_id": "x", "segments": [segment([5], [([6, 7], [8]), ([9], [])])]}) + "\n")
    output = ReplayRollout(bare, match="order")(["p"], None)
    assert output["prompt_ids"] == [[5]] and output["completion_ids"] == [[6, 7, 8, 9]]
    assert output["env_mask"] == [[1, 1, 0, 1]]
    with pytest.raises(ValueError, match="no prompt"):
        ReplayRollout(bare)

    records = [{"prompt": "p", "result": {"diff": "d"}, "failure": "timeout", "trajectory": {"segments": [
        segment([5], [([6], [])])]}}]  # fmt: skip
    replay = ReplayRollout(records)
    output = replay(["p"], None)
    assert output["env_mask"] == [[0]] and output["failure"] == ["timeout"] and output["diff"] == ["d"]
    assert replay.totals["failures/timeout"] == 1
    with pytest.raises(KeyError, match="no recorded episode"):
        replay(["q"], None)

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"segments": []}\nnot json\n')
    with pytest.raises(ValueError, match="line 2"):
        ReplayRollout(broken, match="order")
    with pytest.raises(FileNotFoundError, match="no recorded episodes"):
        ReplayRollout(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="match must be"):
        ReplayRollout(records, match="random")


def test_replay_in_two_processes_hands_each_episode_to_one_rank(tiny_model_dir, tmp_path):
    records = []
    for p in range(2):
        for g in range(4):  # 4 distinct recorded episodes per prompt, rewards 0..3
            records.append({"prompt": f"task {p}", "session_id": f"t{p}-e{g}", "result": {"answer": g},
                            "trajectory": {"segments": [segment([5, 6 + p], [([20 + g, 21], [7]), ([22], [])])]}})  # fmt: skip
    episodes = tmp_path / "episodes.jsonl"
    episodes.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "ranks"
    out.mkdir()
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--multi_gpu",
               str(HERE / "scripts" / "grpo_replay_two_processes.py"), str(episodes), tiny_model_dir, str(out)]  # fmt: skip
    result = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["changed"] > 0 for r in ranks)
    for step in range(2):  # one prompt's 4 generations per step, 2 on each rank: 4 distinct recorded episodes
        handed = ranks[0]["handed"][step] + ranks[1]["handed"][step]
        assert len(handed) == 4 and len(set(handed)) == 4, handed
        assert len({h.split("-")[0] for h in handed}) == 1
