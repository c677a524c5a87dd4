"""The benchmarks behind ``distst bench TARGET``, one module each (``distst.commands.bench`` lists them):
``data`` (streaming loader vs a folder of JPEGs), ``tune`` (Ray Tune overhead), ``faults`` (SIGKILL and resume),
``latency`` (CPU latency of model files and ONNX graphs), ``table`` (the export table) and ``train`` (training
speed). Each defines ``HELP``, ``add_arguments`` and ``run``, and keeps its top-level imports light.
"""
