"""`bestofl submit`: run any bestofl command as a Ray job on a cluster (Ray Jobs API).

    bestofl submit --address http://HEAD:8265 [--wait] [--extra gpu] <command> [overrides]
    bestofl submit status|logs|stop JOB_ID --address http://HEAD:8265
    bestofl submit list --address http://HEAD:8265

The job's working_dir is the project root (code, conf/, cluster/), so the entrypoint
`python -m bestofl.cli <command> ...` runs this checkout's code on the cluster, with the
interpreter first on the head's PATH (or --python). The command's config is checked here
first: a wrong key fails before anything is uploaded. A head with token authentication (what
`ray start --head` turns on once a token exists) gets the token as `ray.init()` would find it,
and a head whose job agent is still starting is retried for a while (--agent-timeout).
docs/cluster.md has the whole story.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import sys
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import yaml

from bestofl.commands import COMMANDS, parse_args

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RUNTIME_ENV_FILE = PROJECT_ROOT / "cluster" / "runtime_env.yaml"
CONTROL = ("status", "logs", "stop", "list")
EXTRAS = ("gpu", "cpu")


def requirements(extra: str) -> list[str]:
    """The package's pip requirements plus those of `extra`, without ray itself.

    Read from this checkout's pyproject.toml (the code the job uploads), else from the
    installed package's metadata. Ray comes from the cluster image (same version, pinned in
    cluster/); reinstalling it in a job's runtime_env would shadow the running cluster's Ray.
    """
    from packaging.requirements import Requirement

    pyproject = PROJECT_ROOT / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        project = tomllib.loads(pyproject.read_text())["project"]
        specs = [*project["dependencies"], *project.get("optional-dependencies", {}).get(extra, [])]
    else:
        specs = metadata.requires("bestofl") or []
    out = []
    for spec in specs:
        req = Requirement(spec)
        if req.name == "ray":
            continue
        if req.marker is None or req.marker.evaluate({"extra": extra}):
            req.marker = None
            out.append(str(req))
    return out


def runtime_env(working_dir: str, extra: str | None = None, env: dict[str, str] | None = None,
                base_file: str | Path = RUNTIME_ENV_FILE) -> dict[str, Any]:
    """cluster/runtime_env.yaml (excludes, env vars) + this job's working_dir, pip, env."""
    base = yaml.safe_load(Path(base_file).read_text()) or {}
    renv = {**base, "working_dir": working_dir}
    if extra:
        renv["pip"] = requirements(extra)
    renv["env_vars"] = {**base.get("env_vars", {}), **(env or {})}
    return renv


def entrypoint(command: str, args: Sequence[str], python: str = "python") -> str:
    """`python -m bestofl.cli <command> ...`: `bestofl <command>` run from the uploaded
    working_dir (first on sys.path), with the CLI's one-line errors and exit codes."""
    return shlex.join([python, "-m", "bestofl.cli", command, *args])


def check_command(command: str, args: Sequence[str]) -> None:
    """Validate a command's config locally, so a wrong key never reaches the cluster."""
    if command not in COMMANDS or command == "submit":
        jobs = [c for c in COMMANDS if c != "submit"]
        raise ValueError(f"unknown command {command!r}; choose one of "
                         f"{', '.join(jobs)} (or status, logs, stop, list)")
    parse_args(command, args)


def job_args(args: Sequence[str], working_dir: str) -> list[str]:
    """Rewrite `--config FILE` relative to the working_dir, where the job finds it."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            out[i + 1] = _in_working_dir(out[i + 1], working_dir)
        elif arg.startswith("--config="):
            out[i] = "--config=" + _in_working_dir(arg.split("=", 1)[1], working_dir)
    return out


def _in_working_dir(path: str, working_dir: str) -> str:
    if "://" in working_dir:  # a remote zip: the path is already relative to it
        return path
    full, root = Path(path).resolve(), Path(working_dir).resolve()
    if not full.is_relative_to(root):
        raise ValueError(f"--config {path} is outside the job's working_dir {root}; "
                         f"put it inside so it is uploaded with the job")
    return full.relative_to(root).as_posix()


def _env_pairs(items: Sequence[str]) -> dict[str, str]:
    """`K=V`, or `K` alone to pass this shell's value (credentials stay off the command line)."""
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            if key not in os.environ:
                raise ValueError(f"--env {key}: not set in this shell; write --env {key}=VALUE")
            value = os.environ[key]
        env[key] = value
    return env


