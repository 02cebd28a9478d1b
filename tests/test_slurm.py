"""The workflow through profiles/slurm on a real one-node SLURM cluster (tests/slurm_cluster.py).

Marked `slurm`: deselect with `-m 'not slurm'`. The tests are skipped, with the reason, when the
Slurm and munge programs are missing or the session is not root; SASQ_REQUIRE_SLURM=1 turns that
skip into a failure, so CI cannot pass without running them. `.ci/run` installs the Debian
packages. The .test workflow runs twice (locally and on SLURM), 27 jobs each on the
stories260K model. The module took 541 s on a 2-core machine that was also running other jobs
(load average about 5): 144 s for the local run, 292 s for the SLURM run, 101 s for the other
two tests.

Every run layers a site profile from :func:`write_site_profile` over profiles/slurm, the way a
user sets the partition and account of a real cluster. That profile replaces default-resources
(partition `debug`, no account, 1 CPU and 1000 MB per job). It also sets what this cluster
needs: squeue for job states because there is no slurmdbd, short status-check intervals, and
kept job logs. Everything else, `retries` and `rerun-incomplete` among them, comes from
profiles/slurm.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from slurm_cluster import GPU_MODEL, PARTITION, SlurmCluster, SlurmJob, unavailable_reason

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parent.parent
ASSETS = Path(os.environ.get("SASQ_ASSETS", REPO.parent / "shared" / "assets")).resolve()
TEST_CONFIG = REPO / ".test" / "config" / "config.yaml"
SLURM_PROFILE = REPO / "profiles" / "slurm"
REQUIRE_VARIABLE = "SASQ_REQUIRE_SLURM"
RUN_TIMEOUT = 1800

# GPU requests of the SLURM run, in the config's per-rule `resources` as config/paper.yaml sets
# them. The jobs still compute on the CPU, so the check is only that the request reaches SLURM.
GPU_RESOURCES = {
    "calibrate": {"gpu": 1},
    "train": {"gpu": 1},
    "evaluate": {"gpu": 1, "gpu_model": GPU_MODEL},
    "diagnose": {"gpu": 1},
}

# Columns and keys of the results that measure run time. Both runs must agree on everything else.
TIMING_KEYS = {"seconds", "train_seconds"}


def skip_or_fail(reason: str) -> None:
    if os.environ.get(REQUIRE_VARIABLE) == "1":
        pytest.fail(f"{reason} ({REQUIRE_VARIABLE}=1 requires the SLURM tests to run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster():
    """A one-node cluster for the whole module, stopped by process id even when a test fails."""
    reason = unavailable_reason()
    if reason is None:
        for module in ("snakemake", "snakemake_executor_plugin_slurm", "pandas", "matplotlib"):
            try:
                __import__(module)
            except ImportError:
                reason = f"{module} is not installed; install the workflow extra: pip install -e '.[workflow]'"
                break
    if reason is not None:
        skip_or_fail(reason)

    # Not under pytest's tmp_path, because its parent folders are private to root and munged runs as user munge.
    root = Path(tempfile.mkdtemp(prefix="sasq-slurm-"))
    cluster = SlurmCluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def assets_config() -> list[str]:
    stories = ASSETS / "stories260K-hf"
    wikitext = ASSETS / "wikitext-2-raw"
    if not (stories / "config.json").is_file() or not (wikitext / "wiki.test.raw").is_file():
        skip_or_fail(f"stories260K or WikiText-2 raw files not found under {ASSETS} (set SASQ_ASSETS)")
    return [f"assets_dir={ASSETS}", f"data_dir={wikitext}"]


def write_site_profile(folder: Path) -> Path:
    """Write the site profile of the test cluster. Given after profiles/slurm, its keys replace that profile's."""
    settings = {
        "default-resources": {"slurm_partition": PARTITION, "runtime": 30, "mem_mb": 1000, "cpus_per_task": 1},
        # sacct fails without slurmdbd, so the plugin reads job states from squeue.
        "slurm-status-command": "squeue",
        # The defaults wait 40 s before the first status check and 10 s between checks, sized for
        # busy clusters, but a job here takes seconds. The plugin still adds 10 s to the interval
        # after each check that finds no finished job.
        "slurm-init-seconds-before-status-checks": 2,
        "seconds-between-status-checks": 2,
        "slurm-keep-successful-logs": True,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(settings))
    return folder


def snakemake_command(workdir: Path, *args: str, snakefile: Path = REPO / "Snakefile", slurm: bool = False) -> list[str]:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(workdir)]
    if slurm:
        command += ["--profile", str(SLURM_PROFILE), "--profile", str(write_site_profile(workdir / "site-profile"))]
    return command + list(args)


