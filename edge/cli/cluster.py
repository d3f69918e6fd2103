"""`edge cluster init|pair|serve|status`: the home cluster's keys, pairing, workers, state."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

HELP = "run one model across the devices of a home: keys, pairing, workers, status"

EPILOG = """\
examples:
  edge cluster init home                          # on the coordinator: the cluster's keys
  edge cluster pair home                          # shows a one-time code, waits for a worker
  edge cluster pair --code 7KQM-3XWP --peer laptop.local:5711   # on the worker
  edge cluster serve model-pkg --interface wlan0  # the worker: holds slices of model-pkg
  edge cluster status home                        # devices, RTT, what each holds
"""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    init = sub.add_parser(
        "init", help="create a cluster's Curve keys on this (coordinator) machine"
    )
    init.add_argument("name", help="the cluster's name")
    init.add_argument("--force", action="store_true", help="replace existing keys (unpairs all)")

    pair = sub.add_parser(
        "pair",
        help="coordinator: show a one-time code and pair one worker; "
        "worker: --code CODE --peer HOST:PORT",
    )
    pair.add_argument("name", nargs="?", help="the cluster to pair a worker with (coordinator)")
    pair.add_argument("--code", help="the code the coordinator shows (on the worker)")
    pair.add_argument("--peer", help="the coordinator's HOST:PORT (on the worker)")
    pair.add_argument("--listen", default="0.0.0.0:5711", help="coordinator: HOST:PORT to wait on")
    pair.add_argument("--timeout", type=float, default=300.0, help="seconds the code is valid")

    serve = sub.add_parser("serve", help="run a worker holding slices of a package")
    serve.add_argument("package", type=Path, help="an edge package directory on this machine")
    serve.add_argument("--port", type=int, default=5710)
    serve.add_argument(
        "--interface",
        action="append",
        default=[],
        help="listen and advertise on this interface (repeatable); default: every interface "
        "except loopback and docker*/br-*/veth*/virbr* bridges",
    )
    serve.add_argument(
        "--listen", action="append", default=[], help="explicit HOST:PORT to listen on"
    )
    serve.add_argument("--cluster", action="append", help="accept only these clusters")
    serve.add_argument("--threads", type=int)
    serve.add_argument("--max-context", type=int)
    serve.add_argument("--no-advertise", action="store_true", help="no mDNS announcement")
    serve.add_argument("--no-profile", action="store_true", help="skip the speed measurement")

    status = sub.add_parser("status", help="paired and discovered devices, RTT, what each holds")
    status.add_argument("name", help="the cluster")
    status.add_argument("--peer", action="append", default=[], help="a worker's HOST:PORT")
    status.add_argument("--timeout", type=float, default=2.0, help="seconds to browse mDNS")
    status.add_argument("--no-mdns", action="store_true")


def main(args: argparse.Namespace) -> int:
    from edge.cluster.errors import require_zmq

    require_zmq()
    return {"init": _init, "pair": _pair, "serve": _serve, "status": _status}[args.action](args)


def _init(args: argparse.Namespace) -> int:
    from edge.cluster.keys import KeyStore

    store = KeyStore()
    keys = store.init_cluster(args.name, replace=args.force)
    node_id, _ = store.node()
    print(f"cluster {args.name}: public key {keys.public}")
    print(f"coordinator node {node_id}; keys in {store.root} (mode 0600)")
    return 0


def _pair(args: argparse.Namespace) -> int:
    from edge.cluster.discovery import select_interfaces
    from edge.cluster.keys import KeyStore
    from edge.cluster.pairing import PairingServer, join, show_code
    from edge.cluster.transport import parse_peer, tcp_endpoint
    from edge.errors import ConfigError

    store = KeyStore()
    if args.code:
        if not args.peer:
            raise ConfigError("--code needs --peer HOST:PORT (the coordinator's pairing port)")
        paired = join(store, tcp_endpoint(*parse_peer(args.peer, 5711)), args.code)
        print(f"paired with cluster {paired.cluster} (coordinator {paired.peer.node_id})")
        return 0
    if not args.name:
        raise ConfigError("name the cluster to pair with, or give --code and --peer on a worker")
    server = PairingServer(
        store, args.name, tcp_endpoint(*parse_peer(args.listen, 5711, listen=True))
    )
    port = server.endpoints[0].rsplit(":", 1)[1]
    hosts = [a for i in select_interfaces() for a in i.addresses] or ["THIS_HOST"]
    print(
        f"pairing code {show_code(server.code)} (valid {args.timeout:g} s, once); on the "
        f"worker: edge cluster pair --code {show_code(server.code)} --peer {hosts[0]}:{port}",
        flush=True,
    )
    paired = server.serve(args.timeout)
    print(f"paired {paired.peer.name} ({paired.peer.node_id})")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from edge.cluster.discovery import Advertiser, select_interfaces
    from edge.cluster.transport import parse_peer, tcp_endpoint
    from edge.cluster.worker import WorkerConfig, serve
    from edge.errors import ConfigError

    if args.listen:
        endpoints = [tcp_endpoint(*parse_peer(p, args.port, listen=True)) for p in args.listen]
    else:
        chosen = select_interfaces(args.interface)
        endpoints = [tcp_endpoint(a, args.port) for i in chosen for a in i.addresses]
    if not endpoints:
        raise ConfigError(
            "no interface to listen on (only loopback or virtual bridges here); "
            "name one with --interface or give --listen HOST:PORT"
        )
    config = WorkerConfig(
        package=args.package,
        endpoints=tuple(endpoints),
        clusters=tuple(args.cluster) if args.cluster else None,
        threads=args.threads,
        max_context=args.max_context,
        measure_profile=not args.no_profile,
    )

    def advertise(worker: Any) -> Any:
        hosts = sorted({e.split("//")[1].rsplit(":", 1)[0].strip("[]") for e in worker.endpoints})
        if "0.0.0.0" in hosts:  # listening everywhere: advertise the real interfaces
            hosts = [a for i in select_interfaces(args.interface) for a in i.addresses]
        port = int(worker.endpoints[0].rsplit(":", 1)[1])
        props = {
            "cluster": ",".join(args.cluster or []),
            "cores": worker.profile.get("cores", 0),
            "memory": worker.info()["memory_budget"],
            "package": worker.package_id[:16],
        }
        return Advertiser(worker.node_id, port, hosts, props)

    serve(config, advertise=None if args.no_advertise else advertise, out=sys.stdout)
    return 0


def _status(args: argparse.Namespace) -> int:
    from edge.cluster.status import cluster_status

    rows = cluster_status(args.name, args.peer, mdns_s=0 if args.no_mdns else args.timeout)
    print(f"{'node':28} {'address':22} {'state':12} {'rtt':>8}  holds")
    for row in rows:
        rtt = f"{row.rtt_s * 1000:.2f}ms" if row.rtt_s is not None else "-"
        print(f"{row.node_id[:28]:28} {row.address[:22]:22} {row.state:12} {rtt:>8}  {row.holds}")
    return 0
