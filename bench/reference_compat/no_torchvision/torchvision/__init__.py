"""Stand-in for the few torchvision transforms the diffusers training examples use.

PyPI's torchvision cannot be imported beside this machine's CPU build of torch (its compiled
operators fail to load), and the project itself never needs torchvision. bench_training.py puts
this folder on the reference run's path only when the real package is missing, and says so.
Each transform does on a PIL image what torchvision does (PIL resize/crop, then a float tensor).
"""
