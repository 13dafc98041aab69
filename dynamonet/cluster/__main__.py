"""``python -m dynamonet.cluster``: check cluster YAMLs offline, print a GCP YAML's network
commands, run a rehearsal cluster on this machine.

    python -m dynamonet.cluster check cluster/*.yaml
    python -m dynamonet.cluster gcp-network cluster/gpu.yaml
    python -m dynamonet.cluster rehearsal up | status | kill-node ROLE | add-node ROLE | down
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

import yaml

from dynamonet.cluster import rehearsal
from dynamonet.cluster.yaml_check import (
    DECODE_RESOURCE,
    TRAIN_RESOURCE,
    ClusterConfigError,
    ClusterSummary,
    check_file,
    gcp_network_commands,
    load_cluster_yaml,
)


def _format(summary: ClusterSummary) -> str:
    lines = [f"{summary.path}: OK (provider {summary.provider})"]
    for t in summary.node_types:
        lines.append(f"  {t.name:<16} {t.role:<8} workers {t.min_workers}..{t.max_workers}  {t.resources}")
    if summary.provider == "local":
        lines.append("  worker roles and resources: set per box by worker_start_ray_commands")
    else:
        lines.append(f"  at max size: GPU {summary.total('GPU')}, {TRAIN_RESOURCE} {summary.total(TRAIN_RESOURCE)}, "
                     f"{DECODE_RESOURCE} {summary.total(DECODE_RESOURCE)}")
    return "\n".join(lines)


def _rehearsal(args: argparse.Namespace) -> int:
    if args.action == "up":
        cluster = rehearsal.up(args.state_dir, s3_endpoint=args.s3_endpoint)
        print(f"rehearsal cluster up: dashboard {cluster.dashboard}, storage {cluster.storage}, "
              f"state {cluster.state_dir}", file=sys.stderr)
        env = cluster.client_env()
        print("\n".join(f"export {k}={shlex.quote(env[k])}" for k in
                        ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                         "AWS_SECRET_ACCESS_KEY", "AWS_REGION")))
        print(f"export RAY_ADDRESS={cluster.dashboard}")
        return 0
    cluster = rehearsal.Rehearsal.load(args.state_dir)
    if args.action == "down":
        cluster.down()
    elif args.action == "kill-node":
        node = cluster.kill_node(args.role)
        print(f"killed the {node.role} node at {node.ip}")
    elif args.action == "add-node":
        node = cluster.add_node(args.role)
        print(f"{node.role} node up at {node.ip}")
    else:
        for n in cluster.list_nodes():
            print(f"{n['node_ip']:<12} {(n.get('labels') or {}).get(rehearsal.ROLE_LABEL, '?'):<8} {n['state']:<6} "
                  f"{n.get('resources_total', {})}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dynamonet.cluster", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_check = sub.add_parser("check", help="validate cluster YAMLs offline and print their resources")
    p_check.add_argument("paths", nargs="+", help="cluster YAML files")
    p_net = sub.add_parser("gcp-network", help="print the gcloud commands for a GCP YAML's VPC and firewall")
    p_net.add_argument("path", help="a GCP cluster YAML (cluster/gpu.yaml)")
    p_reh = sub.add_parser("rehearsal", help="a cluster on this machine that shares nothing but object storage "
                                             "(Linux, root)")
    p_reh.add_argument("action", choices=("up", "status", "kill-node", "add-node", "down"))
    p_reh.add_argument("role", nargs="?", default="trainer", choices=("decode", "trainer"),
                       help="the node for kill-node / add-node (default: %(default)s)")
    p_reh.add_argument("--state-dir", default=rehearsal.DEFAULT_STATE_DIR,
                       help="logs and state of the cluster (default: %(default)s)")
    p_reh.add_argument("--s3-endpoint", default="", help="an S3 server to use (default: start moto on loopback)")
    args = parser.parse_args(argv)
    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)  # quiet prepare_config's INFO lines
    if args.command == "rehearsal":
        try:
            return _rehearsal(args)
        except (RuntimeError, LookupError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    if args.command == "gcp-network":
        print("\n".join(gcp_network_commands(load_cluster_yaml(args.path))))
        return 0
    failed = 0
    for path in args.paths:
        try:
            print(_format(check_file(path)))
        except (ClusterConfigError, OSError, yaml.YAMLError) as e:
            print(f"FAILED {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
