"""Static checks of the cluster recipes in infra/ and the Dockerfile (no cluster, no docker here).

Every YAML parses; the Ray cluster YAML passes Ray's own schema; the shell recipes pass `bash -n`
and are run with stub `srun`/`scontrol`/`torchrun`/python that record their argv. Every recorded or
written command is then parsed by the real parser (torchrun's, Ray's `job submit`, our CLIs') and
the configs it names load with its overrides: a renamed flag, module or config field fails here.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pretrain.core.config import load_config

REPO = Path(__file__).resolve().parent.parent
INFRA = REPO / "infra"
WORKDIR = "/workspace/pretrain"  # the Dockerfile's WORKDIR; the Kubernetes recipes rely on it
SHELL_RECIPES = [INFRA / "ray/data_stages.sh", INFRA / "slurm/train.sbatch"]


def _yaml_docs(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no YAML document"
    return docs


def _by_kind(path: Path) -> dict[str, dict]:
    return {d["kind"]: d for d in _yaml_docs(path)}


# --- our CLIs, parsed in-process ------------------------------------------------------------------


def _cli_parser(module: str) -> argparse.ArgumentParser:
    """The parser `python -m <module>` builds, without running the command."""
    p = argparse.ArgumentParser(prog=f"python -m {module}", exit_on_error=False)
    sub = p.add_subparsers(dest="cmd", required=True)
    if module == "trainer":
        importlib.import_module("trainer.cli").configure(sub.add_parser("train"))
    else:
        importlib.import_module(f"{module}.cli").add_subcommands(sub)
    return p


def _repo_path(path: str) -> Path:
    p = Path(path.replace(WORKDIR, str(REPO), 1) if path.startswith(WORKDIR) else path)
    return p if p.is_absolute() else REPO / p


def check_invocation(module: str, argv: list[str], world_size: int = 1) -> argparse.Namespace:
    """Parse `python -m module argv` with the module's own parser and load the config it names
    with its overrides, as the command would (so flags, config files and override keys are real)."""
    try:
        args = _cli_parser(module).parse_args(argv)
    except (argparse.ArgumentError, SystemExit) as e:
        raise AssertionError(f"python -m {module} {shlex.join(argv)}: {e}") from e
    config = str(_repo_path(args.config)) if getattr(args, "config", None) else None
    if config:
        assert Path(config).is_file(), f"python -m {module} {shlex.join(argv)}: no config {config}"
    overrides = list(getattr(args, "overrides", []))
    if (module, args.cmd) == ("data_pipeline", "run"):
        from data_pipeline.config import load_pipeline_config

        load_pipeline_config(config, overrides)
    elif (module, args.cmd) == ("data_pipeline", "minhash"):
        from data_pipeline.minhash.dedup import load_minhash_config

        paths = [f"input.paths={json.dumps(args.input)}", f"output_dir={args.output}"]  # as cmd_minhash
        load_minhash_config(config, [*paths, *overrides])
    elif (module, args.cmd) == ("tokenizer", "train"):
        from tokenizer.config import TokenizerTrainConfig

        load_config(TokenizerTrainConfig, config, overrides)
    elif (module, args.cmd) == ("tokenizer", "encode"):
        from tokenizer.config import TokenizerEncodeConfig

        load_config(TokenizerEncodeConfig, config, overrides)
    elif (module, args.cmd) == ("trainer", "train"):
        from trainer.config import TrainConfig
        from trainer.schedule import Timeline

        # The tokenizer directory lives on the cluster's shared storage, not here.
        cfg = load_config(TrainConfig, config, [*overrides, "data.tokenizer_dir=null"])
        Timeline.build(cfg.curriculum.phases, cfg.curriculum.schedule, world_size)  # batch divides
    else:
        raise AssertionError(f"no check for python -m {module} {args.cmd}")
    return args


# --- shell recipes run against stubs --------------------------------------------------------------


def _stub_bin(tmp_path: Path, names: dict[str, str]) -> Path:
    """A bin/ of shell stubs; each records its argv (NUL-separated, one line per call) in calls.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, extra in names.items():
        (bin_dir / name).write_text(
            f'#!/usr/bin/env bash\n{{ printf "%s\\0" {name} "$@"; echo; }} >> "{tmp_path}/calls.log"\n{extra}\n'
        )
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _calls(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "calls.log"
    return [line.split("\0")[:-1] for line in log.read_text().splitlines()] if log.exists() else []


def _run_recipe(cmd: list[str], tmp_path: Path, stubs: dict[str, str], env: dict[str, str] | None = None):
    bin_dir = _stub_bin(tmp_path, stubs)
    full_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), **(env or {})}
    res = subprocess.run(cmd, env=full_env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    return _calls(tmp_path)


def check_torchrun(argv: list[str], *, nnodes: int, nproc: int) -> argparse.Namespace:
    """torchrun's own parser over the recorded argv; the trainer command after it checked too."""
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args(argv)
    assert (args.nnodes, args.nproc_per_node) == (str(nnodes), str(nproc)), argv
    assert args.rdzv_backend == "c10d" and re.fullmatch(r"[\w.-]+:\d+", args.rdzv_endpoint), argv
    assert args.max_restarts >= 1, argv  # elastic restarts, resumed from the newest checkpoint
    assert args.module and args.training_script == "trainer", argv
    check_invocation("trainer", args.training_script_args, world_size=nnodes * nproc)
    return args


def _data_stage_calls(calls: list[list[str]]) -> list[tuple[str, str]]:
    """(module, command) of each `python -m` call the stub python recorded, checked on the way."""
    out = []
    for call in calls:
        assert call[0] == "python" and call[1] == "-m", call
        check_invocation(call[2], call[3:])
        out.append((call[2], call[3]))
    return out


def _claims(pod_spec: dict) -> list[str]:
    return [
        v["persistentVolumeClaim"]["claimName"] for v in pod_spec["volumes"] if "persistentVolumeClaim" in v
    ]


DATA_STAGES = [
    ("data_pipeline", "run"),
    ("data_pipeline", "minhash"),
    ("tokenizer", "train"),
    ("tokenizer", "encode"),
]


# --- tests ----------------------------------------------------------------------------------------


def test_every_yaml_parses():
    files = sorted(INFRA.rglob("*.yaml"))
    assert len(files) >= 8, files
    for f in files:
        _yaml_docs(f)


def test_shell_recipes_pass_bash_n():
    for f in SHELL_RECIPES:
        res = subprocess.run(["bash", "-n", str(f)], capture_output=True, text=True)
        assert res.returncode == 0, f"{f}: {res.stderr}"


def test_python_m_entry_points_exist():
    for module in ["data_pipeline", "tokenizer", "trainer"]:
        res = subprocess.run(
            [sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True, timeout=60
        )
        assert res.returncode == 0 and "usage:" in res.stdout, res.stderr


def test_cluster_configs_load():
    check_invocation("data_pipeline", ["run", "--config", "infra/configs/data_cluster.yaml"])
    minhash = ["minhash", "--config", "infra/configs/minhash_cluster.yaml", "--input", "a", "--output", "b"]
    check_invocation("data_pipeline", minhash)
    for world_size in (8, 16, 32):  # the batch layout of train_124m divides all of them
        check_invocation("trainer", ["train", "--config", "infra/configs/train_124m.yaml"], world_size)


def test_data_stages_script_runs_the_four_stages_in_order(tmp_path):
    calls = _run_recipe(
        ["bash", "infra/ray/data_stages.sh", "/shared/raw", "/shared/runs"],
        tmp_path,
        {"python": ""},
        {"TOKENIZER_CONFIG": "configs/tokenizer_tiny.yaml"},
    )
    assert _data_stage_calls(calls) == DATA_STAGES
    assert calls[0][-2:] == ["input.paths=[/shared/raw]", "output_dir=/shared/runs/data"]
    # Each stage reads what the previous one wrote.
    assert calls[3][calls[3].index("--input") + 1] == "/shared/runs/dedup"
    assert calls[3][calls[3].index("--tokenizer") + 1] == calls[2][calls[2].index("--out") + 1]


def test_runtime_env_is_valid_and_matches_the_rayjob():
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((INFRA / "ray/runtime_env.yaml").read_text())
    assert set(env) <= {"env_vars", "excludes", "config", "working_dir", "py_modules", "pip"}, env
    assert all(isinstance(v, str) for v in env["env_vars"].values()), "Ray needs string env values"
    assert {".venv", "runs"} <= set(env["excludes"])
    RuntimeEnv(**env)  # Ray's own validation
    job = _by_kind(INFRA / "k8s/ray-data-job.yaml")["RayJob"]
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"] == env["env_vars"]


def test_ray_cluster_yaml_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((INFRA / "ray/cluster-aws.yaml").read_text())
    validate_config(prepare_config(raw))  # what `ray up` does before launching anything
    types = raw["available_node_types"]
    assert types[raw["head_node_type"]]["resources"] == {"CPU": 0}
    installs = [re.search(r"pretrain\[([\w,]+)\]", c) for c in raw["setup_commands"] if "pip install" in c]
    (extras,) = [set(m.group(1).split(",")) for m in installs if m]
    assert "data" in extras and extras <= _extras(), extras
    assert raw["file_mounts"]["/home/ubuntu/pretrain"] == "."  # `ray up` runs from the repo root
    starts = raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in " ".join(raw["head_start_ray_commands"])


def test_rayjob_runs_the_data_stages_from_the_image(tmp_path):
    docs = _by_kind(INFRA / "k8s/ray-data-job.yaml")
    job = docs["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    entry = shlex.split(job["spec"]["entrypoint"])
    assert entry[:2] == ["bash", f"{WORKDIR}/infra/ray/data_stages.sh"], entry
    # Run the entrypoint against this checkout (the image's copy of it) with a stub python.
    calls = _run_recipe(["bash", str(_repo_path(entry[1])), *entry[2:]], tmp_path, {"python": ""})
    assert _data_stage_calls(calls) == DATA_STAGES
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    pvc = _by_kind(INFRA / "k8s/shared-pvc.yaml")["PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for pod in pods:
        assert _claims(pod["spec"]) == [pvc["metadata"]["name"]]
        (container,) = pod["spec"]["containers"]
        assert {m["mountPath"] for m in container["volumeMounts"]} == {"/shared", "/dev/shm"}
        assert {e["name"] for e in container["env"]} == {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}
    submitter = job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    assert {e["name"] for e in submitter["env"]} == {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}


SLURM_ENV = {"SLURM_JOB_NODELIST": "gpu-[07-08]", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_ID": "4242"}


@pytest.mark.parametrize(
    "args",
    [[], ["infra/configs/train_124m.yaml", "run_dir=/lustre/me/runs/124m", "checkpoint.every_steps=100"]],
)
def test_sbatch_launches_one_torchrun_per_node(tmp_path, args):
    script = (INFRA / "slurm/train.sbatch").read_text()
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)=?(\S*)", script, re.M))
    assert directives["ntasks-per-node"] == "1" and directives["nodes"] == "2", directives
    assert "requeue" in directives
    repo = tmp_path / "repo"
    (repo / ".venv/bin").mkdir(parents=True)
    (repo / ".venv/bin/activate").write_text("")
    stubs = {"scontrol": '[ "$1 $2" = "show hostnames" ] && printf "gpu-07\\ngpu-08\\n"', "srun": ""}
    calls = _run_recipe(
        ["bash", str(INFRA / "slurm/train.sbatch"), *args], tmp_path, stubs, {**SLURM_ENV, "REPO": str(repo)}
    )
    srun = [c for c in calls if c[0] == "srun"]
    assert len(srun) == 1, calls
    argv = srun[0][1:]
    assert "--kill-on-bad-exit=1" in argv and "--ntasks-per-node=1" in argv
    torchrun = argv[argv.index("torchrun") + 1 :]
    t = check_torchrun(torchrun, nnodes=2, nproc=8)
    assert t.rdzv_endpoint == "gpu-07:29500" and t.rdzv_id == "4242"  # first node, stable across requeues
    assert (
        t.training_script_args[t.training_script_args.index("--config") + 1]
        == (args or ["infra/configs/train_124m.yaml"])[0]
    )
    overrides = args[1:]
    assert t.training_script_args[len(t.training_script_args) - len(overrides) :] == overrides
    assert re.search(r"^export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1$", script, re.M)


@pytest.mark.parametrize("index", [0, 1])
def test_k8s_indexed_job_runs_torchrun_with_c10d_rendezvous(tmp_path, index):
    docs = _by_kind(INFRA / "k8s/train-torchrun.yaml")
    svc, job = docs["Service"], docs["Job"]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == svc["metadata"]["name"] and pod["restartPolicy"] == "OnFailure"
    assert svc["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    (c,) = pod["containers"]
    assert c["workingDir"] == WORKDIR and c["command"] == ["bash", "-c"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
    assert int(env["NNODES"]) == spec["completions"]
    assert str(c["resources"]["limits"]["nvidia.com/gpu"]) == env["NPROC_PER_NODE"]
    calls = _run_recipe(
        ["bash", "-c", c["args"][0]], tmp_path, {"torchrun": ""}, {**env, "JOB_COMPLETION_INDEX": str(index)}
    )
    t = check_torchrun(calls[0][1:], nnodes=spec["completions"], nproc=int(env["NPROC_PER_NODE"]))
    host, port = t.rdzv_endpoint.split(":")
    assert host == f"{job['metadata']['name']}-0.{svc['metadata']['name']}"  # pod 0's DNS name
    assert int(port) in {p["port"] for p in svc["spec"]["ports"]}
    conf = dict(kv.split("=") for kv in t.rdzv_conf.split(","))
    assert conf["is_host"] == ("true" if index == 0 else "false")
    pvc = _by_kind(INFRA / "k8s/shared-pvc.yaml")["PersistentVolumeClaim"]
    assert _claims(pod) == [pvc["metadata"]["name"]]
    # run_dir (and so the checkpoints the restarts resume from) is on the shared volume.
    from trainer.config import TrainConfig

    cfg = load_config(TrainConfig, REPO / env["CONFIG"], ["data.tokenizer_dir=null"])
    assert cfg.run_dir.startswith("/shared/") and "/shared" in {m["mountPath"] for m in c["volumeMounts"]}


def test_kubernetes_recipes_share_one_image():
    text = (INFRA / "k8s/ray-data-job.yaml").read_text() + (INFRA / "k8s/train-torchrun.yaml").read_text()
    images = re.findall(r"^\s*image:\s*(\S+)", text, re.M)
    assert len(images) == 4 and len(set(images)) == 1, images  # one tag to edit, built from ../Dockerfile


def _dockerfile() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_dockerfile_copies_existing_paths_and_installs_torch_first():
    steps = _dockerfile()
    ignored = [p for p in (REPO / ".dockerignore").read_text().split() if not p.startswith("#")]
    assert {".venv", "runs", ".git"} <= set(ignored)
    import fnmatch

    for instr, rest in steps:
        if instr == "COPY":
            *sources, _dest = shlex.split(rest)
            for s in sources:
                assert (REPO / s).exists(), f"COPY {s}: not in the repo"
                assert not any(fnmatch.fnmatch(s, pat) for pat in ignored), f"COPY {s} is .dockerignored"
    runs = [rest for instr, rest in steps if instr == "RUN"]
    torch_at = next(i for i, r in enumerate(runs) if "$TORCH_SPEC" in r)
    project_at = next(i for i, r in enumerate(runs) if '-e ".[all]"' in r)
    assert torch_at < project_at  # torch pinned first; pyproject.toml does not list it
    assert "all" in _extras()
    assert not re.search(r'^\s*"torch\b', (REPO / "pyproject.toml").read_text(), re.M)
    assert ("WORKDIR", WORKDIR) in steps
    base = next(rest for instr, rest in steps if instr == "ARG" and rest.startswith("BASE_IMAGE="))
    assert "cuda" in base
    spec = next(rest for instr, rest in steps if instr == "ARG" and rest.startswith("TORCH_SPEC="))
    assert spec == f"TORCH_SPEC=torch=={_pinned_torch()}"  # the version scripts/setup_env.sh pins


def _extras() -> set[str]:
    """The optional-dependency names of pyproject.toml (tomllib is 3.11+; the project allows 3.10)."""
    text = (REPO / "pyproject.toml").read_text()
    section = text.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([\w-]+)\s*=", section, re.M))


def _pinned_torch() -> str:
    return re.search(r"torch==([\d.]+)", (REPO / "scripts/setup_env.sh").read_text()).group(1)


def _readme_commands() -> list[list[str]]:
    text = (INFRA / "README.md").read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            for part in re.split(r"\s*(?:&&|;)\s+|\s&$", line):
                words = shlex.split(part, comments=True)
                if words:
                    out.append(words)
    return out


def test_readme_commands_are_real(tmp_path):
    from ray.dashboard.modules.job.cli import submit

    commands = _readme_commands()
    kinds = {c[0] if c[0] != "RAY_AUTH_MODE=token" else c[1] for c in commands}
    assert {"ray", "kubectl", "sbatch", "docker"} <= kinds, kinds
    num_entrypoints = 0
    for words in commands:
        if words[0] == "RAY_AUTH_MODE=token":
            words = words[1:]
        if words[:3] == ["ray", "job", "submit"]:
            params = submit.make_context("submit", words[3:]).params  # Ray's own option parser
            assert params["working_dir"] == "." and _repo_path(params["runtime_env"]).is_file()
            entry = list(params["entrypoint"])
            if entry[:2] == ["python", "-m"]:
                check_invocation(entry[2], entry[3:])
            else:
                assert entry[:2] == ["bash", "infra/ray/data_stages.sh"], entry
                calls = _run_recipe(entry, tmp_path / str(num_entrypoints), {"python": ""})
                assert _data_stage_calls(calls) == DATA_STAGES
            num_entrypoints += 1
        elif words[0] == "sbatch":
            script = next(w for w in words[1:] if not w.startswith("--"))
            assert script == "infra/slurm/train.sbatch"
            args = words[words.index(script) + 1 :]
            if args:
                check_invocation("trainer", ["train", "--config", *args], world_size=16)
        elif words[:2] == ["kubectl", "apply"]:
            _yaml_docs(REPO / words[words.index("-f") + 1])
        elif words[0] == "ray" and words[1] in {"up", "down", "dashboard"}:
            assert (REPO / next(w for w in words[2:] if w.endswith(".yaml"))).is_file()
    assert num_entrypoints == 6  # the whole chain, its 4 stages, the `ray up` variant
    # Every repo path the README names exists.
    for path in set(
        re.findall(
            r"(?<![\w/])((?:infra|configs|scripts|tests)/[\w./-]*\w)", (INFRA / "README.md").read_text()
        )
    ):
        assert (REPO / path).exists(), path