def auth_headers() -> dict[str, str]:
    """The cluster token, found as `ray start` / `ray.init()` find it when joining a cluster:
    RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token; none when
    RAY_AUTH_MODE=disabled. (Ray's JobSubmissionClient sends one only with RAY_AUTH_MODE=token,
    so against a default `ray start --head` it gets "Unauthorized: Missing authentication token".)

    Read here rather than through Ray's AuthenticationTokenLoader: once that has loaded a
    token, this process's own Ray workers demand it from a cluster that sends none.
    """
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
        try:
            token = Path(path).read_text().strip()
        except OSError:
            return {}
    return {"authorization": f"Bearer {token}"} if token else {}


def _auth_error(address: str, e: Exception) -> ValueError:
    sent = "sent the token it found" if auth_headers() else "found no token to send"
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ValueError(f"the Ray dashboard at {address} refused us ({first}); bestofl submit {sent}. "
                      f"Its token is in ~/.ray/auth_token on the head (`ray get-auth-token` there): "
                      f"copy that file here or set RAY_AUTH_TOKEN")


def _client(address: str | None):
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ValueError("no cluster given: pass --address http://HEAD:8265 "
                         "(or set RAY_API_SERVER_ADDRESS)")
    try:
        return JobSubmissionClient(address, headers=auth_headers())
    except ConnectionError as e:
        raise ValueError(f"cannot reach the Ray dashboard at {address}: {e}") from None
    except AuthenticationError as e:
        raise _auth_error(address, e) from None


# What the dashboard answers while the head's job agent is not up (right after `ray start`).
NO_AGENT = "No available agent to submit job"


def submit_job(client, agent_timeout_s: float, poll_s: float = 1.0, **kwargs: Any) -> str:
    """`client.submit_job(**kwargs)`, retried while the head's job agent is still starting,
    up to `agent_timeout_s` (one line on stderr says so); any other refusal at once."""
    deadline = time.monotonic() + agent_timeout_s
    told = False
    while True:
        try:
            return client.submit_job(**kwargs)
        except RuntimeError as e:
            if NO_AGENT not in str(e):
                raise
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{NO_AGENT}: the head's job agent did not come up within "
                                   f"{agent_timeout_s:g} s (--agent-timeout; the head's "
                                   f"dashboard_agent.log says why)") from None
            if not told:
                print(f"bestofl submit: the cluster's job agent is not up yet (a head that just "
                      f"started); retrying for up to {agent_timeout_s:g} s", file=sys.stderr, flush=True)
                told = True
            time.sleep(poll_s)


def _last_error(logs: str) -> str:
    """The line that names what went wrong: a CLI error, else the last exception line."""
    lines = [line.strip() for line in logs.splitlines() if line.strip()]
    for pattern in (r"^bestofl [\w-]+: error:", r"^[\w.]*(Error|Exception)\b.*:", r"error", r"Error"):
        for line in reversed(lines):
            if re.search(pattern, line):
                return line
    return lines[-1] if lines else ""


def wait(client, job_id: str, follow: bool = True, poll_s: float = 1.0) -> int:
    """Stream the job's logs until it ends; 0 when it SUCCEEDED, 1 otherwise (error printed)."""
    from ray.job_submission import JobStatus

    if follow:
        async def tail() -> None:
            async for chunk in client.tail_job_logs(job_id):
                print(chunk, end="", flush=True)
        try:
            asyncio.run(tail())
        except RuntimeError as e:  # the log stream can drop; the status below still decides
            print(f"bestofl submit: log stream ended: {e}", file=sys.stderr)
    while not (info := client.get_job_info(job_id)).status.is_terminal():
        time.sleep(poll_s)
    if info.status == JobStatus.SUCCEEDED:
        print(f"bestofl submit: job {job_id} SUCCEEDED", file=sys.stderr)
        return 0
    code = info.driver_exit_code
    error = _last_error(client.get_job_logs(job_id)) or (info.message or "").splitlines()[0]
    print(f"bestofl submit: job {job_id} {info.status.value}"
          + (f" (exit code {code})" if code is not None else "") + f": {error}", file=sys.stderr)
    return 1


