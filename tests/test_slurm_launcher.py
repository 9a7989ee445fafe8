"""The SLURM launchers. `train.sbatch` splits a node's GPUs between `trl vllm-serve-async` and training, waits for
the server's health and stops it afterwards; `two_node.sbatch` trains on node 0 and serves on the others, with NCCL
weight transfer between nodes. Runs the real scripts with stand-ins for what a CPU machine lacks (`nvidia-smi`, the
server, `accelerate`, `curl`; for two_node also `srun`, `scontrol`, `getent`, `vllm`): each records how it was called
(and, under the `srun` stand-in, on which node)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "code_repair" / "slurm" / "train.sbatch"


def stand_in(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(0o755)


def run(tmp_path, gpus: int, server_gpus: int):
    bins, calls = tmp_path / "bin", tmp_path / "calls"
    bins.mkdir(parents=True)
    calls.mkdir()
    stand_in(bins, "nvidia-smi", f"seq 0 {gpus - 1}")
    stand_in(
        bins,
        "trl",
        f"echo \"CUDA=$CUDA_VISIBLE_DEVICES $*\" > {calls}/server; sleep 60 & trap 'echo stopped >> {calls}/server; kill $!; exit 0' TERM; wait",
    )
    stand_in(bins, "curl", "exit 0")
    stand_in(bins, "accelerate", f'echo "CUDA=$CUDA_VISIBLE_DEVICES TOKEN=$TRL_AGENTS_API_TOKEN $*" > {calls}/train')
    env = {**os.environ, "PATH": f"{bins}:{os.environ['PATH']}", "SERVER_GPUS": str(server_gpus), "SLURM_JOB_ID": "42"}
    result = subprocess.run(["bash", str(SCRIPT), "Qwen/Qwen3-8B", "--use_peft"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    return result, calls


def test_gpus_are_split_between_serving_and_training(tmp_path):
    result, calls = run(tmp_path, gpus=4, server_gpus=1)
    assert result.returncode == 0, result.stderr
    server = (calls / "server").read_text()
    train = (calls / "train").read_text()
    assert server.startswith("CUDA=0 vllm-serve-async --model Qwen/Qwen3-8B --data-parallel-size 1 --port 20042")
    assert server.rstrip().endswith("stopped")  # the server is stopped when training ends
    assert train.startswith("CUDA=1,2,3 TOKEN=") and "--num_processes 3" in train
    assert (
        "grpo.py --model_name_or_path Qwen/Qwen3-8B --server_url http://127.0.0.1:20042" in train
        and train.rstrip().endswith("--use_peft")
    )
    token = train.split("TOKEN=")[1].split()[0]
    assert f"--api-token {token}" in server and len(token) == 32


def test_two_serving_gpus_and_a_refused_split(tmp_path):
    result, calls = run(tmp_path, gpus=4, server_gpus=2)
    assert result.returncode == 0 and "CUDA=0,1 " in (calls / "server").read_text()
    assert "CUDA=2,3 " in (calls / "train").read_text()
    bad, _ = run(tmp_path / "x", gpus=1, server_gpus=1)
    assert bad.returncode == 2 and "need at least one GPU to serve and one to train" in bad.stderr


# -- two_node.sbatch: node 0 trains, node 1 serves behind the gateway, nodes 2.. add plain vLLM servers ---------------

TWO_NODE = SCRIPT.parent / "two_node.sbatch"
EXAMPLE = SCRIPT.parents[1]
GPUS = {"gpu-a01": 4, "gpu-a02": 2, "gpu-a03": 3}  # the nodes of the fake allocation, in SLURM's order
ADDRESS = {host: f"10.1.0.{i + 1}" for i, host in enumerate(GPUS)}
# What every stand-in records: the host it runs on (set by the srun stand-in) and the environment that matters.
RECORD = """record() {
  local file=$1; shift
  { echo "host=${FAKE_HOST:-batch} cuda=${CUDA_VISIBLE_DEVICES-unset} token=${TRL_AGENTS_API_TOKEN-unset}" \\
      "ifname=${NCCL_SOCKET_IFNAME-unset} gloo=${GLOO_SOCKET_IFNAME-unset} ib=${NCCL_IB_DISABLE-unset}" \\
      "dev=${VLLM_SERVER_DEV_MODE-unset}"
    printf '%s\\n' "$@"; } > "$file"
}
up() {  # whether the server at URL $1 has started: FAKE_UP pairs each URL with the record its stand-in writes
  local pair
  for pair in $FAKE_UP; do [[ $1 == "${pair%%=*}" && -e "$CALLS/${pair#*=}" ]] && return 0; done
  return 1
}
serve() {  # a server: records how it was called (what the fake /health waits for), runs until TERM, says so
  trap "echo stopped >> $1; kill \\$(jobs -p); exit 0" TERM
  record "$@"
  sleep 60 >/dev/null 2>&1 &
  wait
}"""


def two_node_stand_ins(bins: Path, calls: Path) -> None:
    (bins / "record.sh").write_text(RECORD)
    lib = f"source {bins}/record.sh"
    gpus = " ".join(f"{host}) seq 0 {n - 1};;" for host, n in GPUS.items())
    addresses = " ".join(f'{host}) echo "{a} STREAM {host}"; echo "{a} DGRAM";;' for host, a in ADDRESS.items())
    # what `trl vllm-serve-async --model M [flags] --print-replica-command` prints: notes, then the command
    replica_command = """# Run on each node that serves a replica, then add it here with --replica http://NODE:8001.
