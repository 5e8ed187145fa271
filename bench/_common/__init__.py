"""Helpers the benchmarks share (bench/*.py import them as `_common.X`, run as scripts).

- `procs`: CPU seconds of a process, a free loopback port, waiting for a child to listen;
- `rounds`: polls run in timed rounds at bounded concurrency, and what one side's rounds gave;
- `snmp_agents`: the simulated QKD modules served by `qkdtel sims up` child processes;
- `snmp_exporter`: prometheus-snmp-exporter with an snmp.yml generated from the driver's profiles;
- `cpu_profile`: where the CPU of a poll goes (receive stage, cProfile by package);
- `udp_probes`: counting the UDP datagrams this process sends;
- `replay_agents`: cheap SNMPv2c agents replaying answers recorded from the twin (capacity.py).
"""
