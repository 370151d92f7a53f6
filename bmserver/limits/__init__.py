"""Rate-limit backends: bmcore's limiter in this process's memory, or shared in Redis.

Public names are exported by :mod:`bmserver`.
"""
