"""Federated runs across machines on Flower (``pip install a2vgen[flower]``; README "Across machines").

``codec``: banks and optimizer state to and from Flower records; ``server``: the federated loop whose visits
train on the clients' nodes; ``node``: a node's visit runner and state files; ``apps``: the ServerApp and
ClientApp; ``bundle``: ``a2vgen flower-app``; ``settings``: the run configuration; ``local``: Flower
processes on this machine (ports, environment, start-up) for tests and benchmarks.
"""
