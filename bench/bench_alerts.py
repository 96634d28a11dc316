"""Alert to retrain, timed: the real Alertmanager delivers a firing alert to Cutline's webhook, and
the urgent retrain it causes preempts a low job training on the one CPU slot.

    python bench/bench_alerts.py [--runs 3]

Prints, per run and as medians: alert posted to Alertmanager -> webhook delivered to Cutline
(recorded when handled), delivery -> the retrain's first training batch, and the total. With the
warm standby (the default). Needs prometheus-alertmanager (./run-tests installs it).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from engine.alerts import alert_events, save_rules  # noqa: E402
from engine.api.tokens import TokenStore  # noqa: E402
from engine.core import Engine  # noqa: E402
from engine.demo_dataset import generate_dataset  # noqa: E402

from engine_runs import TEST_SETTINGS, run_events, tiny_job, wait_for  # noqa: E402
from test_alerts import RULES, post_alert  # noqa: E402
from worker_runs import make_spec, run_worker  # noqa: E402


def one_run(root: Path, data: Path, model: Path, start_alertmanager) -> dict[str, float]:
    engine = Engine(root / "home", use_nvml=False,
                    settings={**TEST_SETTINGS, "warm_standby": True, "api_enabled": True, "api_port": 0,
                              "keep_final_state": False})
    try:
        save_rules(engine.home, RULES.format(model=model, data=data, cooldown=0))
        low = engine.ops.submit(**{**tiny_job(data, "background", "low"),
                                   "train_args": {**tiny_job(data, "x")["train_args"], "epochs": 50}})
        engine.start()
        token = TokenStore(engine.home).ensure_default().secret
        am_url = start_alertmanager(f"{engine.api.url}/api/v1/alertmanager", token, root)
        wait_for(lambda: engine.executor.status()["standby_ready"], 120, "standby")
        wait_for(lambda: (engine.store.job(low.id).batch or 0) >= 3, 120, "low job training")
        posted = time.time()
        post_alert(am_url)
        [event] = wait_for(lambda: [e for e in alert_events(engine.store) if e["action"] == "retrain"], 30, "delivery")
        job = engine.store.job(event["job_id"])
        first = wait_for(lambda: run_events(engine.store.job(job.id).run_dir, "batch"), 60, "first batch", 0.01)[0]
        return {"alert posted -> webhook handled": event["ts"] - posted,
                "webhook handled -> first urgent batch": first["ts"] - event["ts"],
                "alert posted -> first urgent batch": first["ts"] - posted}
    finally:
        engine.shutdown(mode="checkpoint", timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("prometheus-alertmanager") is None:
        print("prometheus-alertmanager is not installed (bash scripts/ensure-test-tools.sh installs it)")
        return 1
    import subprocess
    import json
    import os
    import urllib.request

    from test_alerts import free_port

    procs = []

    def start_alertmanager(webhook: str, token: str, root: Path) -> str:
        port = free_port()
        (root / "token").write_text(token)
        os.chmod(root / "token", 0o600)
        (root / "am.yml").write_text(json.dumps({
            "route": {"receiver": "c", "group_wait": "0s", "group_interval": "1s", "repeat_interval": "1h"},
            "receivers": [{"name": "c", "webhook_configs": [{"url": webhook, "http_config": {
                "authorization": {"type": "Bearer", "credentials_file": str(root / "token")}}}]}]}))
        procs.append(subprocess.Popen(["prometheus-alertmanager", f"--config.file={root / 'am.yml'}",
                                       f"--storage.path={root / 'am'}", f"--web.listen-address=127.0.0.1:{port}",
                                       "--cluster.listen-address="], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ready(url, urllib.request), 20, "alertmanager")
        return url

    root = Path(tempfile.mkdtemp(prefix="cutline-bench-alerts-"))
    try:
        data = generate_dataset(root / "data", train=32, val=8, imgsz=64, seed=0)
        base = root / "base" / "run"
        assert run_worker(make_spec(base, data, epochs=1)) == 0
        model = base / "weights" / "best.pt"
        print(f"load average at start: {os.getloadavg()[0]:.2f}; cores: {os.cpu_count()}")
        runs = []
        for i in range(args.runs):
            runs.append(one_run(root / f"run{i}", data, model, start_alertmanager))
            for p in procs:
                p.terminate()
                p.wait()
            procs.clear()
            print(f"  run {i + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in runs[-1].items()))
        print(f"\nAlertmanager webhook -> urgent retrain, warm standby, 1 CPU slot ({args.runs} runs, median [min-max]):")
        for key in runs[0]:
            values = [r[key] for r in runs]
            print(f"  {key:40s} {statistics.median(values):6.2f} s [{min(values):.2f}-{max(values):.2f}]")
    finally:
        for p in procs:
            p.terminate()
        shutil.rmtree(root, ignore_errors=True)
    return 0


def _ready(url: str, request_module) -> bool:
    try:
        return request_module.urlopen(f"{url}/-/ready", timeout=1).status == 200
    except OSError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