def submit(args: argparse.Namespace) -> int:
    command, rest = args.command, list(args.args)
    check_command(command, rest)
    working_dir = args.working_dir or str(PROJECT_ROOT)
    rest = job_args(rest, working_dir)
    client = _client(args.address)
    job_id = args.job_id or f"bestofl-{command}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    resources = {}
    for item in args.entrypoint_resources:
        name, _, amount = item.partition("=")
        try:
            resources[name] = float(amount)
        except ValueError:
            raise ValueError(f"--entrypoint-resources {item!r} is not NAME=AMOUNT") from None
    from ray.exceptions import AuthenticationError

    try:
        job_id = submit_job(
            client, args.agent_timeout,
            entrypoint=entrypoint(command, rest, args.python),
            submission_id=job_id,
            runtime_env=runtime_env(working_dir, args.extra, _env_pairs(args.env), args.runtime_env),
            metadata={"bestofl_command": command},
            entrypoint_num_cpus=args.entrypoint_num_cpus,
            entrypoint_num_gpus=args.entrypoint_num_gpus,
            entrypoint_memory=args.entrypoint_memory,
            entrypoint_resources=resources or None,
        )
    except AuthenticationError as e:
        raise _auth_error(client.get_address(), e) from None
    except RuntimeError as e:  # refused: duplicate id, no job agent in time, bad runtime_env
        raise ValueError(f"the cluster refused job {job_id}: {e}") from None
    print(job_id)
    print(f"bestofl submit: submitted {job_id}; follow it with "
          f"`bestofl submit logs {job_id} --follow --address {client.get_address()}`", file=sys.stderr)
    if not args.wait:
        return 0
    try:
        return wait(client, job_id)
    except KeyboardInterrupt:
        print(f"\nbestofl submit: stopped following; job {job_id} keeps running "
              f"(bestofl submit stop {job_id})", file=sys.stderr)
        return 130


def control(verb: str, argv: Sequence[str], address: str | None) -> int:
    parser = argparse.ArgumentParser(prog=f"bestofl submit {verb}")
    if verb != "list":
        parser.add_argument("job_id")
    parser.add_argument("--address", default=address)
    if verb == "logs":
        parser.add_argument("--follow", action="store_true", help="stream until the job ends")
    if verb == "stop":
        parser.add_argument("--wait", action="store_true", help="wait until the job has stopped")
    args = parser.parse_args(argv)
    client = _client(args.address)
    from ray.exceptions import AuthenticationError

    try:
        if verb == "list":
            for job in client.list_jobs():
                print(f"{job.submission_id or job.job_id}\t{job.status.value}\t{job.entrypoint}")
        elif verb == "status":
            info = client.get_job_info(args.job_id)
            print(f"{args.job_id}\t{info.status.value}" + (f"\t{info.message}" if info.message else ""))
        elif verb == "logs":
            if args.follow:
                return wait(client, args.job_id)
            print(client.get_job_logs(args.job_id), end="")
        elif verb == "stop":
            stopped = client.stop_job(args.job_id)
            print(f"{args.job_id}\t{'stop requested' if stopped else 'not running'}")
            if args.wait:
                while not (status := client.get_job_status(args.job_id)).is_terminal():
                    time.sleep(1)
                print(f"{args.job_id}\t{status.value}")
    except AuthenticationError as e:
        raise _auth_error(client.get_address(), e) from None
    except RuntimeError as e:  # unknown job id, refused request
        raise ValueError(str(e)) from None
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bestofl submit",
        description="Run a bestofl command as a Ray job (Ray Jobs API), or inspect one.",
        epilog="`bestofl submit status|logs|stop JOB_ID --address URL`, `bestofl submit list`.")
    p.add_argument("--address", default=None,
                   help="Ray dashboard URL, e.g. http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS)")
    p.add_argument("--wait", action="store_true",
                   help="stream the job's logs and exit with its status (0 only when SUCCEEDED)")
    p.add_argument("--job-id", default=None, help="submission id (default bestofl-<command>-<time>-<rand>)")
    p.add_argument("--extra", choices=EXTRAS, default=None,
                   help="pip-install the package's deps with this extra in the job's runtime_env; "
                        "omit when the cluster image already has them")
    p.add_argument("--env", action="append", default=[], metavar="K=V",
                   help="job env var; `--env K` passes this shell's value of K")
    p.add_argument("--working-dir", default=None,
                   help="folder to upload, or a remote zip URI (default: the project root)")
    p.add_argument("--runtime-env", default=str(RUNTIME_ENV_FILE),
                   help="base runtime_env YAML (default cluster/runtime_env.yaml)")
    p.add_argument("--python", default="python", help="interpreter on the cluster (default: python on PATH)")
    p.add_argument("--agent-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="how long to retry while the head's job agent is still starting (default 120)")
    p.add_argument("--entrypoint-num-cpus", type=float, default=None)
    p.add_argument("--entrypoint-num-gpus", type=float, default=None)
    p.add_argument("--entrypoint-memory", type=int, default=None, help="bytes")
    p.add_argument("--entrypoint-resources", action="append", default=[], metavar="NAME=AMOUNT")
    p.add_argument("command", help="a bestofl command (sample, train-rm, score, evaluate, ...) "
                                   "or status|logs|stop|list")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the command's own arguments")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command in CONTROL:
        return control(args.command, args.args, args.address)
    return submit(args)


if __name__ == "__main__":
    sys.exit(main())
