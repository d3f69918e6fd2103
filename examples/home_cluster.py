"""A home cluster: this machine and the paired workers of cluster "home" share one model.

On each worker (a Raspberry Pi, an old desktop), once:

    pip install "edge[cluster]"
    edge cluster pair --code CODE --peer THIS-MACHINE:5711   # CODE: what `edge cluster pair
                                                             # home` shows here
    edge cluster serve MODEL-PKG --receive                   # receives the package if missing

On this machine (MODEL: a registered name, GGUF file, Hugging Face folder or edge package,
exported here first where needed; default SmolLM2-135M-Instruct):

    edge cluster init home && edge cluster pair home
    python examples/home_cluster.py [MODEL] [--peer pi.local:5710 ...] [--split tensor]

Without a home at hand:

    python examples/home_cluster.py [MODEL] --local     # two workers on this machine
    python examples/home_cluster.py [MODEL] --dry-run   # what the coordinator would choose
                                                        # for two Raspberry Pi 5 workers

The coordinator measures each worker's round trip and reads its measured memory bandwidth,
predicts the time per token of one device, a pipeline (its stages on workers hand their
output to each other directly) and a tensor-parallel split, and runs the fastest that fits
(`--split` forces one). Workers never need torch; every link is
authenticated and encrypted (CurveZMQ) after pairing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import edge
from edge.cluster.members import Member
from edge.cluster.placement import ClusterConfig, cluster_placement

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The three primary colors are"


def dry_run(package_path: Path) -> None:
    """The coordinator's predictions for this machine plus two Pi 5 workers, wired and Wi-Fi
    (built-in Pi 5 profile; nothing is contacted)."""
    from devices.microbench import measured_profile
    from devices.profiles import profile_by_name
    from edge.package import open_package

    pi5 = profile_by_name("pi5")
    package = open_package(package_path, verify="sizes")
    here = measured_profile().memory_bandwidth_gbs
    print(f"this machine: {here:.1f} GB/s measured; two Raspberry Pi 5 workers")
    for link, rtt in (("wired, 0.3 ms", 3e-4), ("Wi-Fi, 3 ms", 3e-3)):
        members = [
            Member(f"pi5-{i}", f"tcp://10.0.0.{i}:5710", "KEY", pi5.memory_bytes, rtt, 10.0)
            for i in (1, 2)
        ]
        for mode in ("auto", "tensor"):
            config = ClusterConfig("home", distribute="always", mode=mode)
            _, why = cluster_placement(package, config, members, bandwidth_gbs=here)
            print(f"  {link}, split {mode}: {why}")


def local_workers(package: Path, count: int, root: Path) -> tuple[list[str], list]:
    """`count` workers on loopback, each with its own keys, paired with a fresh cluster."""
    from edge.cluster.keys import KeyStore
    from edge.cluster.pairing import PairingServer, join

    coordinator = KeyStore(root / "coordinator")
    coordinator.init_cluster("home")
    peers, procs = [], []
    for i in range(count):
        store = KeyStore(root / f"worker{i}")
        server = PairingServer(coordinator, "home", "tcp://127.0.0.1:0")
        pairing = threading.Thread(target=lambda s=server: s.serve(30))
        pairing.start()
        join(store, server.endpoints[0], server.code)
        pairing.join(30)
        command = [sys.executable, "-m", "edge.cli.main", "cluster", "serve", str(package)]
        command += ["--listen", "127.0.0.1:0", "--no-advertise", "--threads", "1"]
        env = {**os.environ, "EDGE_CONFIG_DIR": str(root / f"worker{i}")}
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        procs.append(proc)
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("serving"):
            raise SystemExit(f"worker {i} did not start: {line}")
        peers.append(line.split()[-1].removeprefix("tcp://"))
    return peers, procs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "model",
        nargs="?",
        default=None,
        help="name, GGUF, folder or package (the package is the same on every worker)",
    )
    parser.add_argument("--peer", action="append", default=[], help="HOST:PORT of a worker")
    parser.add_argument("--split", choices=["auto", "pipeline", "tensor"], default="auto")
    parser.add_argument("--local", action="store_true", help="two workers on this machine")
    parser.add_argument("--dry-run", action="store_true", help="predict only, contact nobody")
    args = parser.parse_args()
    from edge.resolve import resolve_package

    args.package = resolve_package(args.model)  # exported once, then cached
    if args.dry_run:
        dry_run(args.package)
        return
    procs: list = []
    with tempfile.TemporaryDirectory(prefix="edge-home-") as tmp:
        peers = list(args.peer)
        if args.local:
            os.environ["EDGE_CONFIG_DIR"] = str(Path(tmp) / "coordinator")
            found, procs = local_workers(args.package, 2, Path(tmp))
            peers += found
        try:
            # On loopback the workers share this machine's cores: split anyway, to show it.
            config = ClusterConfig(
                "home", tuple(peers), distribute="always" if args.local else "auto", mode=args.split
            )
            model = edge.load(args.package, cluster=config, max_context=256)
            print(model.engine.describe())
            print("generate:", model.generate(PROMPT, max_tokens=24))
            print(model.engine.report() or "")
            model.engine.close()
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)


if __name__ == "__main__":
    main()