VLLM_SERVER_DEV_MODE=1 vllm serve $3 --host 0.0.0.0 --port 8001 ${*:4:$#-4} --enable-scale-out \
--weight-transfer-config '{"backend": "nccl"}'"""
    scripts = {
        # the options this script may use, then the command on host -w (FAKE_HOST tells the others where they are)
        "srun": f"""echo "$*" >> {calls}/srun
host=
while [[ $1 == -* ]]; do
  case $1 in
    -w) host=$2; shift 2;;
    --nodes=1|--ntasks=1|--export=ALL) shift;;
    *) echo "srun: unexpected $1" >&2; exit 9;;
  esac
done
[[ -n $host ]] || {{ echo "srun without -w" >&2; exit 9; }}
FAKE_HOST=$host exec "$@\"""",
        "scontrol": '[[ "$1 $2 $3" == "show hostnames $SLURM_JOB_NODELIST" ]] && printf "%s\\n" $FAKE_HOSTS',
        "nvidia-smi": f'case "${{FAKE_HOST:?nvidia-smi outside srun}}" in {gpus} esac',
        "getent": f"""echo "$FAKE_HOST $*" > {calls}/getent
[[ $1 == ahostsv4 ]] || exit 2
[[ -z ${{GETENT_ADDRESS:-}} ]] || {{ echo "$GETENT_ADDRESS STREAM $2"; exit 0; }}
case $2 in {addresses} *) exit 2;; esac""",
        "trl": f"""{lib}
if [[ ${{@: -1}} == --print-replica-command ]]; then
  record {calls}/print "$@"; cat <<EOF
{replica_command}
EOF
  exit 0
fi
previous=
for arg in "$@"; do  # the real gateway checks each --replica server once, at start
  [[ $previous != --replica ]] || up "$arg" || {{ echo "$arg does not answer /health" >&2; exit 2; }}
  previous=$arg
done
case ${{GATEWAY:-serve}} in
  fail) record {calls}/gateway "$@"; echo "replica-0 exited with code 1 while starting" >&2; exit 1;;
  die-in-training)
    record {calls}/gateway "$@"
    for _ in $(seq 1 100); do [[ -e {calls}/train ]] && break; sleep 0.1; done
    exit 1;;
  *) serve {calls}/gateway "$@";;
esac""",
        "vllm": f"""{lib}
sleep 0.3  # loading the model: the gateway must not start before (it checks --replica servers once)
if [[ ${{VLLM_FAILS:-}} == $FAKE_HOST-$CUDA_VISIBLE_DEVICES ]]; then  # fails once the others serve
  for pair in $FAKE_UP; do
    [[ ${{pair#*=}} == vllm-* && ${{pair#*=}} != vllm-$VLLM_FAILS ]] || continue
    for _ in $(seq 1 100); do [[ -e $CALLS/${{pair#*=}} ]] && break; sleep 0.05; done
  done
  echo "CUDA out of memory" >&2; exit 1
fi
serve {calls}/vllm-$FAKE_HOST-$CUDA_VISIBLE_DEVICES "$@\"""",
        # /health of a server answers once its stand-in has started (give it up to a second, as a connect would)
        "curl": f"""{lib}
url=${{@: -1}}
echo "$url" >> {calls}/curl
[[ -z ${{CURL_FAILS:-}} ]] || exit 7
for _ in $(seq 1 10); do up "${{url%/health}}" && exit 0; sleep 0.1; done
exit 7""",
        "accelerate": f"""{lib}
[[ -z ${{TRAIN_WAITS:-}} ]] || serve {calls}/train "$@"
record {calls}/train "$@"
exit ${{TRAIN_EXIT:-0}}""",
    }
    for name, body in scripts.items():
        stand_in(bins, name, body)