def snakemake_env(cluster: SlurmCluster | None) -> dict[str, str]:
    """Return the environment of a snakemake run. sbatch --export=ALL passes it on to the jobs, PATH included."""
    env = dict(cluster.env) if cluster else dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_snakemake(
    command: list[str], workdir: Path, cluster: SlurmCluster | None = None
) -> tuple[subprocess.CompletedProcess, float]:
    """Run snakemake in `workdir` and return the result and the seconds it took.

    The working directory matters because the plugin writes its job logs below it.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    result = subprocess.run(command, cwd=workdir, env=snakemake_env(cluster), capture_output=True, text=True, timeout=RUN_TIMEOUT)
    return result, time.monotonic() - start


def run_id(output: str) -> str:
    """Return the plugin's run id, which is also the SLURM job name of every job of the run."""
    found = re.findall(r"SLURM run ID: (\S+)", output)
    assert len(found) == 1, f"expected one 'SLURM run ID' line in the snakemake output:\n{output[-3000:]}"
    return found[0]


def submissions(output: str) -> dict[str, str]:
    """Return the Snakemake job id by SLURM job id, from the plugin's 'has been submitted' lines."""
    pairs = re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", output)
    return {slurm_id: snakemake_id for snakemake_id, slurm_id in pairs}


def job_stats(output: str) -> dict[str, int]:
    """Return the job count by rule from the 'Job stats' table that snakemake prints before running."""
    table = output[output.index("Job stats:") :].splitlines()[3:]
    counts = {}
    for line in table:
        fields = line.split()
        if len(fields) != 2 or fields[0] == "total":
            break
        counts[fields[0]] = int(fields[1])
    return counts


def job_resources(output: str) -> dict[str, dict[str, str]]:
    """Return the resources by Snakemake job id, from the 'resources:' line of each job block that snakemake prints."""
    resources = {}
    block: dict[str, str] = {}
    for line in output.splitlines():
        if re.match(r"(local)?rule \S+:$", line):
            block = {}
        elif line.startswith("    jobid: "):
            block["jobid"] = line.split(": ", 1)[1]
        elif line.startswith("    resources: ") and "jobid" in block:
            pairs = line.split(": ", 1)[1].split(", ")
            resources[block["jobid"]] = dict(pair.split("=", 1) for pair in pairs)
    return resources


def expected_tres(resources: dict[str, str]) -> str:
    """Return the TresPerJob that squeue shows for a job with these resources, after the plugin's `--gpus=[model:]count`."""
    if "gpu_model" in resources:
        return f"gres:gpu:{resources['gpu_model']}:{resources.get('gpu', '1')}"
    if "gpu" in resources:
        return f"gres:gpu:{resources['gpu']}"
    return "N/A"


def rule_of(job: SlurmJob) -> str:
    """Return the rule name from the plugin's job comment, 'rule_<name>' or 'rule_<name>_wildcards_<values>'."""
    return job.comment.removeprefix("rule_").split("_wildcards_")[0]


def run_jobs(cluster: SlurmCluster, name: str) -> list[SlurmJob]:
    return [job for job in cluster.jobs() if job.name == name]


def failure_report(result: subprocess.CompletedProcess, cluster: SlurmCluster) -> str:
    return f"snakemake exited with {result.returncode}\n{result.stderr[-6000:]}\n{cluster.log_tails()}"


def comparable_json(path: Path, out: Path):
    """Load the JSON without timings and with the output folder written as OUT, so that paths of both runs compare equal."""
    data = json.loads(path.read_text().replace(str(out), "OUT"))
    if isinstance(data, dict):
        data = {key: value for key, value in data.items() if key not in TIMING_KEYS}
    return data


def comparable_csv(path: Path, out: Path) -> list[dict[str, str]]:
    rows = csv.DictReader(io.StringIO(path.read_text().replace(str(out), "OUT")))
    return [{key: value for key, value in row.items() if key not in TIMING_KEYS} for row in rows]


def comparable_markdown(path: Path) -> list[str]:
    """Return the lines of a Markdown file with the cells of table columns named in TIMING_KEYS blanked."""
    lines = path.read_text().splitlines()
    timing_columns: set[int] = set()
    for index, line in enumerate(lines):
        if not line.startswith("|"):
            timing_columns = set()
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if index + 1 < len(lines) and lines[index + 1].startswith("| ---"):
            timing_columns = {column for column, name in enumerate(cells) if name in TIMING_KEYS}
        lines[index] = "|".join("" if column in timing_columns else cell for column, cell in enumerate(cells))
    return lines


def comparable_metadata(metadata: dict[str, str], out: Path) -> dict[str, str]:
    return {key: value.replace(str(out), "OUT") for key, value in metadata.items()}


