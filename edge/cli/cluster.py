"""`edge cluster init|pair|serve|status|provision|provisioned`: the home cluster's keys,
pairing, workers, state, and joining a board over USB serial."""

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
  edge cluster provision /dev/ttyUSB0             # coordinator: join the board on that port
  edge cluster provisioned /dev/ttyGS0            # on the board: wait for the coordinator
  edge cluster send model-pkg --peer pi.local:5710   # to a worker serving it with --receive
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
    serve.add_argument(
        "--receive",
        action="store_true",
        help="if PACKAGE is missing here, wait for a paired coordinator to send it (verified, "
        "resumable), then serve it",
    )

    status = sub.add_parser("status", help="paired and discovered devices, RTT, what each holds")
    status.add_argument("name", help="the cluster")
    status.add_argument("--peer", action="append", default=[], help="a worker's HOST:PORT")
    status.add_argument("--timeout", type=float, default=2.0, help="seconds to browse mDNS")
    status.add_argument("--no-mdns", action="store_true", help="only the --peer workers")
    status.add_argument(
        "--interface",
        action="append",
        default=[],
        help="browse mDNS on this interface (repeatable); default: every interface except "
        "loopback and virtual bridges",
    )

    provision = sub.add_parser(
        "provision",
        help="coordinator: hand a board on a serial port a pairing address and one-time code; "
        "it pairs and reports its capabilities",
    )
    provision.add_argument("device", help="the serial device, e.g. /dev/ttyUSB0")
    provision.add_argument("--cluster", help="the cluster (default: the only one here)")
    provision.add_argument("--listen", default="0.0.0.0:5711", help="HOST:PORT to pair on")
    provision.add_argument("--address", help="the HOST the board reaches this machine at")
    provision.add_argument("--baud", type=int, default=115200)
    provision.add_argument("--timeout", type=float, default=120.0, help="seconds in all")

    send = sub.add_parser(
        "send", help="send a package to a paired worker that lacks it (serve PKG --receive)"
    )
    send.add_argument("package", type=Path, help="the edge package directory here")
    send.add_argument("--peer", required=True, help="the worker's HOST:PORT")
    send.add_argument("--cluster", help="the cluster (default: the only one here)")
    send.add_argument("--chunk-mib", type=float, default=1.0, help="MiB per chunk (<= 8)")

    provisioned = sub.add_parser(
        "provisioned", help="board: wait on a serial port for a coordinator's offer, pair, report"
    )
    provisioned.add_argument("device", help="the serial device, e.g. /dev/ttyGS0")
    provisioned.add_argument("--baud", type=int, default=115200)
    provisioned.add_argument("--timeout", type=float, default=300.0, help="seconds in all")
    provisioned.add_argument("--no-profile", action="store_true", help="skip the measurement")


def main(args: argparse.Namespace) -> int:
    from edge.cluster.errors import require_zmq

    require_zmq()
    actions = {
        "init": _init,
        "pair": _pair,
        "serve": _serve,
        "status": _status,
        "provision": _provision,
        "provisioned": _provisioned,
        "send": _send,
    }
    return actions[args.action](args)


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
    if args.receive and not args.package.exists():
        from dataclasses import replace

        from edge.cluster.transfer import receive_package

        config = replace(config, endpoints=receive_package(config, out=sys.stdout))

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

    rows = cluster_status(
        args.name,
        args.peer,
        mdns_s=0 if args.no_mdns else args.timeout,
        interfaces=args.interface,
    )
    print(f"{'node':28} {'address':22} {'state':12} {'rtt':>8}  holds")
    for row in rows:
        rtt = f"{row.rtt_s * 1000:.2f}ms" if row.rtt_s is not None else "-"
        print(f"{row.node_id[:28]:28} {row.address[:22]:22} {row.state:12} {rtt:>8}  {row.holds}")
    return 0


