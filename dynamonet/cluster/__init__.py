"""Cluster tooling: the cluster YAMLs checked offline, rehearsals on one machine, and what a job
needs to know about the cluster it runs on (docs/cluster.md).

    yaml_check.py  cluster/*.yaml through Ray's own validator plus this project's rules
                   (placement, autoscaler demands, security, GPU setup, cloud specifics)
    runtime.py     inside a job: single node or not, shared storage (DYNAMONET_STORAGE), default
                   placement of Train workers and decoders, ingest task resources
    rehearsal.py   a cluster on one machine whose nodes share nothing but object storage
                   (a mount namespace and private tmpfs per node, moto as the bucket)
    fake.py        cluster/fake_multinode.yaml brought up by Ray's own autoscaler
    processes.py   finding and stopping one local cluster's processes (never `ray stop`)

CLI: ``python -m dynamonet.cluster {check, gcp-network, rehearsal}`` (``--help`` for each).
"""