def assert_same_safetensors(local: Path, local_out: Path, remote: Path, remote_out: Path) -> None:
    # The header's metadata is a JSON object whose key order differs between processes, so compare parsed contents.
    with safe_open(local, "pt") as first, safe_open(remote, "pt") as second:
        assert comparable_metadata(first.metadata(), local_out) == comparable_metadata(second.metadata(), remote_out), local
        assert sorted(first.keys()) == sorted(second.keys()), local
        for name in first.keys():
            assert torch.equal(first.get_tensor(name), second.get_tensor(name)), f"{local}: tensor {name}"


def output_files(out: Path) -> set[Path]:
    return {path.relative_to(out) for path in out.rglob("*") if path.is_file()}


def assert_same_outputs(local_out: Path, slurm_out: Path) -> None:
    """Assert that both runs wrote the same files with the same results. Timings, output folders and log text may differ."""
    local_files = output_files(local_out)
    assert local_files == output_files(slurm_out)
    assert any(path.suffix == ".safetensors" for path in local_files)
    for relative in sorted(local_files):
        local, remote = local_out / relative, slurm_out / relative
        if relative.parts[:2] == ("results", "logs"):
            continue
        if relative.suffix == ".json":
            assert comparable_json(local, local_out) == comparable_json(remote, slurm_out), relative
        elif relative.suffix == ".csv":
            assert comparable_csv(local, local_out) == comparable_csv(remote, slurm_out), relative
        elif relative.suffix == ".md":
            assert comparable_markdown(local) == comparable_markdown(remote), relative
        elif relative.suffix == ".safetensors":
            assert_same_safetensors(local, local_out, remote, slurm_out)
        else:
            assert local.read_bytes() == remote.read_bytes(), relative


def test_test_workflow_on_slurm(cluster, tmp_path, capsys):
    assets = assets_config()
    local_dir, slurm_dir = tmp_path / "local", tmp_path / "slurm"

    local_command = snakemake_command(
        local_dir, "--cores", "2", "--configfile", str(TEST_CONFIG), "--config", f"output_dir={local_dir / 'out'}", *assets
    )
    local, local_seconds = run_snakemake(local_command, local_dir)
    assert local.returncode == 0, local.stderr[-5000:]

    slurm_dir.mkdir()
    gpu_config = slurm_dir / "config.yaml"
    gpu_config.write_text(TEST_CONFIG.read_text() + yaml.safe_dump({"resources": GPU_RESOURCES}))
    slurm_command = snakemake_command(
        slurm_dir, "--configfile", str(gpu_config), "--config", f"output_dir={slurm_dir / 'out'}", *assets, slurm=True
    )
    slurm, slurm_seconds = run_snakemake(slurm_command, slurm_dir, cluster)
    output = slurm.stdout + slurm.stderr
    assert slurm.returncode == 0, failure_report(slurm, cluster)

    # Every job except the local target rule `all` went through sbatch, once.
    stats = job_stats(output)
    assert stats == job_stats(local.stdout + local.stderr)
    assert stats.pop("all") == 1
    submitted = submissions(output)
    assert len(submitted) == sum(stats.values())
    assert len(set(submitted.values())) == len(submitted), "a Snakemake job was submitted twice"

    jobs = run_jobs(cluster, run_id(output))
    assert sorted(job.job_id for job in jobs) == sorted(submitted)
    assert {rule_of(job) for job in jobs} == set(stats)
    records = cluster.completion_records()
    logs = {path.stem for path in (slurm_dir / ".snakemake" / "slurm_logs").rglob("*.log")}
    for job in jobs:
        assert job.state == "COMPLETED", job
        assert records[job.job_id]["JobState"] == "COMPLETED", records[job.job_id]
        assert records[job.job_id]["ExitCode"] == "0:0", records[job.job_id]
        assert records[job.job_id]["Partition"] == PARTITION, records[job.job_id]
        assert job.job_id in logs, f"no plugin log for SLURM job {job.job_id}"

    # The per-rule GPU resources of the config reach SLURM as GPU requests, and only those.
    resources = job_resources(output)
    for job in jobs:
        assert job.tres_per_job == expected_tres(resources[submitted[job.job_id]]), (job, resources[submitted[job.job_id]])
    gpu_rules = {rule_of(job) for job in jobs if job.tres_per_job != "N/A"}
    assert set(GPU_RESOURCES) <= gpu_rules

    assert_same_outputs(local_dir / "out", slurm_dir / "out")

    with capsys.disabled():
        print(f"\n.test workflow: local run {local_seconds:.0f} s (--cores 2), SLURM run {slurm_seconds:.0f} s "
              f"({len(jobs)} sbatch jobs on a node with 2 CPUs, 1 CPU per job)")
        ordered = sorted(jobs, key=lambda job: int(job.job_id))
        print("SLURM job ids by rule: " + ", ".join(f"{job.job_id}={rule_of(job)}" for job in ordered))


