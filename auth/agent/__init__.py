"""The workload agent: what runs in a pod to join (key pair, request, files)."""