def _provision(args: argparse.Namespace) -> int:
    from edge.cluster.keys import KeyStore
    from edge.cluster.pairing import show_code
    from edge.cluster.provision import ProvisionConfig, open_serial, provision
    from edge.cluster.transport import parse_peer, tcp_endpoint

    store = KeyStore()
    cluster = _only_cluster(store, args.cluster)
    config = ProvisionConfig(timeout_s=args.timeout)
    listen = tcp_endpoint(*parse_peer(args.listen, 5711, listen=True))
    port = open_serial(args.device, args.baud)
    print(f"waiting for a board on {args.device} ({args.timeout:g} s)", flush=True)
    try:
        done = provision(
            port,
            cluster,
            store=store,
            listen=listen,
            address=args.address,
            config=config,
            on_code=lambda code: print(f"offering code {show_code(code)}", flush=True),
        )
    finally:
        port.close()
    c = done.capabilities
    print(
        f"provisioned {c.node_id} ({c.name}, {c.machine}, {c.cores} cores, "
        f"{c.memory_available >> 20} MiB available) into cluster {done.cluster}"
    )
    if c.profile:
        print("profile: " + ", ".join(f"{k}={v}" for k, v in sorted(c.profile.items())))
    return 0


def _provisioned(args: argparse.Namespace) -> int:
    from edge.cluster.provision import ProvisionConfig, open_serial, provisioned

    config = ProvisionConfig(timeout_s=args.timeout)
    port = open_serial(args.device, args.baud)
    print(f"waiting for a coordinator on {args.device} ({args.timeout:g} s)", flush=True)
    try:
        done = provisioned(port, config=config, measure_profile=not args.no_profile)
    finally:
        port.close()
    print(
        f"joined cluster {done.cluster} as {done.capabilities.node_id}; "
        "now run `edge cluster serve PACKAGE`"
    )
    return 0


def _only_cluster(store: Any, name: str | None) -> str:
    """`name`, or the one cluster this machine has keys for."""
    from edge.errors import ConfigError

    if name is not None:
        return name
    clusters = store.clusters()
    if len(clusters) != 1:
        raise ConfigError(
            f"name the cluster with --cluster (this machine has {clusters or 'none'}; "
            "`edge cluster init NAME` makes one)"
        )
    return clusters[0]


def _file_sent(path: str, done: int, size: int) -> None:
    if done == size:
        print(f"  {path}: {size >> 10} KiB", flush=True)


def _send(args: argparse.Namespace) -> int:
    from edge.cluster.client import WorkerClient
    from edge.cluster.errors import AuthenticationError
    from edge.cluster.keys import KeyStore
    from edge.cluster.members import package_id
    from edge.cluster.transfer import send_package
    from edge.cluster.transport import LinkConfig, parse_peer, tcp_endpoint
    from edge.errors import ConfigError
    from edge.package import open_package

    store = KeyStore()
    cluster = _only_cluster(store, args.cluster)
    keys = store.cluster_keys(cluster)
    endpoint = tcp_endpoint(*parse_peer(args.peer, 5710))
    package = open_package(args.package)  # a package that does not check out is not sent
    try:
        wanted = package_id(package)
    finally:
        package.close()
    workers = [p for p in store.peers(cluster).values() if p.role == "worker"]
    config = LinkConfig(connect_timeout_s=3.0)
    for peer in workers:  # an explicit peer is tried with every paired worker's key
        try:
            link = WorkerClient(endpoint, peer.public, keys, config, peer.node_id)
        except AuthenticationError:
            continue
        with link:
            if link.info().get("package_id") == wanted:
                print(f"{peer.node_id} already holds {args.package}")
                return 0
            chunk = int(args.chunk_mib * (1 << 20))
            reply = send_package(link, args.package, chunk_bytes=chunk, progress=_file_sent)
        print(f"sent {args.package} to {peer.node_id}: in place at {reply.get('package')}")
        return 0
    raise ConfigError(f"no worker paired with cluster {cluster!r} answers at {args.peer}")