FLAKY_SNAKEFILE = """
rule all:
    input:
        "out/flaky.txt",


# Fails on its first attempt and succeeds on the retry that the profile's `retries` allows.
rule flaky:
    output:
        "out/flaky.txt",
    resources:
        attempt_number=lambda wildcards, attempt: attempt,
    shell:
        "if [ {resources.attempt_number} -eq 1 ]; then echo 'attempt 1 fails on purpose' >&2; exit 1; fi; "
        "echo $SLURM_JOB_ID > {output}"
"""


def test_failed_job_is_retried(cluster, tmp_path):
    retries = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())["retries"]
    assert retries >= 1, "profiles/slurm sets no retries"
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(FLAKY_SNAKEFILE)

    result, _ = run_snakemake(snakemake_command(tmp_path, snakefile=snakefile, slurm=True), tmp_path, cluster)
    output = result.stdout + result.stderr
    assert result.returncode == 0, failure_report(result, cluster)

    jobs = sorted(run_jobs(cluster, run_id(output)), key=lambda job: int(job.job_id))
    assert [rule_of(job) for job in jobs] == ["flaky", "flaky"]
    assert [job.state for job in jobs] == ["FAILED", "COMPLETED"]
    assert cluster.completion_records()[jobs[0].job_id]["ExitCode"] == "1:0"
    assert sorted(submissions(output)) == [job.job_id for job in jobs]
    assert f"SLURM-job '{jobs[0].job_id}' failed" in output
    assert (tmp_path / "out" / "flaky.txt").read_text().strip() == jobs[1].job_id


SLOW_SNAKEFILE = """
rule all:
    input:
        "out/final.txt",


rule quick:
    output:
        "out/quick.txt",
    shell:
        "echo quick > {output}"


# Waits until the test creates the file `release` in the working directory, and fails after 300 s without it.
rule slow:
    output:
        "out/slow.txt",
    shell:
        "for second in $(seq 300); do [ -e release ] && break; sleep 1; done; "
        "[ -e release ] && echo slow > {output}"


rule final:
    input:
        "out/quick.txt",
        "out/slow.txt",
    output:
        "out/final.txt",
    shell:
        "cat {input} > {output}"
"""


def cancel_rule_jobs(cluster: SlurmCluster, rule: str, ready: Path, process: subprocess.Popen, cancelled: list[str]) -> None:
    """scancel every queued or running job of `rule` once `ready` exists, until `process` exits."""
    while process.poll() is None:
        if ready.exists():
            for job in cluster.jobs():
                if rule_of(job) == rule and job.state in ("PENDING", "RUNNING") and job.job_id not in cancelled:
                    cluster.run(["scancel", job.job_id])
                    cancelled.append(job.job_id)
        time.sleep(0.5)


def test_cancelled_job_fails_run_and_rerun_resumes(cluster, tmp_path):
    retries = yaml.safe_load((SLURM_PROFILE / "config.yaml").read_text())["retries"]
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(SLOW_SNAKEFILE)
    command = snakemake_command(tmp_path, snakefile=snakefile, slurm=True)
    quick = tmp_path / "out" / "quick.txt"

    # First run: cancel `slow` once `quick` has finished, and again on each retry.
    log = tmp_path / "first-run.log"
    cancelled: list[str] = []
    with open(log, "w") as handle:
        process = subprocess.Popen(
            command, cwd=tmp_path, env=snakemake_env(cluster), stdout=handle, stderr=subprocess.STDOUT, text=True
        )
        canceller = threading.Thread(target=cancel_rule_jobs, args=(cluster, "slow", quick, process, cancelled))
        canceller.start()
        try:
            process.wait(timeout=RUN_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
            canceller.join()
    output = log.read_text()
    assert process.returncode != 0, output[-3000:]
    assert len(cancelled) == retries + 1, f"cancelled {cancelled}; expected one job per attempt\n{output[-3000:]}"
    for job_id in cancelled:
        assert f"SLURM-job '{job_id}' failed, SLURM status is: 'CANCELLED'" in output
    assert "Exiting because a job execution failed" in output
    assert quick.read_text() == "quick\n"
    assert not (tmp_path / "out" / "slow.txt").exists()
    quick_mtime = quick.stat().st_mtime_ns

    # Rerun: only `slow` and `final` are submitted, and `quick` is not redone.
    (tmp_path / "release").touch()
    rerun, _ = run_snakemake(command, tmp_path, cluster)
    rerun_output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, failure_report(rerun, cluster)
    jobs = run_jobs(cluster, run_id(rerun_output))
    assert sorted(rule_of(job) for job in jobs) == ["final", "slow"]
    assert all(job.state == "COMPLETED" for job in jobs), jobs
    assert quick.stat().st_mtime_ns == quick_mtime
    assert (tmp_path / "out" / "final.txt").read_text() == "quick\nslow\n"
