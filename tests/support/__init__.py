"""What the tests (and bench/) start and wait on: real parts, run on this machine.

controlplane (etcd and kube-apiserver), local_fleet (scripts/local-fleet),
redis_server and redis_cluster (real redis-server processes), netns (network
namespaces), paths (where things are), ports (a free port), waiting (the one
way to wait for something: poll with a deadline).
"""