def run_two_node(tmp_path, nodes: int = 2, **env_overrides):
    """Run two_node.sbatch as sbatch would (a copy in a spool folder, started in the submit folder) on the first
    `nodes` hosts of GPUS; returns the result, the folder of records and the submit folder."""
    bins, calls, spool, submit = (tmp_path / d for d in ("bin", "calls", "spool", "submit"))
    for d in (bins, calls, spool, submit / "examples"):
        d.mkdir(parents=True)
    (submit / "examples" / "code_repair").symlink_to(EXAMPLE)
    script = spool / "slurm_script"
    script.write_text(TWO_NODE.read_text())
    two_node_stand_ins(bins, calls)
    hosts = list(GPUS)[:nodes]
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "NCCL_", "GLOO_"))}
    for name in ("CUDA_VISIBLE_DEVICES", "MASTER_ADDR", "PORT", "TRL_AGENTS_API_TOKEN", "RUN_NAME", "SERVE_FLAGS"):
        keep.pop(name, None)
    port = int(env_overrides.get("PORT", 20000 + 4242 % 20000))
    up = [f"http://{host}:{port}=gateway" for host in hosts[1:2]]
    up += [f"http://{host}:{port + 1 + i}=vllm-{host}-{i}" for host in hosts[2:] for i in range(GPUS[host])]
    env = {
        **keep,
        "PATH": f"{bins}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": f"gpu-a[01-0{nodes}]",
        "SLURM_NNODES": str(nodes),
        "SLURM_SUBMIT_DIR": str(submit),
        "SLURMD_NODENAME": hosts[0],
        "FAKE_HOSTS": " ".join(hosts),
        "FAKE_UP": " ".join(up),
        "CALLS": str(calls),
        **env_overrides,
    }
    result = subprocess.run(["bash", str(script), "Qwen/Qwen3-8B", "--use_peft"], cwd=submit, env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    return result, calls, submit


def record(path: Path) -> tuple[dict[str, str], list[str]]:
    """A stand-in's record: its environment and its arguments (plus 'stopped' if it was stopped)."""
    head, *args = path.read_text().splitlines()
    return dict(item.split("=", 1) for item in head.split()), args


def test_two_nodes_train_on_node0_and_serve_on_node1(tmp_path):
    result, calls, submit = run_two_node(tmp_path)
    assert result.returncode == 0, result.stderr
    # every role is one srun step pinned to its node, with this script's environment
    steps = (calls / "srun").read_text().splitlines()
    assert all(s.startswith("--nodes=1 --ntasks=1 --export=ALL -w gpu-a0") for s in steps), steps
    # node 1 serves: a replica per GPU, the gateway on every interface, the run's log folder
    env, args = record(calls / "gateway")
    port, token, run = "24242", env["token"], submit / "runs" / "grpo-4242"
    assert env["host"] == "gpu-a02" and env["cuda"] == "0,1" and len(token) == 32
    assert args[:12] == ["vllm-serve-async", "--model", "Qwen/Qwen3-8B", "--data-parallel-size", "2",
                         "--host", "0.0.0.0", "--port", port, "--api-token", token, "--log-dir"]  # fmt: skip
    assert args[12] == f"{run}/server" and "--replica" not in args
    assert args[13:] == ["--enable-auto-tool-choice", "--tool-call-parser", "hermes", "stopped"]  # stopped at the end
    # node 0 trains under ZeRO-3 on all its GPUs, reaching the gateway on node 1 and opening the NCCL group at its own
    # address as node 1 resolves it
    assert (calls / "getent").read_text().split() == ["gpu-a02", "ahostsv4", "gpu-a01"]
    env, args = record(calls / "train")
    here = submit / "examples" / "code_repair"
    assert env["host"] == "gpu-a01" and env["cuda"] == "0,1,2,3" and env["token"] == token
    assert args == [
        "launch", "--config_file", f"{here}/configs/zero3.yaml", "--num_machines", "1", "--num_processes", "4",
        f"{here}/grpo.py", "--model_name_or_path", "Qwen/Qwen3-8B", "--server_url", f"http://gpu-a02:{port}",
        "--weight_transfer", "nccl", "--master_address", ADDRESS["gpu-a01"], "--master_port", "29600",
        "--output_dir", str(run), "--bf16", "--use_peft",
    ]  # fmt: skip
    assert set((calls / "curl").read_text().split()) == {f"http://gpu-a02:{port}/health"}
    assert not (calls / "print").exists() and not list(calls.glob("vllm-*"))  # no node beyond node 1
    assert env["ifname"] == env["gloo"] == "unset"  # NCCL picks the interface unless told


def test_k_inference_nodes_and_the_cluster_settings(tmp_path):
    settings = {"NCCL_SOCKET_IFNAME": "ib0", "GLOO_SOCKET_IFNAME": "ib0", "NCCL_IB_DISABLE": "1",
                "MASTER_ADDR": "192.168.7.1", "NCCL_PORT": "31000", "PORT": "18000", "TRL_AGENTS_API_TOKEN": "s3cret",
                "RUN_NAME": "exp", "SERVE_FLAGS": "--max-model-len 16384"}  # fmt: skip
    result, calls, submit = run_two_node(tmp_path, nodes=3, **settings)
    assert result.returncode == 0, result.stderr
    assert not (calls / "getent").exists()  # MASTER_ADDR given: nothing to resolve
    # node 2 runs the replica command the gateway prints (same model and serve flags), one server per GPU, each with
    # its own GPU and port (appended: the last --port wins)
    _, printed = record(calls / "print")
    flags = ["--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--max-model-len", "16384"]
    assert printed == ["vllm-serve-async", "--model", "Qwen/Qwen3-8B", *flags, "--print-replica-command"]
    for i in range(3):
        env, args = record(calls / f"vllm-gpu-a03-{i}")
        assert env["host"] == "gpu-a03" and env["cuda"] == str(i) and env["dev"] == "1"
        assert args[:6] == ["serve", "Qwen/Qwen3-8B", "--host", "0.0.0.0", "--port", "8001"]
        assert args[6:] == [*flags, "--enable-scale-out", "--weight-transfer-config", '{"backend": "nccl"}',
                            "--port", str(18001 + i), "stopped"]  # fmt: skip
        assert env["ifname"] == env["gloo"] == "ib0" and env["ib"] == "1"
    # node 1's gateway adds them as remote replicas, once they answer /health
    env, args = record(calls / "gateway")
    checked = (calls / "curl").read_text().split()
    gateway = checked.index("http://gpu-a02:18000/health")
    assert set(checked[:gateway]) == {f"http://gpu-a03:{18001 + i}/health" for i in range(3)}
    assert set(checked[gateway:]) == {"http://gpu-a02:18000/health"}
    assert env["host"] == "gpu-a02" and env["ifname"] == env["gloo"] == "ib0" and env["ib"] == "1"
    assert ["--port", "18000", "--api-token", "s3cret"] == args[7:11]
    replicas = [args[i + 1] for i, a in enumerate(args) if a == "--replica"]
    assert replicas == ["http://gpu-a03:18001", "http://gpu-a03:18002", "http://gpu-a03:18003"]
    assert args[-6:-1] == flags and args[-1] == "stopped"
    env, args = record(calls / "train")
    assert env["host"] == "gpu-a01" and env["token"] == "s3cret" and env["ifname"] == env["gloo"] == "ib0"
    line = " ".join(args)
    assert "--server_url http://gpu-a02:18000 --weight_transfer nccl --master_address 192.168.7.1" in line
    assert f"--master_port 31000 --output_dir {submit}/runs/exp --bf16 --use_peft" in line


def test_a_server_that_fails_fails_the_job(tmp_path):
    # during start-up: the trainer never starts
    result, calls, _ = run_two_node(tmp_path / "start", GATEWAY="fail", CURL_FAILS="1")
    assert result.returncode == 1 and "the server on gpu-a02 exited during start-up" in result.stderr
    assert not (calls / "train").exists()
    # a remote server during start-up: neither the gateway nor the trainer starts, the other servers are stopped
    result, calls, _ = run_two_node(tmp_path / "remote", nodes=3, VLLM_FAILS="gpu-a03-1")
    assert result.returncode == 1 and "the server on gpu-a03 exited during start-up" in result.stderr
    assert not (calls / "gateway").exists() and not (calls / "train").exists()
    assert record(calls / "vllm-gpu-a03-0")[1][-1] == "stopped"
    # during training: the trainer is stopped
    result, calls, _ = run_two_node(tmp_path / "train", GATEWAY="die-in-training", TRAIN_WAITS="1")
    assert result.returncode == 1 and "the server on gpu-a02 exited during training" in result.stderr
    assert record(calls / "train")[1][-1] == "stopped"
    # the trainer's failure is the job's, and the servers are stopped
    result, calls, _ = run_two_node(tmp_path / "exit", nodes=3, TRAIN_EXIT="3")
    assert result.returncode == 3 and "training failed with exit status 3" in result.stderr
    assert record(calls / "gateway")[1][-1] == record(calls / "vllm-gpu-a03-0")[1][-1] == "stopped"


def test_refused_layouts(tmp_path):
    result, calls, _ = run_two_node(tmp_path / "k", nodes=2, INFERENCE_NODES="2")
    assert result.returncode == 2 and "INFERENCE_NODES=2 needs sbatch --nodes=3" in result.stderr
    result, calls, _ = run_two_node(tmp_path / "one", nodes=1)
    assert result.returncode == 2 and "needs at least 2 nodes (sbatch --nodes=2), got 1: gpu-a01" in result.stderr
    result, calls, _ = run_two_node(tmp_path / "lo", nodes=2, GETENT_ADDRESS="127.0.1.1")
    assert result.returncode == 2 and "resolves to 127.0.1.1 on gpu-a02: set MASTER_ADDR" in result.stderr
    assert not (calls / "gateway").exists()
